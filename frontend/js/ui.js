// Small DOM helpers: elements built with textContent (never innerHTML of API data), toasts, busy buttons.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// After an in-app navigation, focus moves to the new content (screen readers announce it); on
// the first load it stays at the top, where the skip link is.
export const focus = { onRender: false };

export function setPage(title, ...content) {
  document.title = `${title} · VisionInApp`;
  const main = document.getElementById("main");
  main.replaceChildren(...content);
  if (focus.onRender) main.focus({ preventScroll: true });
}

export function toast(message, kind = "danger") {
  const item = h("div", { class: `toast align-items-center text-bg-${kind} border-0`, role: "alert" },
    h("div", { class: "d-flex" },
      h("div", { class: "toast-body" }, message),
      h("button", { type: "button", class: "btn-close btn-close-white me-2 m-auto", "data-bs-dismiss": "toast",
        "aria-label": "Close" })));
  document.getElementById("toasts").append(item);
  const shown = new bootstrap.Toast(item, { delay: kind === "danger" ? 8000 : 3000 });
  item.addEventListener("hidden.bs.toast", () => item.remove());
  shown.show();
}

// Runs `action` with the button disabled and a spinner; shows the API's message on failure.
export async function busy(button, action) {
  const label = button.innerHTML;
  button.disabled = true;
  button.replaceChildren(h("span", { class: "spinner-border spinner-border-sm me-1", "aria-hidden": "true" }),
    h("span", { role: "status" }, "Working…"));
  try {
    return await action();
  } catch (error) {
    toast(error.message);
    return undefined;
  } finally {
    button.disabled = false;
    button.innerHTML = label;
  }
}

// Submits only a valid form: otherwise marks the invalid fields and says so.
export function onValidSubmit(form, submit, action) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!form.checkValidity()) {
      form.classList.add("was-validated");
      toast("Some fields are invalid: see the marked fields");
      return;
    }
    busy(submit, action);
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
  const colour = { Succeeded: "success", Healthy: "success", Available: "success", Running: "primary",
    Progressing: "primary", Failed: "danger", RolledBack: "danger", Degraded: "warning", Suspended: "secondary",
    Paused: "secondary", Pending: "light" }[phase] || "light";
  return h("span", { class: `badge text-bg-${colour}` }, phase || "Pending");
}

export function number(value, digits = 3) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
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
