// Models: the registry of ModelArtifacts, one model's lineage and stage, and a side-by-side comparison.
import { api, blobUrl } from "../api.js";
import { charts } from "../load.js";
import { canWrite } from "../main.js";
import { amount, badge, busy, h, number, scrollArea, setPage, stackTable, toast, when } from "../ui.js";

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
  const [page, policies] = await Promise.all([api(`/projects/${project}/models?limit=200`),
    api(`/projects/${project}/retrain-policies`)]);
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
      policies.filter((policy) => policy.line === line).map((policy) => loopStatus(project, policy)),
      stackTable(["", "Name", "Version", "Stage", "Phase", "mAP50", "mAP50-95", "Size", "Run"], rows));
  });
  setPage("Models",
    h("div", { class: "d-flex justify-content-between align-items-center mb-3" }, h("h1", { class: "h4 m-0" }, "Model registry"), compareButton),
    sections.length ? sections : h("p", { class: "text-secondary" }, "No models yet: a finished training run registers one."));
}

// A line's RetrainPolicy: where the loop is (frames with labels ready against the trigger, the
// latest run, its candidate and outcome), and "Evaluate now" for writers.
function loopStatus(project, policy) {
  const status = policy.status || {};
  const trigger = policy.spec.triggers?.reviewedFrames;
  const facts = [`${status.readyFrames ?? 0}${trigger ? ` of ${trigger}` : ""} frame(s) with labels ready`,
    `${status.pendingFrames ?? 0} waiting for review`, status.run ? `latest run ${status.run}` : "no run yet"];
  const box = h("div", { class: "border rounded p-2 mb-2", "data-testid": `loop-${policy.name}` },
    h("div", {}, h("strong", {}, `Retrain policy ${policy.name}: `), badge(policy.phase), " ", h("span", { class: "small" }, facts.join(" · "))),
    policy.message ? h("div", { class: "small text-secondary" }, policy.message) : null,
    status.result && status.result !== policy.message ? h("div", { class: "small" }, `Last outcome: ${status.result}`) : null);
  if (canWrite()) {
    const evaluate = h("button", { class: "btn btn-sm btn-outline-primary mt-1", type: "button" }, "Evaluate now");
    evaluate.addEventListener("click", () => busy(evaluate, async () => {
      const after = await api(`/projects/${project}/retrain-policies/${encodeURIComponent(policy.name)}/evaluate`, { method: "POST" });
      toast(`${policy.name}: ${after.phase}: ${after.message || ""}`, "success");
      box.replaceWith(loopStatus(project, after));
    }));
    box.append(evaluate);
  }
  return box;
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
// candidate and the baseline side by side (a drop is shown as a signed difference), then what to
// decide by: each class's precision-recall curve and the confusion matrix of either model.
function qualityGate(project, name, model) {
  if (!model.evaluation) return h("p", { class: "small text-secondary" }, "Trained without a quality gate.");
  const gate = model.qualityGate;
  const verdict = !gate ? h("span", { class: "badge text-bg-secondary" }, "not checked yet")
    : h("span", { class: `badge ${gate.passed ? "text-bg-success" : "text-bg-danger"}` }, gate.passed ? "passed" : "failed");
  const table = scrollArea("Held-out classes, both models", { class: "table-responsive" },
    h("p", { class: "small text-secondary" }, "Loading the evaluation record…"));
  const details = h("div", {});
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
    decideBy(details, name, record, heldOut)
      .catch((error) => details.replaceChildren(h("p", { class: "small text-danger" }, error.message)));
  }).catch((error) => table.replaceChildren(h("p", { class: "small text-danger" }, error.message)));
  return h("section", { class: "mb-3", "aria-label": "Quality gate" },
    h("h2", { class: "h6" }, "Quality gate ", verdict),
    gate && gate.reasons.length ? h("ul", { class: "small text-danger" }, gate.reasons.map((r) => h("li", {}, r))) : null,
    table, details);
}

