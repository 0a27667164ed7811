// Detection playground: an image through a model's ONNX on the API, boxes drawn on a canvas.
import { api } from "../api.js";
import { busy, field, h, setPage, toast } from "../ui.js";

const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];

export async function render(project, rest, query) {
  const models = await api(`/projects/${project}/models?limit=200`);
  const model = h("select", { class: "form-select" },
    models.items.map((m) => h("option", { value: m.name, selected: m.name === query.get("model") }, `${m.name} (${m.stage})`)));
  const file = h("input", { class: "form-control", type: "file", accept: "image/jpeg,image/png,image/webp" });
  const sample = h("button", { class: "btn btn-outline-secondary", type: "button" }, "Use the sample image");
  const confidence = h("input", { class: "form-range", type: "range", min: 5, max: 95, value: 25 });
  const confidenceText = h("output", {}, "0.25");
  const run = h("button", { class: "btn btn-primary", type: "button" }, "Detect");
  const canvas = h("canvas", { class: "detections", width: 640, height: 480, role: "img", "aria-label": "Image with detected boxes" });
  const table = h("tbody", {});
  let image = null;
  let blob = null;
  let detections = [];

  const draw = () => {
    if (!image) return;
    const threshold = confidence.value / 100;
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const shown = detections.filter((d) => d.score >= threshold);
    context.lineWidth = Math.max(2, canvas.width / 320);
    context.font = `${Math.max(12, canvas.width / 40)}px sans-serif`;
    for (const d of shown) {
      const [x1, y1, x2, y2] = d.box;
      const colour = COLOURS[d.classId % COLOURS.length];
      context.strokeStyle = colour;
      context.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const label = `${d.className} ${d.score.toFixed(2)}`;
      const width = context.measureText(label).width + 6;
      context.fillStyle = colour;
      context.fillRect(x1, Math.max(0, y1 - 18), width, 18);
      context.fillStyle = "#fff";
      context.fillText(label, x1 + 3, Math.max(13, y1 - 4));
    }
    canvas.dataset.boxes = String(shown.length);
    table.replaceChildren(...shown.map((d) => h("tr", {}, h("td", {}, d.className), h("td", {}, d.score.toFixed(3)),
      h("td", {}, d.box.map((v) => Math.round(v)).join(", ")))));
  };
  const load = (source) => new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot read this image"));
    img.src = URL.createObjectURL(source);
  });
  const choose = async (source) => {
    blob = source;
    image = await load(source);
    detections = [];
    draw();
  };
  file.addEventListener("change", () => file.files[0] && choose(file.files[0]).catch((e) => toast(e.message)));
  sample.addEventListener("click", () => busy(sample, async () => choose(await (await fetch("samples/shapes.jpg")).blob())));
  confidence.addEventListener("input", () => {
    confidenceText.textContent = (confidence.value / 100).toFixed(2);
    draw();
  });
  run.addEventListener("click", () => busy(run, async () => {
    if (!blob) throw new Error("choose an image first");
    if (!model.value) throw new Error("this project has no model yet");
    const form = new FormData();
    form.append("image", blob, "image");
    const result = await api(`/projects/${project}/models/${encodeURIComponent(model.value)}/detect?confidence=0.05`, { method: "POST", form });
    detections = result.detections;
    draw();
    toast(`${result.detections.length} detections in ${result.milliseconds} ms`, "success");
  }));
  setPage("Playground",
    h("h1", { class: "h4 mb-3" }, "Detection playground"),
    h("div", { class: "row g-4" },
      h("div", { class: "col-lg-4" },
        field("Model", model), field("Image", file), h("div", { class: "mb-3" }, sample),
        h("div", { class: "mb-3" }, h("label", { class: "form-label", for: "confidence" }, "Confidence ", confidenceText),
          Object.assign(confidence, { id: "confidence" })),
        run,
        h("table", { class: "table table-sm mt-3" }, h("thead", {}, h("tr", {}, ["Class", "Score", "Box"].map((t) => h("th", { scope: "col" }, t)))), table)),
      h("div", { class: "col-lg-8" }, canvas)));
}
