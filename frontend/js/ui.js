// Small DOM helpers: elements built with textContent (never innerHTML of API data), toasts, busy buttons.
import { loadScript } from "./load.js";

// The one way a list of children becomes DOM nodes: nested arrays flattened, nothing for
// null/undefined/false/"", text for the rest. `h`, `fill` and `setPage` all go through it.
export function nodes(...children) {
  return children.flat(Infinity)
    .filter((child) => child !== undefined && child !== null && child !== false && child !== "")
    .map((child) => (child instanceof Node ? child : document.createTextNode(String(child))));
}

// Replaces an element's children (arrays of nodes included).
export function fill(element, ...children) {
  element.replaceChildren(...nodes(children));
  return element;
}

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? "" : value);
  }
  element.append(...nodes(children));
  return element;
}

// After an in-app navigation, focus moves to the new content (screen readers announce it); on
// the first load it stays at the top, where the skip link is.
export const focus = { onRender: false };

export function setPage(title, ...content) {
  document.title = `${title} · VisionInApp`;
  const main = document.getElementById("main");
  fill(main, content);
  if (focus.onRender) main.focus({ preventScroll: true });
}

export function toast(message, kind = "danger") {
  loadScript("bootstrap.js").then(() => showToast(message, kind)).catch(() => alert(message));
}

function showToast(message, kind) {
  const item = h("div", { class: `toast align-items-center text-bg-${kind} border-0`, role: "alert" },
    h("div", { class: "d-flex" },
      h("div", { class: "toast-body" }, message),
      h("button", { type: "button", class: "btn-close btn-close-white me-2 m-auto", "data-bs-dismiss": "toast",
        "aria-label": "Close" })));
  document.getElementById("toasts").append(item);
  // No fade: a toast caught mid-fade is half transparent, unreadable (and failing contrast) for a moment.
  const shown = new bootstrap.Toast(item, { animation: false, delay: kind === "danger" ? 8000 : 3000 });
  item.addEventListener("hidden.bs.toast", () => item.remove());
  shown.show();
}

// Runs `action` with the button disabled and a spinner; shows the API's message on failure (in
// `errorBox` when given, next to what failed; else as a toast).
export async function busy(button, action, errorBox = null) {
  const label = button.innerHTML;
  button.disabled = true;
  button.replaceChildren(h("span", { class: "spinner-border spinner-border-sm me-1", "aria-hidden": "true" }),
    h("span", { role: "status" }, "Working…"));
  if (errorBox) errorBox.hidden = true;
  try {
    return await action();
  } catch (error) {
    if (errorBox) showError(errorBox, error);
    else toast(error.message);
    return undefined;
  } finally {
    button.disabled = false;
    button.innerHTML = label;
  }
}

// An error shown where it happened: the API's message and each field's problem.
export function showError(box, error) {
  const details = (error.details || []).filter((d) => d && d.message);
  fill(box, h("strong", {}, error.message),
    details.length ? h("ul", { class: "mb-0 mt-1" }, details.map((d) => h("li", {}, d.field ? `${d.field}: ${d.message}` : d.message))) : null);
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

export function errorBox() {
  return h("div", { class: "alert alert-danger", role: "alert", hidden: true });
}

// Submits only a valid form: otherwise marks the invalid fields and says so, inline.
export function onValidSubmit(form, submit, action) {
  const box = errorBox();
  form.prepend(box);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!form.checkValidity()) {
      form.classList.add("was-validated");
      const invalid = [...form.querySelectorAll(":invalid")].map((el) => (el.labels && el.labels[0] ? el.labels[0].textContent : el.name)).filter(Boolean);
      showError(box, { message: `Some fields are invalid: ${invalid.join(", ")}. Fix the marked fields and submit again.` });
      return;
    }
    busy(submit, action, box);
  });
}

export function field(label, input, help) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h("div", { class: "mb-3" },
    h("label", { class: "form-label", for: id }, label), input,
    help ? h("div", { class: "form-text" }, help) : null);
}

export function badge(phase) {
  const colour = { Succeeded: "success", Healthy: "success", Available: "success", Verified: "success",
    Running: "primary", Progressing: "primary", Failed: "danger", RolledBack: "danger", Degraded: "warning",
    Suspended: "secondary", Paused: "secondary", Pending: "light" }[phase] || "light";
  return h("span", { class: `badge text-bg-${colour}` }, phase || "Pending");
}

// Numbers as people read them: fixed decimals for metrics, never a long float, "–" when unknown.
export function number(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

// A count or an amount with at most `digits` decimals and no trailing zeros (12, 4.46, 0.05).
export function amount(value, digits = 2) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return value.toLocaleString("en-US", { maximumFractionDigits: digits });
}

export function percent(value, digits = 1) {
  return typeof value === "number" && Number.isFinite(value) ? `${(value * 100).toFixed(digits)}%` : "–";
}

export function when(value) {
  if (!value) return "–";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "–" : date.toLocaleString("en-GB", { dateStyle: "short", timeStyle: "medium" });
}

// Terminal colour and cursor codes (ESC [ … letter) out of log lines.
// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;?]*[ -\/]*[@-~]|\u001b[@-Z\\-_]/g;
export function plain(text) {
  return String(text ?? "").replace(ANSI, "");
}

// A scroll area keyboard users can reach and screen readers name.
export function scrollArea(label, attrs, ...children) {
  return h("div", { ...attrs, tabindex: "0", role: "region", "aria-label": label }, ...children);
}