// The held-out set's precision-recall curves (IoU 0.5, one line per class) and confusion matrix of
// the candidate, or of the baseline picked in the select; records written before the curves were
// measured have neither.
async function decideBy(box, name, record, heldOut) {
  const models = [["candidate", name], ["baseline", record.baseline?.artifact || "baseline"]]
    .filter(([role]) => heldOut[role] && (heldOut[role].prCurves || heldOut[role].confusion));
  if (!models.length) {
    box.replaceChildren(h("p", { class: "small text-secondary" }, "This record has no precision-recall curves or confusion matrix (written before they were measured)."));
    return;
  }
  const picker = h("select", { class: "form-select form-select-sm w-auto", id: "gate-model" },
    models.map(([role, label]) => h("option", { value: role }, `${label} (${role})`)));
  const chartBox = h("div", { class: "chart-box", dataset: { series: "0" } });
  const matrixBox = h("div", {});
  box.replaceChildren(
    h("h3", { class: "h6 mt-3" }, "Held-out precision-recall and confusion"),
    h("div", { class: "d-flex align-items-center gap-2 mb-2" },
      h("label", { class: "form-label small m-0", for: "gate-model" }, "Model"), picker),
    chartBox, matrixBox);
  const Chart = await charts();
  let chart = null;
  const show = () => {
    const [role, label] = models.find(([r]) => r === picker.value);
    const scores = heldOut[role];
    const curves = scores.prCurves;
    chart?.destroy();
    chart = null;
    if (curves && curves.classes.length) {
      const each = curves.classes.length <= 12
        ? `: ${curves.classes.map((c) => `${c.name} AP50 ${number(area(curves.recall, c.precision))}`).join(", ")}` : "";
      const canvas = h("canvas", { role: "img",
        "aria-label": `Precision-recall curves of ${label} at IoU ${amount(curves.iou)} on the held-out set, one line per class (${curves.classes.length})${each}` });
      chartBox.replaceChildren(canvas);
      chart = new Chart(canvas, prChart(curves));
      chartBox.dataset.series = String(curves.classes.length);
    } else {
      chartBox.replaceChildren(h("p", { class: "small text-secondary" }, `No precision-recall curves recorded for ${label}.`));
      chartBox.dataset.series = "0";
    }
    matrixBox.replaceChildren(scores.confusion ? confusionTable(scores.confusion, label)
      : h("p", { class: "small text-secondary" }, `No confusion matrix recorded for ${label}.`));
  };
  picker.addEventListener("change", show);
  show();
}

// The area under a curve sampled at `recall` (trapezoids): the class's AP50, as the record's own.
function area(recall, precision) {
  let total = 0;
  for (let i = 1; i < recall.length; i++) total += (recall[i] - recall[i - 1]) * (precision[i] + precision[i - 1]) / 2;
  return total;
}

