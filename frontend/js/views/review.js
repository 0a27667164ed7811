// Review: hard frames waiting for a person, and one frame's labels edited over its image.
// Mouse: drag a box to move it, drag a corner handle to resize it, drag on an empty area to draw a
// new one. Keyboard (on a focused box; Tab goes from box to box): arrow keys move it (Shift: 10 px),
// Delete removes it, 1–9 set its class; Enter accepts the frame, R rejects it. Every change goes to
// the API at once (one after another, each with the revision the previous one returned), and the
// frame's history beside the image shows who changed what, and when.
import { api, blobUrl } from "../api.js";
import { COLOURS, loadImage } from "../draw.js";
import { canWrite } from "../main.js";
import { busy, fill, h, setPage, toast, when } from "../ui.js";

const SVG = "http://www.w3.org/2000/svg";
const MIN_BOX = 2;  // image pixels: a smaller drag is a click, not a box

export async function render(project, rest) {
  return rest[0] ? frameView(project, Number(rest[0])) : queueView(project);
}

async function queueView(project) {
  const queue = await api(`/projects/${project}/feedback/review-queue?limit=100`);
  const rows = queue.items.map((f) => h("li", { class: "list-group-item d-flex flex-wrap gap-2 align-items-center" },
    h("a", { href: `#/p/${project}/review/${f.id}`, class: "fw-semibold" }, `Frame ${f.id}`),
    h("span", { class: "small text-secondary" },
      `${f.deployment}/${f.node} · ${f.detections.length} proposal(s) · ${when(f.capturedAt)}`)));
  setPage("Review",
    h("h1", { class: "h4 mb-3" }, "Review queue"),
    h("p", { class: "text-secondary", "data-testid": "queue-total" },
      queue.total ? `${queue.total} frame(s) wait for review, oldest first.` : "No frame waits for review."),
    rows.length ? h("ol", { class: "list-group list-group-numbered mb-3", "aria-label": "Frames to review" }, rows) : "");
}

const svg = (tag, attrs = {}) => {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) if (value !== null && value !== undefined) element.setAttribute(key, value);
  return element;
};
const round = (v) => Math.round(v * 10) / 10;
const boxText = (box) => `[${box.map((v) => round(v)).join(", ")}]`;

function describe(change) {
  const label = change.after || change.before || {};
  const name = `${change.labelId || ""} (${label.className || "?"})`;
  switch (change.action) {
    case "add": return `drew box ${name} at ${boxText(change.after.box)}`;
    case "move": return `moved/resized box ${name} from ${boxText(change.before.box)} to ${boxText(change.after.box)}`;
    case "relabel": return `changed box ${change.labelId} from ${change.before.className} to ${change.after.className}`;
    case "edit": return `moved box ${change.labelId} and changed it from ${change.before.className} to ${change.after.className}`;
    case "delete": return `deleted box ${name}`;
    case "accept": return `accepted the frame with ${change.after.labels.length} box(es)`;
    case "reject": return `rejected the frame${change.note ? `: ${change.note}` : ""}`;
    case "auto-accept": return `auto-accepted ${change.after.labels.length} proposal(s): ${change.note}`;
    default: return change.action;
  }
}