// Conditions (type, status, reason, message) as a table: the "why" of a resource.
export function conditionsTable(conditions) {
  if (!conditions || !conditions.length) return h("p", { class: "text-secondary small" }, "No conditions reported yet.");
  return h("div", { class: "table-responsive" }, h("table", { class: "table table-sm small stack" },
    h("thead", {}, h("tr", {}, ["Condition", "Status", "Reason", "Message", "Since"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, conditions.map((c) => h("tr", {},
      h("td", { "data-label": "Condition" }, c.type),
      h("td", { "data-label": "Status" }, h("span", { class: `badge text-bg-${c.status === "True" ? "success" : c.status === "False" ? "warning" : "light"}` }, c.status)),
      h("td", { "data-label": "Reason" }, c.reason || "–"),
      h("td", { "data-label": "Message", class: "text-break" }, c.message || "–"),
      h("td", { "data-label": "Since" }, when(c.lastTransitionTime)))))));
}

// Kubernetes Events of a resource, newest first.
export function eventsTable(events) {
  if (!events || !events.length) return h("p", { class: "text-secondary small" }, "No Events recorded (Kubernetes keeps them about an hour).");
  return h("div", { class: "table-responsive" }, h("table", { class: "table table-sm small stack" },
    h("thead", {}, h("tr", {}, ["Type", "Reason", "Message", "Count", "Last seen"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, events.map((e) => h("tr", {},
      h("td", { "data-label": "Type" }, h("span", { class: `badge text-bg-${e.type === "Warning" ? "warning" : "light"}` }, e.type || "Normal")),
      h("td", { "data-label": "Reason" }, e.reason || "–"),
      h("td", { "data-label": "Message", class: "text-break" }, e.message || "–"),
      h("td", { "data-label": "Count" }, amount(e.count ?? 1, 0)),
      h("td", { "data-label": "Last seen" }, when(e.lastTime)))))));
}

// A table whose rows become labelled cards below the `md` breakpoint (see .stack in console.css).
export function stackTable(headings, rows, attrs = {}) {
  return h("div", { class: "table-responsive" }, h("table", { class: `table stack ${attrs.class || "table-hover"}` },
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell, i) =>
      h("td", { "data-label": headings[i] || null }, cell)))))));
}

// A confirmation dialog (Bootstrap modal) that states what will happen; resolves true on confirm.
export async function confirmAction(title, body, confirmLabel, style = "danger") {
  await loadScript("bootstrap.js");
  return new Promise((resolve) => {
    const id = `confirm-${Math.random().toString(36).slice(2, 9)}`;
    const yes = h("button", { type: "button", class: `btn btn-${style}` }, confirmLabel);
    const modal = h("div", { class: "modal fade", tabindex: "-1", "aria-labelledby": `${id}-title`, "aria-modal": "true", role: "dialog" },
      h("div", { class: "modal-dialog" }, h("div", { class: "modal-content" },
        h("div", { class: "modal-header" }, h("h2", { class: "modal-title h5", id: `${id}-title` }, title),
          h("button", { type: "button", class: "btn-close", "data-bs-dismiss": "modal", "aria-label": "Cancel" })),
        h("div", { class: "modal-body" }, body),
        h("div", { class: "modal-footer" },
          h("button", { type: "button", class: "btn btn-outline-secondary", "data-bs-dismiss": "modal" }, "Cancel"), yes))));
    document.body.append(modal);
    const dialog = new bootstrap.Modal(modal);
    let answer = false;
    yes.addEventListener("click", () => { answer = true; dialog.hide(); });
    modal.addEventListener("hidden.bs.modal", () => { modal.remove(); resolve(answer); });
    dialog.show();
  });
}

export function spinner(text = "Loading…") {
  return h("div", { class: "d-flex align-items-center gap-2 text-secondary", role: "status" },
    h("span", { class: "spinner-border spinner-border-sm", "aria-hidden": "true" }), text);
}

// YAML for the manifests the console shows (maps, lists, scalars: all a CR needs).
export function toYaml(value, indent = 0) {
  const pad = "  ".repeat(indent);
  const scalar = (v) => {
    if (typeof v === "string") return /^[\w./:@-]+$/.test(v) && !/^(true|false|null|yes|no|[\d.]+)$/i.test(v) ? v : JSON.stringify(v);
    return String(v);
  };
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return value.map((item) => {
      if (item && typeof item === "object") {
        const inner = toYaml(item, indent + 1).trimStart();
        return `${pad}- ${inner}`;
      }
      return `${pad}- ${scalar(item)}`;
    }).join("\n");
  }
  if (value && typeof value === "object") {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined && v !== null);
    if (!entries.length) return "{}";
    return entries.map(([key, v]) => {
      if (v && typeof v === "object" && (Array.isArray(v) ? v.length : Object.keys(v).length)) {
        return `${pad}${key}:\n${toYaml(v, indent + 1)}`;
      }
      return `${pad}${key}: ${v && typeof v === "object" ? (Array.isArray(v) ? "[]" : "{}") : scalar(v)}`;
    }).join("\n");
  }
  return pad + scalar(value);
}

// Kubernetes object names, for `pattern` attributes (which use the regex `v` flag: `-` escaped).
export const NAME_PATTERN = "[a-z0-9]([a-z0-9\\-]*[a-z0-9])?";
