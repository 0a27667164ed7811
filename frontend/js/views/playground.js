// Detection playground: an image through a model's ONNX on the API, boxes drawn on a canvas at a
// readable size; the table and the toast count the same detections (those above the confidence).
import { api } from "../api.js";
import { drawDetections, loadImage } from "../draw.js";
import { busy, errorBox, field, fill, h, setPage, showError, toast } from "../ui.js";

export async function render(project, rest, query) {
  const models = await api(`/projects/${project}/models?limit=200`);
  const model = h("select", { class: "form-select" },
    models.items.map((m) => h("option", { value: m.name, selected: m.name === query.get("model") }, `${m.name} (${m.stage})`)));
  const file = h("input", { class: "form-control", type: "file", accept: "image/jpeg,image/png,image/webp" });
  const sample = h("button", { class: "btn btn-outline-secondary", type: "button" }, "Use the sample image");
  const confidence = h("input", { class: "form-range", type: "range", min: 5, max: 95, value: 25 });
  const confidenceText = h("output", {}, "0.25");
  const run = h("button", { class: "btn btn-primary", type: "button" }, "Detect");
  const canvas = h("canvas", { class: "detections", role: "img", "aria-label": "Image with detected boxes", hidden: true });
  const hint = h("div", { class: "border rounded p-4 text-center text-secondary" }, "Choose an image, or use the sample image, then Detect.");
  const frame = h("div", { class: "w-100" }, hint, canvas);
  const table = h("tbody", {});
  const count = h("p", { class: "small text-secondary", "aria-live": "polite" });
  const problem = errorBox();
  let image = null;
  let blob = null;
  let detections = [];

  const shown = () => detections.filter((d) => d.score >= confidence.value / 100);
  const draw = () => {
    if (!image) return;
    hint.hidden = true;
    canvas.hidden = false;
    const width = Math.max(200, Math.min(960, frame.clientWidth || 640));
    const boxes = shown();
    drawDetections(canvas, image, boxes, { width });
    canvas.dataset.boxes = String(boxes.length);
    fill(table, boxes.map((d) => h("tr", {}, h("td", {}, d.className), h("td", {}, d.score.toFixed(3)),
      h("td", {}, d.box.map((v) => Math.round(v)).join(", ")))));
    count.textContent = detections.length
      ? `${boxes.length} detection(s) at confidence ≥ ${(confidence.value / 100).toFixed(2)} (${detections.length} above 0.05)` : "";
  };
  const choose = async (source) => {
    blob = source;
    image = await loadImage(source);
    detections = [];
    draw();
  };
  file.addEventListener("change", () => file.files[0] && choose(file.files[0]).catch((e) => showError(problem, e)));
  sample.addEventListener("click", () => busy(sample, async () => choose(await (await fetch("samples/shapes.jpg")).blob()), problem));
  confidence.addEventListener("input", () => {
    confidenceText.textContent = (confidence.value / 100).toFixed(2);
    draw();
  });
  run.addEventListener("click", () => busy(run, async () => {
    if (!blob) throw new Error("Choose an image first (or use the sample image).");
    if (!model.value) throw new Error("This project has no model yet: a finished training run registers one.");
    const form = new FormData();
    form.append("image", blob, "image");
    const result = await api(`/projects/${project}/models/${encodeURIComponent(model.value)}/detect?confidence=0.05`, { method: "POST", form });
    detections = result.detections;
    draw();
    toast(`${shown().length} detection(s) in ${Math.round(result.milliseconds)} ms`, "success");
  }, problem));
  const resize = () => draw();
  window.addEventListener("resize", resize);
  setPage("Playground",
    h("h1", { class: "h4 mb-3" }, "Detection playground"),
    h("div", { class: "row g-4" },
      h("div", { class: "col-lg-4" },
        problem, field("Model", model), field("Image", file), h("div", { class: "mb-3" }, sample),
        h("div", { class: "mb-3" }, h("label", { class: "form-label", for: "confidence" }, "Confidence ", confidenceText),
          Object.assign(confidence, { id: "confidence" })),
        run, count,
        h("table", { class: "table table-sm mt-3" }, h("thead", {}, h("tr", {}, ["Class", "Score", "Box"].map((t) => h("th", { scope: "col" }, t)))), table)),
      h("div", { class: "col-lg-8" }, frame)));
  return () => window.removeEventListener("resize", resize);
}