async function frameView(project, id) {
  const base = `/projects/${project}/feedback/${id}`;
  let frame = await api(base);
  const image = await loadImage(await blobUrl(`${base}/image`));
  const writable = canWrite();
  let selected = null;
  let queue = Promise.resolve();

  const editor = svg("svg", { viewBox: `0 0 ${frame.width} ${frame.height}`, class: "review-canvas",
    role: "group", "aria-label": `Frame ${id} with its boxes`, "data-testid": "review-canvas" });
  const picture = svg("image", { href: image.src, x: 0, y: 0, width: frame.width, height: frame.height,
    preserveAspectRatio: "none" });
  const layer = svg("g");
  const sketch = svg("rect", { class: "sketch", visibility: "hidden" });
  editor.append(picture, layer, sketch);

  const classSelect = h("select", { class: "form-select form-select-sm", id: "box-class", disabled: !writable });
  fill(classSelect, frame.classNames.map((name, i) => h("option", { value: i }, `${i + 1}: ${name}`)));
  const status = h("p", { class: "mb-2", "data-testid": "review-status", "aria-live": "polite" });
  const history = h("ol", { class: "list-group list-group-flush small review-history", tabindex: 0,
    "aria-label": `History of frame ${id}`, "data-testid": "review-history" });
  const accept = h("button", { class: "btn btn-success", type: "button" }, "Accept frame (Enter)");
  const reject = h("button", { class: "btn btn-outline-danger", type: "button" }, "Reject frame (R)");
  const remove = h("button", { class: "btn btn-outline-secondary btn-sm", type: "button" }, "Delete selected box");
  const next = h("a", { class: "btn btn-link", href: `#/p/${project}/review` }, "Back to the queue");

  const scale = () => frame.width / (editor.getBoundingClientRect().width || frame.width);
  const point = (event) => {
    const rect = editor.getBoundingClientRect();
    return [
      Math.min(frame.width, Math.max(0, (event.clientX - rect.left) * frame.width / rect.width)),
      Math.min(frame.height, Math.max(0, (event.clientY - rect.top) * frame.height / rect.height)),
    ];
  };

  function draw() {
    const hadFocus = layer.contains(document.activeElement);
    const handle = 8 * scale();
    const stroke = 2;
    // Larger boxes first: a small box inside a large one stays on top, where the pointer finds it.
    const ordered = [...frame.labels].sort((a, b) =>
      (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]) - (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]));
    layer.replaceChildren(...ordered.map((label) => {
      const [x1, y1, x2, y2] = label.box;
      const colour = COLOURS[label.classId % COLOURS.length];
      const group = svg("g", { class: `review-box${label.id === selected ? " selected" : ""}`, tabindex: 0,
        role: "button", "data-label": label.id,
        "aria-label": `Box ${label.id}: ${label.className}, ${label.source === "model" ? "model's proposal" : "set by a person"}, at ${boxText(label.box)}` });
      group.append(
        svg("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, fill: "transparent", stroke: colour,
          "stroke-width": label.id === selected ? stroke * 1.5 : stroke, "vector-effect": "non-scaling-stroke",
          "stroke-dasharray": label.source === "model" ? "4 2" : null, class: "body" }),
        svg("text", { x: x1 + 1, y: Math.max(y1 - 3 * scale(), 12 * scale()), class: "review-tag", "font-size": 12 * scale(),
          "aria-hidden": "true" }),
      );
      group.lastChild.textContent = label.className;
      if (label.id === selected && writable) {
        for (const [corner, cx, cy] of [["nw", x1, y1], ["ne", x2, y1], ["sw", x1, y2], ["se", x2, y2]]) {
          group.append(svg("rect", { class: `handle handle-${corner}`, "data-corner": corner, x: cx - handle / 2,
            y: cy - handle / 2, width: handle, height: handle, "aria-hidden": "true" }));
        }
      }
      group.addEventListener("focus", () => select(label.id));
      return group;
    }));
    if (hadFocus && selected) layer.querySelector(`[data-label="${selected}"]`)?.focus();
    const current = frame.labels.find((l) => l.id === selected);
    if (current) classSelect.value = String(current.classId);
    remove.disabled = !current || !writable;
    const reviewed = frame.reviewStatus === "pending" ? "pending review"
      : `${frame.reviewStatus}${frame.reviewedBy ? ` by ${frame.reviewedBy}` : ""}${frame.reviewedAt ? ` ${when(frame.reviewedAt)}` : ""}`;
    status.textContent = `Frame ${id}: ${frame.labels.length} box(es), ${reviewed}, revision ${frame.revision}.`;
    fill(history, frame.history.length ? [...frame.history].reverse().map((change) => h("li", { class: "list-group-item px-0",
      "data-action": change.action },
      h("div", {}, h("strong", {}, change.who), " ", describe(change)),
      h("div", { class: "text-secondary" }, `${when(change.at)} · revision ${change.revision}`)))
      : h("li", { class: "list-group-item px-0 text-secondary" }, "No change yet: the boxes are the model's proposals."));
  }

  // The focused box is the selected one; drawing replaces the boxes, so focus follows to the new one.
  function select(labelId) {
    if (selected === labelId) return;
    selected = labelId;
    draw();
    if (labelId) layer.querySelector(`[data-label="${labelId}"]`)?.focus();
  }

  // One request at a time, each with the revision the last answer gave: no change overtakes another.
  function send(method, path, body, done) {
    queue = queue.then(async () => {
      try {
        const withRevision = { ...body, revision: frame.revision };
        const query = method === "DELETE" ? `?revision=${frame.revision}` : "";
        frame = await api(`${base}${path}${query}`, method === "DELETE" ? { method } : { method, body: withRevision });
        if (done) done(frame);
      } catch (error) {
        toast(error.message);
        // Someone else's change, or a refused one: show what is stored (the queue goes on either way).
        frame = await api(base).catch(() => frame);
      }
      draw();
      if (selected && document.activeElement === document.body) layer.querySelector(`[data-label="${selected}"]`)?.focus();
    });
    return queue;
  }

  const patch = (label, change) => send("PATCH", `/labels/${label.id}`, change);
  const decide = (action) => send("POST", `/${action}`, {}, () => toast(`Frame ${id} ${action === "accept" ? "accepted" : "rejected"}`, "success"));

  // Mouse and touch: drag a box, a corner, or a new box on the image.
  let drag = null;
  editor.addEventListener("pointerdown", (event) => {
    if (!writable || event.button !== 0) return;
    const [x, y] = point(event);
    const group = event.target.closest?.(".review-box");
    const label = group && frame.labels.find((l) => l.id === group.dataset.label);
    if (label) {
      select(label.id);
      drag = { kind: event.target.dataset.corner || "move", label, start: [x, y], box: [...label.box] };
    } else {
      drag = { kind: "draw", start: [x, y], box: [x, y, x, y] };
      sketch.setAttribute("visibility", "visible");
    }
    editor.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  editor.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const [x, y] = point(event);
    const [dx, dy] = [x - drag.start[0], y - drag.start[1]];
    const [x1, y1, x2, y2] = drag.label ? drag.label.box : drag.box;
    let box;
    if (drag.kind === "draw") box = [Math.min(drag.start[0], x), Math.min(drag.start[1], y), Math.max(drag.start[0], x), Math.max(drag.start[1], y)];
    else if (drag.kind === "move") {
      const [w, hgt] = [x2 - x1, y2 - y1];
      const nx = Math.min(frame.width - w, Math.max(0, x1 + dx));
      const ny = Math.min(frame.height - hgt, Math.max(0, y1 + dy));
      box = [nx, ny, nx + w, ny + hgt];
    } else {
      box = [x1, y1, x2, y2];
      if (drag.kind.includes("w")) box[0] = Math.min(x, x2 - MIN_BOX);
      if (drag.kind.includes("e")) box[2] = Math.max(x, x1 + MIN_BOX);
      if (drag.kind.includes("n")) box[1] = Math.min(y, y2 - MIN_BOX);
      if (drag.kind.includes("s")) box[3] = Math.max(y, y1 + MIN_BOX);
    }
    drag.box = box.map(round);
    const target = drag.kind === "draw" ? sketch : layer.querySelector(`[data-label="${drag.label.id}"] .body`);
    target.setAttribute("x", drag.box[0]);
    target.setAttribute("y", drag.box[1]);
    target.setAttribute("width", drag.box[2] - drag.box[0]);
    target.setAttribute("height", drag.box[3] - drag.box[1]);
  });
  const finish = () => {
    if (!drag) return;
    const { kind, label, box } = drag;
    drag = null;
    sketch.setAttribute("visibility", "hidden");
    if (kind === "draw") {
      if (box[2] - box[0] >= MIN_BOX && box[3] - box[1] >= MIN_BOX) {
        send("POST", "/labels", { classId: Number(classSelect.value), box }, (result) => {
          selected = result.labels[result.labels.length - 1].id;
        });
      }
    } else if (box.some((v, i) => v !== label.box[i])) {
      patch(label, { box });
    } else {
      draw();
    }
  };
  editor.addEventListener("pointerup", finish);
  editor.addEventListener("pointercancel", finish);

  // Keyboard on a focused box (Tab moves from box to box).
  editor.addEventListener("keydown", (event) => {
    if (!writable) return;
    const label = frame.labels.find((l) => l.id === selected);
    const step = event.shiftKey ? 10 : 1;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (label && moves[event.key]) {
      const [dx, dy] = moves[event.key];
      const [x1, y1, x2, y2] = label.box;
      const nx = Math.min(frame.width - (x2 - x1), Math.max(0, x1 + dx));
      const ny = Math.min(frame.height - (y2 - y1), Math.max(0, y1 + dy));
      label.box = [nx, ny, nx + x2 - x1, ny + y2 - y1].map(round);  // shown at once, stored in order
      draw();
      patch(label, { box: label.box });
    } else if (label && (event.key === "Delete" || event.key === "Backspace")) {
      selected = null;
      send("DELETE", `/labels/${label.id}`);
    } else if (label && /^[1-9]$/.test(event.key) && Number(event.key) <= frame.classNames.length) {
      patch(label, { classId: Number(event.key) - 1 });
    } else if (event.key === "Enter") {
      decide("accept");
    } else if (event.key === "r" || event.key === "R") {
      decide("reject");
    } else {
      return;
    }
    event.preventDefault();
  });

  classSelect.addEventListener("change", () => {
    const label = frame.labels.find((l) => l.id === selected);
    if (label) patch(label, { classId: Number(classSelect.value) });
  });
  accept.addEventListener("click", () => busy(accept, () => decide("accept")));
  reject.addEventListener("click", () => busy(reject, () => decide("reject")));
  remove.addEventListener("click", () => {
    const label = frame.labels.find((l) => l.id === selected);
    if (!label) return;
    selected = null;
    busy(remove, () => send("DELETE", `/labels/${label.id}`));
  });

  setPage(`Review frame ${id}`,
    h("h1", { class: "h4 mb-2" }, `Review frame ${id}`),
    h("p", { class: "small text-secondary" }, `${frame.deployment}/${frame.node} · model ${frame.model || "unknown"} · ${when(frame.capturedAt)}`),
    status,
    h("div", { class: "row g-3" },
      h("div", { class: "col-12 col-lg-8" },
        h("div", { class: "review-frame" }, editor),
        writable ? h("p", { class: "small text-secondary mt-2", id: "review-help" },
          "Drag a box to move it, its corners to resize it, or an empty area to draw a new box. On a box (Tab goes from one to the next): arrow keys move it (Shift: 10 px), Delete removes it, 1–9 set its class; Enter accepts the frame, R rejects it.") : "",
        writable ? h("div", { class: "d-flex flex-wrap gap-2 align-items-center mt-2" },
          h("label", { class: "form-label mb-0 small", for: "box-class" }, "Class of the selected box (and of new boxes)"),
          h("div", { style: "max-width: 220px" }, classSelect), remove) : "",
        writable ? h("div", { class: "d-flex flex-wrap gap-2 mt-3" }, accept, reject, next) : next),
      h("div", { class: "col-12 col-lg-4" },
        h("h2", { class: "h6" }, "History"), history)));
  draw();
  // Handles and tags keep their size on screen when the image is shown larger or smaller.
  let shownWidth = 0;
  const resized = new ResizeObserver(() => {
    const width = editor.getBoundingClientRect().width;
    if (width && Math.abs(width - shownWidth) > 1 && !drag) {
      shownWidth = width;
      draw();
    }
  });
  resized.observe(editor);
  return () => resized.disconnect();
}
