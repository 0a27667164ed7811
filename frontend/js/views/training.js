// Training: the runs of a project, a form that creates a TrainingJob, and a live detail page.
import { api, liveEvents } from "../api.js";
import { charts } from "../load.js";
import { canWrite } from "../main.js";
import { cursor, markSeen } from "../notifications.js";
import { limits, numberInput, schemas } from "../schema.js";
import { NAME_PATTERN, amount, badge, busy, conditionsTable, confirmAction, eventsTable, field, fill, h, number,
  onValidSubmit, plain, scrollArea, setPage, stackTable, toast, toYaml, } from "../ui.js";

// What a user may do to a run depends on its phase (never "Suspend" a finished run).
const ACTIVE = ["Pending", "Queued", "Running"];
const FINISHED = ["Succeeded", "Failed"];
export const actionsFor = (phase) => ({
  suspend: ACTIVE.includes(phase),
  resume: phase === "Suspended",
  summary: FINISHED.includes(phase),
});

export async function render(project, rest) {
  if (rest[0] === "new") return form(project);
  if (rest[0]) return detail(project, rest[0]);
  return list(project);
}

async function list(project) {
  const page = await api(`/projects/${project}/training-jobs?limit=200`);
  const rows = page.items.map((job) => [
    h("a", { href: `#/p/${project}/training/${encodeURIComponent(job.name)}` }, job.name),
    [badge(job.phase), job.inCluster ? null : h("span", { class: "ms-1 small text-secondary" }, "(deleted)")],
    job.epoch != null ? `${job.epoch} / ${job.epochs ?? "?"}` : "–",
    number(job.mAP50),
    (job.spec.output || {}).model || job.name,
    job.artifact ? h("a", { href: `#/p/${project}/models/${encodeURIComponent(job.artifact)}` }, job.artifact) : "–",
  ]);
  setPage("Training",
    h("div", { class: "d-flex justify-content-between align-items-center mb-3" },
      h("h1", { class: "h4 m-0" }, "Training runs"),
      canWrite() ? h("a", { class: "btn btn-primary", href: `#/p/${project}/training/new` }, "New training run") : null),
    rows.length ? stackTable(["Name", "Phase", "Epoch", "mAP50", "Model line", "Model"], rows)
      : h("p", { class: "text-secondary" }, "No training runs yet."));
}

// Defaults a run can schedule with, from what the training cluster's nodes offer: without a
// schedulable GPU node the run trains on the CPU, with CPU-sized epochs and image size.
function capacityNote(capacity) {
  if (!capacity) return h("div", { class: "alert alert-warning small" }, "Could not read the training cluster's nodes: check GPUs against what your cluster offers.");
  const nodes = capacity.nodes.map((n) => `${n.name} (${n.schedulable ? `${n.cpu || "?"} CPU${n.gpus ? `, ${n.gpus} GPU` : ""}` : `not for trainers: ${n.taints.join(", ") || "not ready"}`})`);
  const text = capacity.maxGpus
    ? `A trainer pod can get up to ${capacity.maxGpus} GPU(s)${capacity.gpuProducts.length ? ` (${capacity.gpuProducts.join(", ")})` : ""}.`
    : "No schedulable node has a GPU: this run trains on the CPU, with defaults sized for it (more GPUs than a node offers would leave it Pending).";
  return h("div", { class: "alert alert-info small", "data-testid": "capacity" }, text, nodes.length ? h("div", { class: "mt-1" }, `Nodes: ${nodes.join("; ")}.`) : null);
}

