// Models: the registry of ModelArtifacts, one model's lineage and stage, and a side-by-side comparison.
import { api, blobUrl } from "../api.js";
import { canWrite } from "../main.js";
import { badge, busy, h, number, scrollArea, setPage, stackTable, toast, when } from "../ui.js";

const STAGES = ["candidate", "staging", "production", "archived"];
const METRICS = [["mAP50", "mAP50"], ["mAP50_95", "mAP50-95"], ["precision", "Precision"], ["recall", "Recall"]];

export async function render(project, rest, query) {
  if (rest[0] === "compare") return compare(project, query.get("a"), query.get("b"));
  if (rest[0]) return detail(project, rest[0]);
  return list(project);
}

const size = (model) => {
  const onnx = model.formats.find((f) => f.format === "onnx") || model.formats[0];
  return onnx ? `${(onnx.size / 1e6).toFixed(1)} MB` : "–";
};

async function list(project) {
  const page = await api(`/projects/${project}/models?limit=200`);
  const picked = new Set();
  const compareButton = h("button", { class: "btn btn-outline-primary", type: "button", disabled: true }, "Compare two");
  compareButton.addEventListener("click", () => {
    const [a, b] = [...picked];
    location.hash = `#/p/${project}/models/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`;
  });
  const lines = new Map();
  for (const m of page.items) lines.set(m.model, [...(lines.get(m.model) || []), m]);
  const sections = [...lines.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([line, versions]) => {
    const production = versions.find((m) => m.stage === "production");
    const rows = versions.map((m) => {
      const box = h("input", { class: "form-check-input", type: "checkbox", "aria-label": `Select ${m.name} to compare` });
      box.addEventListener("change", () => {
        box.checked ? picked.add(m.name) : picked.delete(m.name);
        compareButton.disabled = picked.size !== 2;
      });
      return [box,
        h("a", { href: `#/p/${project}/models/${encodeURIComponent(m.name)}` }, m.name),
        m.version, h("span", { class: "badge text-bg-info" }, m.stage), badge(m.phase),
        number(m.metrics.mAP50), number(m.metrics.mAP50_95), size(m),
        m.lineage.trainingJob ? h("a", { href: `#/p/${project}/training/${encodeURIComponent(m.lineage.trainingJob)}` }, m.lineage.trainingJob) : "–"];
    });
    return h("section", { class: "mb-4" },
      h("h2", { class: "h5" }, line, " ", h("span", { class: "small text-secondary fw-normal" },
        production ? `production: ${production.version} (${production.name})` : "no production version", ` · ${versions.length} version(s)`)),
      stackTable(["", "Name", "Version", "Stage", "Phase", "mAP50", "mAP50-95", "Size", "Run"], rows));
  });
  setPage("Models",
    h("div", { class: "d-flex justify-content-between align-items-center mb-3" }, h("h1", { class: "h4 m-0" }, "Model registry"), compareButton),
    sections.length ? sections : h("p", { class: "text-secondary" }, "No models yet: a finished training run registers one."));
}

async function detail(project, name) {
  const model = await api(`/projects/${project}/models/${encodeURIComponent(name)}`);
  const stage = h("select", { class: "form-select", id: "stage", disabled: !canWrite(), "aria-label": "Stage" },
    STAGES.map((s) => h("option", { value: s, selected: s === model.stage }, s)));
  const save = h("button", { class: "btn btn-primary", type: "button", hidden: !canWrite() }, "Set stage");
  save.addEventListener("click", () => busy(save, async () => {
    await api(`/projects/${project}/models/${encodeURIComponent(name)}`, { method: "PATCH", body: { stage: stage.value } });
    toast(`${name} is now ${stage.value}`, "success");
  }));
  const lineage = model.lineage;
  setPage(`Model ${name}`,
    h("h1", { class: "h4" }, name, " ", badge(model.phase)),
    h("div", { class: "row g-4" },
      h("div", { class: "col-md-6" },
        h("table", { class: "table table-sm" }, h("tbody", {},
          h("tr", {}, h("th", { scope: "row" }, "Model line"), h("td", {}, model.model)),
          h("tr", {}, h("th", { scope: "row" }, "Version"), h("td", {}, model.version)),
          h("tr", {}, h("th", { scope: "row" }, "Stage"), h("td", {}, model.stage)),
          h("tr", {}, h("th", { scope: "row" }, "Registered"), h("td", {}, when(model.createdAt))),
          METRICS.map(([key, label]) => h("tr", {}, h("th", { scope: "row" }, label), h("td", {}, number(model.metrics[key])))),
          h("tr", {}, h("th", { scope: "row" }, "Classes"), h("td", {}, model.classNames.join(", "))),
          h("tr", {}, h("th", { scope: "row" }, "Input size"), h("td", {}, model.imgsz ?? "–")),
          h("tr", {}, h("th", { scope: "row" }, "Deployed to"), h("td", {}, model.deployedTo.join(", ") || "–")))),
        h("h2", { class: "h6" }, "Files"),
        h("ul", { class: "small text-break list-unstyled" }, model.formats.map((f) => h("li", { class: "mb-2" },
          downloadButton(project, name, f), ` ${f.uri} (sha256 ${f.sha256.slice(0, 12)}…, ${(f.size / 1e6).toFixed(1)} MB)`)))),
      h("div", { class: "col-md-6" },
        h("h2", { class: "h6" }, "Lineage"),
        h("ul", {},
          h("li", {}, "Training run: ", lineage.trainingJob ? h("a", { href: `#/p/${project}/training/${encodeURIComponent(lineage.trainingJob)}` }, lineage.trainingJob) : "–"),
          h("li", {}, "Dataset: ", lineage.dataset || "–"),
          h("li", {}, "Base model: ", lineage.baseModel || "–")),
        qualityGate(project, name, model),
        h("label", { class: "form-label", for: "stage" }, "Stage"),
        h("div", { class: "input-group mb-3" }, stage, save),
        h("div", { class: "d-flex gap-2" },
          h("a", { class: "btn btn-outline-primary", href: `#/p/${project}/playground?model=${encodeURIComponent(name)}` }, "Try it"),
          canWrite() ? h("a", { class: "btn btn-outline-primary", href: `#/p/${project}/deployments/new?model=${encodeURIComponent(name)}` }, "Roll out") : null))));
}

