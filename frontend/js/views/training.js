// Training: the runs of a project, a form that creates a TrainingJob, and a live detail page.
import { api, liveEvents } from "../api.js";
import { canWrite } from "../main.js";
import { limits, numberInput, schemas } from "../schema.js";
import { NAME_PATTERN, badge, busy, field, h, onValidSubmit, number, setPage, toast, toYaml } from "../ui.js";

export async function render(project, rest) {
  if (rest[0] === "new") return form(project);
  if (rest[0]) return detail(project, rest[0]);
  return list(project);
}

async function list(project) {
  const page = await api(`/projects/${project}/training-jobs?limit=200`);
  const rows = page.items.map((job) => h("tr", {},
    h("td", {}, h("a", { href: `#/p/${project}/training/${encodeURIComponent(job.name)}` }, job.name)),
    h("td", {}, badge(job.phase), job.inCluster ? null : h("span", { class: "ms-1 small text-secondary" }, "(deleted)")),
    h("td", {}, job.epoch != null ? `${job.epoch} / ${job.epochs ?? "?"}` : "–"),
    h("td", {}, number(job.mAP50)),
    h("td", {}, job.artifact ? h("a", { href: `#/p/${project}/models/${encodeURIComponent(job.artifact)}` }, job.artifact) : "–")));
  setPage("Training",
    h("div", { class: "d-flex justify-content-between align-items-center mb-3" },
      h("h1", { class: "h4 m-0" }, "Training runs"),
      canWrite() ? h("a", { class: "btn btn-primary", href: `#/p/${project}/training/new` }, "New training run") : null),
    rows.length ? h("div", { class: "table-responsive" }, h("table", { class: "table table-hover" },
      h("thead", {}, h("tr", {}, ["Name", "Phase", "Epoch", "mAP50", "Model"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)))
      : h("p", { class: "text-secondary" }, "No training runs yet."));
}

async function form(project) {
  const all = await schemas();
  const hyper = all.Hyperparameters.properties;
  const architectures = all.ModelSource.properties.architecture.anyOf.find((a) => a.enum)?.enum || ["yolo11n"];
  const datasetPage = await api(`/projects/${project}/datasets?limit=200`);
  const versions = datasetPage.items.flatMap((d) => d.versions.map((v) => ({ label: `${d.name} v${v.version}`, uri: v.uri })));

  const name = h("input", { class: "form-control", required: true, pattern: NAME_PATTERN, maxlength: 253,
    placeholder: "helmets-run-1" });
  const architecture = h("select", { class: "form-select" },
    architectures.map((a) => h("option", { value: a, selected: a === "yolo11n" }, a)));
  const dataset = h("input", { class: "form-control", required: true, list: "dataset-versions",
    placeholder: `datasets/${project}/helmets/v1` });
  const datalist = h("datalist", { id: "dataset-versions" }, versions.map((v) => h("option", { value: v.uri }, v.label)));
  const numbers = {};
  for (const key of ["epochs", "imgsz", "batch", "lr0", "patience"]) numbers[key] = numberInput(h, hyper[key]);
  const gpu = all.GpuResources.properties;
  const gpuCount = numberInput(h, gpu.count);
  const gpuType = h("input", { class: "form-control", maxlength: 63, placeholder: "any (e.g. NVIDIA-A100-SXM4-80GB)" });
  const selector = h("input", { class: "form-control", placeholder: "agentpool=gpu, kubernetes.azure.com/accelerator=nvidia" });
  const yaml = h("pre", { class: "yaml bg-body-tertiary p-2 border rounded", "aria-label": "TrainingJob YAML" });
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
    field("Dataset URI", dataset, "A dataset version of this project (platform admins: any folder with a data.yaml)."), datalist,
    h("div", { class: "row" }, Object.entries(numbers).map(([key, input]) =>
      h("div", { class: "col-6 col-lg-4" }, field(key, input, limits(hyper[key]))))),
    h("div", { class: "row" },
      h("div", { class: "col-6" }, field("GPUs", gpuCount, limits(gpu.count))),
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
    h("div", { class: "row g-4" },
      h("div", { class: "col-lg-6" }, formEl),
      h("div", { class: "col-lg-6" },
        h("div", { class: "d-flex justify-content-between align-items-center mb-2" }, h("h2", { class: "h6 m-0" }, "What will be applied"), copy),
        yaml)));
}

function chart(canvas, label) {
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

async function detail(project, name) {
  const job = await api(`/projects/${project}/training-jobs/${encodeURIComponent(name)}`);
  const epochs = [...job.history];
  const status = h("div", { class: "mb-3" });
  const progress = h("div", { class: "progress", role: "progressbar", "aria-label": "Epochs done" }, h("div", { class: "progress-bar" }));
  const mapCanvas = h("canvas", { "aria-label": "mAP per epoch", role: "img" });
  const lossCanvas = h("canvas", { "aria-label": "Losses per epoch", role: "img" });
  const epochText = h("span", { class: "fw-semibold", "data-testid": "epoch" });
  const logBox = h("div", { class: "log-box border rounded p-2 bg-body-tertiary" });
  const logSearch = h("input", { class: "form-control form-control-sm", type: "search", placeholder: "Search the logs" });
  const summaryBox = h("div", {});
  const actions = h("div", { class: "d-flex gap-2 flex-wrap" });

  const showStatus = (current) => {
    const done = epochs.length ? epochs[epochs.length - 1].epoch : current.epoch || 0;
    const total = current.epochs || (epochs[0] && epochs[0].epochs) || 0;
    epochText.textContent = `${done} / ${total || "?"}`;
    progress.firstChild.style.width = total ? `${Math.min(100, (100 * done) / total)}%` : "0%";
    status.replaceChildren(badge(current.phase), " ", current.message ? h("span", { class: "small" }, current.message) : "");
  };
  const mapChart = chart(mapCanvas, "Validation metrics");
  const lossChart = chart(lossCanvas, "Training losses");
  const redraw = () => {
    plot(mapChart, epochs, [["mAP50", (e) => e.mAP50], ["mAP50-95", (e) => e.mAP50_95]]);
    const names = [...new Set(epochs.flatMap((e) => Object.keys(e.losses || {})))];
    plot(lossChart, epochs, names.map((n) => [n, (e) => (e.losses || {})[n]]));
  };
  const loadLogs = async () => {
    const query = logSearch.value ? `&q=${encodeURIComponent(logSearch.value)}` : "";
    const page = await api(`/projects/${project}/training-jobs/${encodeURIComponent(name)}/logs?limit=500${query}`);
    logBox.replaceChildren(...page.items.map((l) => h("div", {}, `${l.time.slice(11, 19)} ${l.level} ${l.message}`)));
  };
  logSearch.addEventListener("input", () => loadLogs().catch((e) => toast(e.message)));

  const showSummary = (summary) => summaryBox.replaceChildren(
    h("p", { class: "small text-secondary mb-1" }, `by ${summary.generator}`),
    h("pre", { class: "small", style: "white-space: pre-wrap" }, summary.text),
    canWrite() ? acceptButton(project, name) : null);
  api(`/projects/${project}/training-jobs/${encodeURIComponent(name)}/summaries?limit=1`).then((found) =>
    (found.items.length ? showSummary(found.items[0]) : summaryBox.replaceChildren(
      h("p", { class: "text-secondary small" }, "No summary yet.")))).catch((error) => toast(error.message));

  if (canWrite() && job.inCluster) {
    const call = (label, path, method = "POST", style = "outline-secondary") => {
      const button = h("button", { class: `btn btn-${style} btn-sm`, type: "button" }, label);
      button.addEventListener("click", () => busy(button, async () => {
        if (method === "DELETE" && !confirm(`Delete TrainingJob ${name}? Its history and models stay.`)) return;
        await api(`/projects/${project}/training-jobs/${encodeURIComponent(name)}${path}`, { method });
        toast(`${label}: done`, "success");
        location.hash = method === "DELETE" ? `#/p/${project}/training` : location.hash;
      }));
      return button;
    };
    const write = h("button", { class: "btn btn-outline-primary btn-sm", type: "button" }, "Write summary");
    write.addEventListener("click", () => busy(write, async () =>
      showSummary(await api(`/projects/${project}/training-jobs/${encodeURIComponent(name)}/summary`, { method: "POST" }))));
    actions.replaceChildren(call("Suspend", "/suspend"), call("Resume", "/resume"), write, call("Delete", "", "DELETE", "outline-danger"));
  }

  showStatus(job);
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
      h("div", { class: "col-lg-5" }, h("h2", { class: "h6" }, "Summary"), summaryBox)));
  redraw();
  loadLogs().catch((e) => toast(e.message));

  return liveEvents(`/projects/${project}/events?trainingJob=${encodeURIComponent(name)}`, async (kind, data) => {
    if (kind === "epoch") {
      const index = epochs.findIndex((e) => e.epoch === data.epoch);
      if (index >= 0) epochs[index] = data; else epochs.push(data);
      epochs.sort((a, b) => a.epoch - b.epoch);
      redraw();
      showStatus({ ...job, epochs: data.epochs, phase: job.phase === "Pending" ? "Running" : job.phase });
    } else if (kind === "log") {
      logBox.append(h("div", {}, `${data.time.slice(11, 19)} ${data.level} ${data.message}`));
    } else if (kind === "notification") {
      toast(data.title, data.kind === "run-succeeded" ? "success" : "danger");
      Object.assign(job, await api(`/projects/${project}/training-jobs/${encodeURIComponent(name)}`));
      showStatus(job);
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