async function form(project) {
  const all = await schemas();
  const hyper = all.Hyperparameters.properties;
  const architectures = all.ModelSource.properties.architecture.anyOf.find((a) => a.enum)?.enum || ["yolo11n"];
  const [datasetPage, modelPage, capacity] = await Promise.all([
    api(`/projects/${project}/datasets?limit=200`),
    api(`/projects/${project}/models?limit=200`),
    api(`/projects/${project}/training-capacity`).catch(() => null),
  ]);
  const lines = [...new Set(modelPage.items.map((m) => m.model))].sort();
  const versions = datasetPage.items.flatMap((d) => d.versions.map((v) => ({ label: `${d.name} v${v.version}`, uri: v.uri })));

  const name = h("input", { class: "form-control", required: true, pattern: NAME_PATTERN, maxlength: 253,
    placeholder: "helmets-run-1" });
  // Grouped by family (visioninapp/families.py, the schema's x-families), with the package each needs.
  const families = all.ModelSource.properties.architecture["x-families"] || [{ title: "YOLO", architectures }];
  const architecture = h("select", { class: "form-select" },
    families.map((f) => h("optgroup", { label: f.package ? `${f.title}, needs ${f.package}` : f.title },
      f.architectures.map((a) => h("option", { value: a, selected: a === "yolo11n" }, a)))));
  const dataset = h("input", { class: "form-control", required: true, list: "dataset-versions",
    placeholder: `datasets/${project}/helmets/v1` });
  const datalist = h("datalist", { id: "dataset-versions" }, versions.map((v) => h("option", { value: v.uri }, v.label)));
  const modelLine = h("input", { class: "form-control", pattern: "[a-z0-9]([a-z0-9\\-]*[a-z0-9])?", maxlength: 63,
    list: "model-lines", placeholder: "the run's name" });
  const lineList = h("datalist", { id: "model-lines" }, lines.map((l) => h("option", { value: l })));
  const cpuOnly = capacity !== null && capacity.maxGpus === 0;
  const cpuDefaults = { epochs: 20, imgsz: 320 };
  const numbers = {};
  for (const key of ["epochs", "imgsz", "batch", "lr0", "patience"]) {
    numbers[key] = numberInput(h, hyper[key], cpuOnly ? cpuDefaults[key] : undefined);
  }
  const gpu = all.GpuResources.properties;
  const gpuCount = numberInput(h, gpu.count, capacity ? Math.min(gpu.count.default ?? 1, capacity.maxGpus) : undefined);
  if (capacity && capacity.maxGpus >= 0) gpuCount.max = Math.max(0, capacity.maxGpus);
  const gpuType = h("input", { class: "form-control", maxlength: 63, placeholder: "any (e.g. NVIDIA-A100-SXM4-80GB)" });
  const selector = h("input", { class: "form-control", placeholder: "agentpool=gpu, kubernetes.azure.com/accelerator=nvidia" });
  const yaml = h("pre", { class: "yaml bg-body-tertiary p-2 border rounded", "aria-label": "TrainingJob YAML", tabindex: "0" });
  const submit = h("button", { class: "btn btn-primary", type: "submit" }, "Create TrainingJob");
  const copy = h("button", { class: "btn btn-outline-secondary btn-sm", type: "button" }, "Copy YAML");

  const spec = () => {
    const nodeSelector = Object.fromEntries(selector.value.split(",").map((p) => p.trim()).filter(Boolean)
      .map((p) => p.split("=").map((s) => s.trim())));
    const hyperparameters = Object.fromEntries(Object.entries(numbers).map(([k, input]) => [k, Number(input.value)]));
    return {
      model: { architecture: architecture.value },
      dataset: { uri: dataset.value.trim() },
      hyperparameters,
      resources: { gpu: { count: Number(gpuCount.value), ...(gpuType.value ? { type: gpuType.value } : {}) } },
      ...(Object.keys(nodeSelector).length ? { placement: { nodeSelector } } : {}),
      ...(modelLine.value.trim() ? { output: { model: modelLine.value.trim() } } : {}),
    };
  };
  const manifest = () => ({ apiVersion: "visioninapp.io/v1alpha1", kind: "TrainingJob",
    metadata: { name: name.value || "<name>", namespace: project }, spec: spec() });
  const refresh = () => { yaml.textContent = toYaml(manifest()); };
  copy.addEventListener("click", async () => {
    await navigator.clipboard.writeText(yaml.textContent);
    toast("YAML copied: commit it to your GitOps repository, or kubectl apply -f it", "success");
  });
  const formEl = h("form", { novalidate: true, oninput: refresh, onchange: refresh },
    field("Name", name, "Lowercase letters, digits and '-'."),
    field("Architecture", architecture),
    field("Model line", modelLine, lines.length
      ? `Runs of one line are versions of one model (existing: ${lines.join(", ")}). Empty: a new line named after the run.`
      : "Runs of one line are versions of one model. Empty: a new line named after the run."), lineList,
    field("Dataset URI", dataset, "A dataset version of this project (platform admins: any folder with a data.yaml)."), datalist,
    h("div", { class: "row" }, Object.entries(numbers).map(([key, input]) =>
      h("div", { class: "col-6 col-lg-4" }, field(key, input, limits(hyper[key]))))),
    h("div", { class: "row" },
      h("div", { class: "col-6" }, field("GPUs", gpuCount, capacity ? (capacity.maxGpus ? `0 to ${capacity.maxGpus} in this cluster` : "0: no node offers a GPU to trainers") : limits(gpu.count))),
      h("div", { class: "col-6" }, field("GPU type", gpuType))),
    field("Node selector", selector, "key=value pairs, comma separated (e.g. an AKS GPU node pool)."),
    submit);
  onValidSubmit(formEl, submit, async () => {
    const created = await api(`/projects/${project}/training-jobs`, { method: "POST", body: { name: name.value, spec: spec() } });
    toast(`TrainingJob ${created.name} created`, "success");
    location.hash = `#/p/${project}/training/${encodeURIComponent(created.name)}`;
  });
  refresh();
  setPage("New training run",
    h("h1", { class: "h4 mb-3" }, "New training run"),
    capacityNote(capacity),
    h("div", { class: "row g-4" },
      h("div", { class: "col-lg-6" }, formEl),
      h("div", { class: "col-lg-6" },
        h("div", { class: "d-flex justify-content-between align-items-center mb-2" }, h("h2", { class: "h6 m-0" }, "What will be applied"), copy),
        yaml)));
}