// One line per class on fixed 0..1 axes, in colours spread around the wheel; the legend only while
// it stays readable (tooltips name the class otherwise).
function prChart(curves) {
  const many = curves.classes.length > 20;
  return { type: "line",
    data: { datasets: curves.classes.map((c, i) => ({ label: c.name,
      data: curves.recall.map((x, j) => ({ x, y: c.precision[j] })),
      borderColor: `hsl(${Math.round((i * 137.5) % 360)} 70% 42%)`, backgroundColor: `hsl(${Math.round((i * 137.5) % 360)} 70% 42%)`,
      borderWidth: 2, pointRadius: 0, tension: 0 })) },
    options: { animation: false, maintainAspectRatio: false, interaction: { mode: "nearest", intersect: false },
      plugins: { legend: { display: !many, position: "bottom", labels: { boxWidth: 12 } },
        tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: precision ${ctx.parsed.y.toFixed(3)} at recall ${ctx.parsed.x.toFixed(2)}` } } },
      scales: { x: { type: "linear", min: 0, max: 1, title: { display: true, text: "recall" } },
        y: { min: 0, max: 1, title: { display: true, text: "precision" } } } } };
}

// Counts as ultralytics' ConfusionMatrix makes them: rows the predicted class, columns the true class,
// each ending with the background (a missed label: background row; a false detection: background
// column). Scrolls sideways in its own focusable area when the classes do not fit.
function confusionTable(confusion, label) {
  const names = confusion.classNames;
  const last = names.length - 1;
  const most = Math.max(1, ...confusion.matrix.flatMap((row, i) => row.filter((_, j) => i !== j || i === last)));
  const cell = (count, i, j) => {
    const value = Math.round(count);
    const right = i === j && i !== last;
    const tint = right || !value ? null : `background-color: rgba(220, 53, 69, ${(0.08 + 0.3 * value / most).toFixed(3)})`;
    return h("td", { class: right ? "fw-bold" : value ? null : "text-body-secondary", style: tint,
      dataset: { cell: `${names[i]}|${names[j]}` } }, i === last && j === last ? "–" : amount(value, 0));
  };
  // The caption for screen readers; the same words shown under the area, where a wide table does not
  // scroll them out of sight.
  const about = `Confusion matrix of ${label} on the held-out set: detections above confidence ` +
    `${amount(confusion.threshold)} matched at IoU above ${amount(confusion.iou)}; rows predicted, columns true`;
  return h("div", {},
    scrollArea(`Confusion matrix of ${label}`, { class: "table-responsive" },
      h("table", { class: "table table-sm table-bordered small text-end mb-1" },
        h("caption", { class: "visually-hidden" }, about),
        h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "text-start" }, "Predicted \\ true"),
          names.map((n) => h("th", { scope: "col" }, n)))),
        h("tbody", {}, confusion.matrix.map((row, i) => h("tr", {},
          h("th", { scope: "row", class: "text-start" }, names[i]), row.map((count, j) => cell(count, i, j))))))),
    h("p", { class: "small text-secondary", "aria-hidden": "true" }, `${about}; right answers in bold.`));
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
  // The runs behind them: epoch curves overlaid, and what was trained differently.
  const runOf = (model) => model.lineage.trainingJob
    ? api(`/projects/${project}/training-jobs/${encodeURIComponent(model.lineage.trainingJob)}`).catch(() => null) : Promise.resolve(null);
  const [runA, runB] = await Promise.all([runOf(result.a), runOf(result.b)]);
  const curves = h("div", {});
  setPage("Compare models",
    h("h1", { class: "h4" }, "Compare models"),
    h("div", { class: "table-responsive" }, h("table", { class: "table" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Metric"), h("th", { scope: "col" }, result.a.name),
        h("th", { scope: "col" }, result.b.name), h("th", { scope: "col" }, "b − a"))),
      h("tbody", {}, METRICS.map(row),
        h("tr", {}, h("th", { scope: "row" }, "Stage"), h("td", {}, result.a.stage), h("td", {}, result.b.stage), h("td", {})),
        h("tr", {}, h("th", { scope: "row" }, "Run"), h("td", {}, result.a.lineage.trainingJob || "–"), h("td", {}, result.b.lineage.trainingJob || "–"), h("td", {}))))),
    h("p", {}, result.better ? `Better on mAP50-95: ${result.better}` : "No difference in mAP50-95."),
    h("h2", { class: "h6 mt-3" }, "mAP50-95 by epoch"), curves,
    h("h2", { class: "h6 mt-3" }, "What was trained differently"), settingsDiff(result.a, result.b, runA, runB));
  await epochCurves(curves, [[result.a.name, runA], [result.b.name, runB]]);
}

// Both runs' validation mAP50-95 per epoch on one chart (a run whose epochs were not recorded is left out).
async function epochCurves(box, runs) {
  const shown = runs.filter(([, run]) => run && run.history && run.history.length);
  if (!shown.length) {
    box.replaceChildren(h("p", { class: "small text-secondary" }, "No epoch was recorded for these runs (imported models have none)."));
    return;
  }
  const Chart = await charts();
  const canvas = h("canvas", { role: "img", "aria-label": `mAP50-95 by epoch of ${shown.map(([name]) => name).join(" and ")}` });
  box.replaceChildren(h("div", { class: "chart-box small-chart" }, canvas));
  const longest = Math.max(...shown.map(([, run]) => Math.max(...run.history.map((e) => e.epoch))));
  new Chart(canvas, { type: "line",
    data: { labels: Array.from({ length: longest }, (_, i) => i + 1),
      datasets: shown.map(([name, run]) => ({ label: name, data: Array.from({ length: longest },
        (_, i) => run.history.find((e) => e.epoch === i + 1)?.mAP50_95 ?? null), pointRadius: 2, spanGaps: true })) },
    options: { animation: false, maintainAspectRatio: false, scales: { y: { beginAtZero: true }, x: { title: { display: true, text: "epoch" } } } } });
  box.dataset.curves = String(shown.length);
}

// Dataset, starting point and every hyperparameter of both runs; rows that differ first and marked.
function settingsDiff(a, b, runA, runB) {
  const flat = (model, run) => {
    const spec = run ? run.spec : {};
    return { dataset: model.lineage.dataset || spec.dataset?.uri, "base model": model.lineage.baseModel || spec.model?.baseModel,
      architecture: spec.model?.architecture, "input size": model.imgsz, ...(spec.hyperparameters || {}) };
  };
  const left = flat(a, runA), right = flat(b, runB);
  // Numbers as written in a spec: small ones (weight decay) in exponent form, never a long decimal.
  const show = (value) => value === undefined || value === null ? "–"
    : typeof value === "number" ? (value !== 0 && Math.abs(value) < 0.001 ? value.toExponential() : String(Math.round(value * 1e3) / 1e3))
      : String(value);
  const keys = [...new Set([...Object.keys(left), ...Object.keys(right)])];
  const differs = (key) => show(left[key]) !== show(right[key]);
  const ordered = [...keys.filter(differs), ...keys.filter((key) => !differs(key))];
  return stackTable(["Setting", a.name, b.name, "Compared"], ordered.map((key) =>
    [key, show(left[key]), show(right[key]), differs(key) ? h("span", { class: "badge text-bg-warning" }, "differs") : "same"]),
  { class: "table-sm small" });
}
