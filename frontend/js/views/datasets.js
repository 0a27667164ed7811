// Datasets: versions with class counts, uploads with progress, and edge feedback into a new version.
import { api, blobUrl, upload } from "../api.js";
import { drawDetections, loadImage } from "../draw.js";
import { canWrite } from "../main.js";
import { NAME_PATTERN, amount, busy, h, setPage, stackTable, toast, when } from "../ui.js";

export async function render(project) {
  const [datasets, feedback] = await Promise.all([
    api(`/projects/${project}/datasets?limit=200`),
    api(`/projects/${project}/feedback?status=new&limit=100`),
  ]);
  const blocks = datasets.items.map((d) => {
    const latest = d.versions[d.versions.length - 1];
    const file = h("input", { class: "form-control form-control-sm", type: "file", accept: ".zip,application/zip" });
    const bar = h("div", { class: "progress mt-1", role: "progressbar", "aria-label": `Upload to ${d.name}`, hidden: true }, h("div", { class: "progress-bar" }));
    const send = h("button", { class: "btn btn-sm btn-primary", type: "button" }, "Upload new version");
    send.addEventListener("click", () => busy(send, async () => {
      if (!file.files[0]) throw new Error("choose a zip with data.yaml, images/ and labels/");
      const form = new FormData();
      form.append("archive", file.files[0]);
      bar.hidden = false;
      const version = await upload(`/projects/${project}/datasets/${encodeURIComponent(d.name)}/versions`, form,
        (done) => { bar.firstChild.style.width = `${Math.round(done * 100)}%`; });
      toast(`${d.name} v${version.version}: ${version.images.train} train / ${version.images.val} val images`, "success");
      render(project);
    }));
    return h("div", { class: "card mb-3" }, h("div", { class: "card-body" },
      h("h2", { class: "h5" }, d.name), d.description ? h("p", { class: "text-secondary" }, d.description) : "",
      d.versions.length ? stackTable(["Version", "Images (train / val)", "Class counts", "Preprocessing", "URI", "Note"],
        d.versions.map((v) => [`v${v.version}`, `${amount(v.images.train ?? 0, 0)} / ${amount(v.images.val ?? 0, 0)}`,
          h("span", { class: "small" }, Object.entries(v.classCounts).map(([k, n]) => `${k}: ${n}`).join(", ") || "–"),
          h("span", { class: "small" }, `${v.preprocessing.duplicatesRemoved ?? 0} dup., ${v.preprocessing.resized ?? 0} resized, ${v.preprocessing.exifRotated ?? 0} rotated`),
          h("span", { class: "small text-break" }, v.uri), h("span", { class: "small" }, v.note || "–")]), { class: "table-sm" })
        : h("p", { class: "text-secondary" }, "No version yet: upload a zip below."),
      latest ? h("p", { class: "small" }, `Train on it with dataset URI ${latest.uri}`) : "",
      canWrite() ? h("div", {}, h("label", { class: "form-label small", for: `file-${d.name}` }, "YOLO dataset zip"),
        Object.assign(file, { id: `file-${d.name}` }), h("div", { class: "mt-2" }, send), bar) : ""));
  });

  const name = h("input", { class: "form-control", required: true, pattern: NAME_PATTERN });
  const create = h("button", { class: "btn btn-outline-primary", type: "button" }, "Create dataset");
  create.addEventListener("click", () => busy(create, async () => {
    await api(`/projects/${project}/datasets`, { method: "POST", body: { name: name.value } });
    render(project);
  }));

  const selected = new Set();
  // Frames join the newest version of a dataset: one without a version cannot take them yet.
  const target = h("select", { class: "form-select" }, datasets.items.map((d) => h("option", { value: d.name, disabled: !d.versions.length },
    d.versions.length ? `${d.name} (after v${d.versions[d.versions.length - 1].version})` : `${d.name} (no version yet: upload one first)`)));
  const usable = datasets.items.find((d) => d.versions.length);
  if (usable) target.value = usable.name;
  const accept = h("button", { class: "btn btn-primary", type: "button" }, "Add selected frames to a new version");
  accept.addEventListener("click", () => busy(accept, async () => {
    if (!selected.size) throw new Error("select at least one frame");
    const version = await api(`/projects/${project}/feedback/accept`, { method: "POST", body: { ids: [...selected], dataset: target.value } });
    toast(`${target.value} v${version.version} created with ${selected.size} frame(s)`, "success");
    render(project);
  }));
  const sync = h("button", { class: "btn btn-outline-secondary", type: "button" }, "Fetch new frames from the edge");
  sync.addEventListener("click", () => busy(sync, async () => {
    const found = await api(`/projects/${project}/feedback/sync`, { method: "POST" });
    toast(`${found.items.length} new frame(s)`, "success");
    render(project);
  }));
  const frames = feedback.items.map((f) => {
    const classes = [...new Set(f.detections.map((d) => d.className))].join(", ") || "nothing detected";
    const img = h("canvas", { class: "frame-thumb rounded", role: "img", "data-boxes": "0",
      "aria-label": `Frame from ${f.node} with ${f.detections.length} predicted box(es): ${classes}` });
    blobUrl(`/projects/${project}/feedback/${f.id}/image`).then(loadImage)
      .then((image) => { img.dataset.boxes = String(drawDetections(img, image, f.detections, { width: 240, font: 11, line: 2 })); })
      .catch(() => { img.setAttribute("aria-label", `Frame from ${f.node}: the image could not be loaded`); });
    const box = h("input", { class: "form-check-input", type: "checkbox", id: `frame-${f.id}` });
    box.addEventListener("change", () => (box.checked ? selected.add(f.id) : selected.delete(f.id)));
    const reviewed = f.reviewStatus === "reviewed";
    return h("div", { class: "col-12 col-sm-6 col-md-4 col-xl-3" }, h("div", { class: "form-check" }, box,
      h("label", { class: "form-check-label small", for: `frame-${f.id}` }, img, h("br"),
        `${f.deployment}/${f.node} · ${f.detections.length} box(es), top ${f.topScore?.toFixed(2) ?? "–"} · ${when(f.capturedAt)}`),
      h("div", { class: "small" }, h("span", { class: `badge ${reviewed ? "text-bg-success" : "text-bg-secondary"}` },
        reviewed ? "reviewed" : (f.reviewStatus || "pending").replace("-", " ")), " ",
      reviewed ? null : h("a", { href: `#/p/${project}/review/${f.id}` }, "Review"))));
  });

  setPage("Datasets",
    h("h1", { class: "h4 mb-3" }, "Datasets"),
    canWrite() ? h("div", { class: "input-group mb-3", style: "max-width: 480px" },
      h("label", { class: "input-group-text", for: "new-dataset" }, "New dataset"), Object.assign(name, { id: "new-dataset" }), create) : "",
    blocks.length ? blocks : h("p", { class: "text-secondary" }, "No datasets yet."),
    h("h2", { class: "h5 mt-4" }, "Hard frames from the edge"),
    canWrite() ? h("div", { class: "d-flex flex-wrap gap-2 mb-3" }, sync) : "",
    frames.length ? h("p", { class: "small text-secondary" }, "Only reviewed frames join a dataset version (their labels as a person left them): review the others first.") : null,
    frames.length ? h("div", { class: "row g-3 mb-3" }, frames) : h("p", { class: "text-secondary" }, "No new frames."),
    canWrite() && frames.length && datasets.items.length ? h("div", { class: "d-flex gap-2", style: "max-width: 640px" },
      h("label", { class: "visually-hidden", for: "target-dataset" }, "Dataset"), Object.assign(target, { id: "target-dataset" }), accept) : "");
}