function chart(Chart, canvas, label) {
  return new Chart(canvas, {
    type: "line",
    data: { labels: [], datasets: [] },
    options: { animation: false, maintainAspectRatio: false, plugins: { title: { display: true, text: label } },
      scales: { x: { title: { display: true, text: "epoch" } } } },
  });
}

function plot(target, epochs, series) {
  target.data.labels = epochs.map((e) => e.epoch);
  target.data.datasets = series.map(([label, pick]) => ({ label, data: epochs.map(pick), tension: 0.2 }));
  target.update();
}

const logKey = (line) => `${Date.parse(line.time)}|${line.message}`;
const logText = (line) => `${line.time.slice(11, 19)} ${line.level} ${plain(line.message)}`;

// A setting as written in a manifest, never a long float: 0.0005 reads 5e-4.
const setting = (v) => (v !== 0 && Math.abs(v) < 0.001 ? v.toExponential().replace("e-", "e-") : amount(v, 3));

function hyperparameters(spec) {
  const hyper = spec.hyperparameters || {};
  const rows = [
    ["Model", spec.model?.architecture || (spec.model?.baseModel ? `fine-tune ${spec.model.baseModel}` : "–")],
    ["Model line", spec.output?.model || "(the run's name)"],
    ["Dataset", spec.dataset?.uri || "–"],
    ["GPUs", spec.resources?.gpu?.count ?? "default"],
    ...Object.entries(hyper).map(([k, v]) => [k, typeof v === "number" ? setting(v) : String(v)]),
  ];
  return h("dl", { class: "row row-cols-2 small g-1 settings" }, rows.map(([k, v]) =>
    h("div", { class: "col-12 col-sm-6 d-flex justify-content-between gap-2 border-bottom" },
      h("dt", { class: "fw-normal text-secondary" }, k), h("dd", { class: "mb-0 text-break text-end" }, v))));
}