// The gate's verdict, then its evaluation record (loaded after the page): held-out classes with the
// candidate and the baseline side by side; a drop is shown as a signed difference.
function qualityGate(project, name, model) {
  if (!model.evaluation) return h("p", { class: "small text-secondary" }, "Trained without a quality gate.");
  const gate = model.qualityGate;
  const verdict = !gate ? h("span", { class: "badge text-bg-secondary" }, "not checked yet")
    : h("span", { class: `badge ${gate.passed ? "text-bg-success" : "text-bg-danger"}` }, gate.passed ? "passed" : "failed");
  const table = scrollArea("Held-out classes, both models", { class: "table-responsive" },
    h("p", { class: "small text-secondary" }, "Loading the evaluation record…"));
  api(`/projects/${project}/models/${encodeURIComponent(name)}/evaluation`).then((record) => {
    const heldOut = record.datasets.find((d) => d.role === "heldOut");
    const signed = (value) => value === null || value === undefined ? "–" : `${value > 0 ? "−" : "+"}${Math.abs(value).toFixed(3)}`;
    const row = (label, candidate, baseline, drop, labels) => h("tr", {},
      h("th", { scope: "row" }, label), h("td", {}, labels ?? "–"), h("td", {}, number(candidate)), h("td", {}, number(baseline)),
      h("td", { class: drop > 0 ? "text-danger" : "text-success" }, signed(drop)));
    table.replaceChildren(h("table", { class: "table table-sm" },
      h("caption", {}, `Held-out set (${heldOut.images} images), AP50-95; baseline ${record.baseline?.artifact || "none"}`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Class"), h("th", { scope: "col" }, "Labels"),
        h("th", { scope: "col" }, name), h("th", { scope: "col" }, record.baseline?.artifact || "baseline"), h("th", { scope: "col" }, "Change"))),
      h("tbody", {},
        row("all (mAP50-95)", heldOut.candidate.mAP50_95, heldOut.baseline?.mAP50_95,
          heldOut.baseline ? heldOut.baseline.mAP50_95 - heldOut.candidate.mAP50_95 : null, heldOut.labels),
        heldOut.classes.map((c) => row(c.name, c.candidate.AP50_95, c.baseline?.AP50_95, c.drop, c.labels)))));
  }).catch((error) => table.replaceChildren(h("p", { class: "small text-danger" }, error.message)));
  return h("section", { class: "mb-3", "aria-label": "Quality gate" },
    h("h2", { class: "h6" }, "Quality gate ", verdict),
    gate && gate.reasons.length ? h("ul", { class: "small text-danger" }, gate.reasons.map((r) => h("li", {}, r))) : null,
    table);
}

// A file through the API (checked against its sha256 there), saved under the version's name.
function downloadButton(project, name, file) {
  const button = h("button", { class: "btn btn-sm btn-outline-secondary", type: "button" }, `Download ${file.format}`);
  button.addEventListener("click", () => busy(button, async () => {
    const url = await blobUrl(`/projects/${project}/models/${encodeURIComponent(name)}/files/${file.format}`);
    const link = h("a", { href: url, download: `${name}-${file.format}${file.uri.match(/\.[a-z0-9]+$/i)?.[0] || ""}`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }));
  return button;
}

async function compare(project, a, b) {
  const result = await api(`/projects/${project}/model-comparison?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  const row = ([key, label]) => h("tr", {}, h("th", { scope: "row" }, label),
    h("td", {}, number(result.a.metrics[key])), h("td", {}, number(result.b.metrics[key])),
    h("td", { class: (result.metricDeltas[key] || 0) >= 0 ? "text-success" : "text-danger" },
      result.metricDeltas[key] !== undefined ? `${result.metricDeltas[key] >= 0 ? "+" : ""}${result.metricDeltas[key].toFixed(3)}` : "–"));
  setPage("Compare models",
    h("h1", { class: "h4" }, "Compare models"),
    h("div", { class: "table-responsive" }, h("table", { class: "table" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Metric"), h("th", { scope: "col" }, result.a.name),
        h("th", { scope: "col" }, result.b.name), h("th", { scope: "col" }, "b − a"))),
      h("tbody", {}, METRICS.map(row),
        h("tr", {}, h("th", { scope: "row" }, "Stage"), h("td", {}, result.a.stage), h("td", {}, result.b.stage), h("td", {})),
        h("tr", {}, h("th", { scope: "row" }, "Run"), h("td", {}, result.a.lineage.trainingJob || "–"), h("td", {}, result.b.lineage.trainingJob || "–"), h("td", {}))))),
    h("p", {}, result.better ? `Better on mAP50-95: ${result.better}` : "No difference in mAP50-95."));
}