async function detail(project, name) {
  const base = `/projects/${project}/training-jobs/${encodeURIComponent(name)}`;
  const [job, Chart, since] = await Promise.all([api(base), charts(), cursor(project)]);
  const epochs = [...job.history];
  const status = h("div", { class: "mb-3" });
  const progress = h("div", { class: "progress", role: "progressbar", "aria-label": "Epochs done" }, h("div", { class: "progress-bar" }));
  const mapCanvas = h("canvas", { "aria-label": "mAP per epoch", role: "img" });
  const lossCanvas = h("canvas", { "aria-label": "Losses per epoch", role: "img" });
  const epochText = h("span", { class: "fw-semibold", "data-testid": "epoch" });
  const logBox = scrollArea("Training logs", { class: "log-box border rounded p-2 bg-body-tertiary" });
  const logSearch = h("input", { class: "form-control form-control-sm", type: "search", placeholder: "Search the logs" });
  const summaryBox = h("div", {});
  const actions = h("div", { class: "d-flex gap-2 flex-wrap" });
  const why = h("div", {});
  const shownLogs = new Set();

  const showWhy = async () => {
    const events = job.inCluster ? await api(`${base}/events`).catch(() => null) : [];
    fill(why, h("h3", { class: "h6" }, "Conditions"), conditionsTable(job.status.conditions),
      h("h3", { class: "h6 mt-3" }, "Events"), events === null ? h("p", { class: "small text-secondary" }, "Events could not be read.") : eventsTable(events));
  };
  const showActions = () => {
    if (!canWrite() || !job.inCluster) return fill(actions);
    const allowed = actionsFor(job.phase);
    const call = (label, path, method = "POST", style = "outline-secondary") => {
      const button = h("button", { class: `btn btn-${style} btn-sm`, type: "button" }, label);
      button.addEventListener("click", () => busy(button, async () => {
        if (method === "DELETE" && !(await confirmAction(`Delete run ${name}?`,
          `The TrainingJob ${name} and its Kubernetes Job are deleted; a running attempt stops. Its epochs, logs and registered models stay.`,
          "Delete run"))) return;
        await api(`${base}${path}`, { method });
        if (method === "DELETE") {
          location.hash = `#/p/${project}/training`;
          return;
        }
        Object.assign(job, await api(base));
        showStatus(job);
        showActions();
        toast(`${label}: ${job.name} is ${job.phase}`, "success");
      }));
      return button;
    };
    const write = h("button", { class: "btn btn-outline-primary btn-sm", type: "button" }, "Write summary");
    write.addEventListener("click", () => busy(write, async () => showSummary(await api(`${base}/summary`, { method: "POST" }))));
    fill(actions, allowed.suspend ? call("Suspend", "/suspend") : null, allowed.resume ? call("Resume", "/resume") : null,
      allowed.summary ? write : null, call("Delete", "", "DELETE", "outline-danger"));
  };
  const showStatus = (current) => {
    const done = epochs.length ? epochs[epochs.length - 1].epoch : current.epoch || 0;
    const total = current.epochs || (epochs[0] && epochs[0].epochs) || 0;
    epochText.textContent = `${done} / ${total || "?"}`;
    progress.firstChild.style.width = total ? `${Math.min(100, (100 * done) / total)}%` : "0%";
    fill(status, badge(current.phase), " ", current.message ? h("span", { class: "small" }, current.message) : "");
  };
  const mapChart = chart(Chart, mapCanvas, "Validation metrics");
  const lossChart = chart(Chart, lossCanvas, "Training losses");
  const redraw = () => {
    plot(mapChart, epochs, [["mAP50", (e) => e.mAP50], ["mAP50-95", (e) => e.mAP50_95]]);
    const names = [...new Set(epochs.flatMap((e) => Object.keys(e.losses || {})))];
    plot(lossChart, epochs, names.map((n) => [n, (e) => (e.losses || {})[n]]));
  };
  const loadLogs = async () => {
    const query = logSearch.value ? `&q=${encodeURIComponent(logSearch.value)}` : "";
    const page = await api(`${base}/logs?limit=500${query}`);
    shownLogs.clear();
    fill(logBox, page.items.map((l) => {
      shownLogs.add(logKey(l));
      return h("div", {}, logText(l));
    }));
    if (!page.items.length) fill(logBox, h("span", { class: "fst-italic", "data-empty": "" }, logSearch.value ? "No line matches." : "No log lines yet."));
  };
  logSearch.addEventListener("input", () => loadLogs().catch((e) => toast(e.message)));

  const showSummary = (summary) => fill(summaryBox,
    h("p", { class: "small text-secondary mb-1" }, `by ${summary.generator}`),
    h("pre", { class: "small", style: "white-space: pre-wrap" }, summary.text),
    canWrite() ? acceptButton(project, name) : null);
  api(`${base}/summaries?limit=1`).then((found) =>
    (found.items.length ? showSummary(found.items[0]) : fill(summaryBox,
      h("p", { class: "text-secondary small" }, actionsFor(job.phase).summary ? "No summary yet." : "A summary can be written once the run finishes.")))).catch((error) => toast(error.message));

  showStatus(job);
  showActions();
  setPage(`Run ${name}`,
    h("div", { class: "d-flex justify-content-between align-items-start flex-wrap gap-2 mb-2" },
      h("h1", { class: "h4" }, name), actions),
    status,
    h("p", {}, "Epoch ", epochText, job.artifact ? [" · model ", h("a", { href: `#/p/${project}/models/${encodeURIComponent(job.artifact)}` }, job.artifact)] : null),
    progress,
    h("div", { class: "row g-3 mt-1" },
      h("div", { class: "col-lg-6" }, h("div", { class: "chart-box" }, mapCanvas)),
      h("div", { class: "col-lg-6" }, h("div", { class: "chart-box" }, lossCanvas))),
    h("div", { class: "row g-3 mt-2" },
      h("div", { class: "col-lg-7" }, h("h2", { class: "h6" }, "Logs"), h("label", { class: "visually-hidden", for: "log-search" }, "Search the logs"),
        Object.assign(logSearch, { id: "log-search" }), h("div", { class: "mt-2" }, logBox)),
      h("div", { class: "col-lg-5" }, h("h2", { class: "h6" }, "Summary"), summaryBox,
        h("h2", { class: "h6 mt-3" }, "Settings"), hyperparameters(job.spec))),
    h("h2", { class: "h6 mt-3" }, "Why: conditions and events"), why);
  redraw();
  loadLogs().catch((e) => toast(e.message));
  showWhy().catch((e) => toast(e.message));

  // The stream starts after the notifications this user has seen (old ones are not replayed) and
  // after every edge window (this page shows none): epochs and log lines of this run from the start.
  const after = `epoch-0.log-0.notification-${since}.edge-999999999999999999`;
  return liveEvents(`/projects/${project}/events?trainingJob=${encodeURIComponent(name)}&after=${after}`, async (kind, data) => {
    if (kind === "epoch") {
      const index = epochs.findIndex((e) => e.epoch === data.epoch);
      if (index >= 0) epochs[index] = data; else epochs.push(data);
      epochs.sort((a, b) => a.epoch - b.epoch);
      redraw();
      showStatus({ ...job, epochs: data.epochs, phase: job.phase === "Pending" ? "Running" : job.phase });
    } else if (kind === "log") {
      const key = logKey(data);
      if (logSearch.value || shownLogs.has(key)) return;
      shownLogs.add(key);
      logBox.querySelector("[data-empty]")?.remove();
      logBox.append(h("div", {}, logText(data)));
    } else if (kind === "notification") {
      markSeen(project, data.id);
      toast(data.title, data.kind === "run-succeeded" ? "success" : "danger");
      Object.assign(job, await api(base));
      showStatus(job);
      showActions();
      showWhy().catch(() => {});
    }
  });
}

function acceptButton(project, name) {
  const next = h("input", { class: "form-control form-control-sm", required: true, placeholder: `${name}-next`,
    pattern: NAME_PATTERN, "aria-label": "Name of the next run" });
  const start = h("button", { class: "btn btn-sm btn-primary", type: "button" }, "Start the proposed run");
  start.addEventListener("click", () => busy(start, async () => {
    const created = await api(`/projects/${project}/training-jobs/${encodeURIComponent(name)}/summary/accept`,
      { method: "POST", body: { name: next.value || `${name}-next` } });
    location.hash = `#/p/${project}/training/${encodeURIComponent(created.name)}`;
  }));
  return h("div", { class: "input-group mt-2" }, next, start);
}
