// Deployments: EdgeDeployments, the fleet's per-node state, and rollout actions.
import { api } from "../api.js";
import { charts } from "../load.js";
import { canWrite } from "../main.js";
import { NAME_PATTERN, amount, badge, busy, conditionsTable, confirmAction, eventsTable, field, fill, h,
  onValidSubmit, percent, setPage, stackTable, toast, toYaml, when } from "../ui.js";

export async function render(project, rest, query) {
  if (rest[0] === "new") return form(project, query.get("model"));
  if (rest[0]) return detail(project, rest[0]);
  return list(project);
}

// Why a deployment has no node yet, or is stuck: its message, else the first condition not True.
export function reasonOf(deployment) {
  const status = deployment.status || {};
  const failing = (status.conditions || []).find((c) => c.status !== "True" && (c.message || c.reason));
  if (deployment.message) return deployment.message;
  if (failing) return `${failing.reason}: ${failing.message || failing.type}`;
  if (!deployment.desiredNodes) return "no node matches the node selector and tolerations yet";
  return null;
}

export function nodesText(deployment) {
  if (!deployment.desiredNodes) return "no nodes";
  return `${deployment.readyNodes} of ${deployment.desiredNodes} ready`;
}

async function list(project) {
  const page = await api(`/projects/${project}/deployments?limit=200`);
  const rows = page.items.map((d) => [
    h("a", { href: `#/p/${project}/deployments/${encodeURIComponent(d.name)}` }, d.name),
    d.model, badge(d.paused ? "Paused" : d.phase), nodesText(d),
    d.currentStep != null ? `${d.currentStep + 1} of ${(d.spec.strategy?.canary?.steps || []).length}` : "–",
    h("span", { class: "small" }, reasonOf(d) || "–"),
  ]);
  setPage("Deployments",
    h("div", { class: "d-flex justify-content-between align-items-center mb-3" }, h("h1", { class: "h4 m-0" }, "Edge deployments"),
      canWrite() ? h("a", { class: "btn btn-primary", href: `#/p/${project}/deployments/new` }, "New deployment") : null),
    rows.length ? stackTable(["Name", "Model", "Phase", "Nodes", "Canary step", "Why"], rows)
      : h("p", { class: "text-secondary" }, "Nothing deployed yet."));
}

async function form(project, preselected) {
  const models = await api(`/projects/${project}/models?limit=200`);
  const name = h("input", { class: "form-control", required: true, pattern: NAME_PATTERN, placeholder: "helmets-dock" });
  const model = h("select", { class: "form-select", required: true },
    models.items.map((m) => h("option", { value: m.name, selected: m.name === preselected }, `${m.name} (${m.stage})`)));
  const selector = h("input", { class: "form-control", value: "visioninapp.io/edge=true" });
  const steps = h("input", { class: "form-control", value: "10, 50, 100", pattern: "\\s*\\d+(\\s*,\\s*\\d+)*\\s*" });
  const minReady = h("input", { class: "form-control", type: "number", min: 0, max: 86400, value: 60 });
  const errorRate = h("input", { class: "form-control", type: "number", min: 0, max: 1, step: "0.01", value: 0.05 });
  const yaml = h("pre", { class: "yaml bg-body-tertiary p-2 border rounded", "aria-label": "EdgeDeployment YAML", tabindex: "0" });
  const submit = h("button", { class: "btn btn-primary", type: "submit" }, "Start rollout");
  const spec = () => ({
    modelRef: model.value,
    nodeSelector: Object.fromEntries(selector.value.split(",").map((p) => p.trim()).filter(Boolean).map((p) => p.split("=").map((s) => s.trim()))),
    strategy: {
      canary: { steps: steps.value.split(",").map((s) => Number(s.trim())).filter((n) => n > 0) },
      healthGate: { minReadySeconds: Number(minReady.value), maxErrorRate: Number(errorRate.value) },
    },
  });
  const refresh = () => {
    yaml.textContent = toYaml({ apiVersion: "visioninapp.io/v1alpha1", kind: "EdgeDeployment",
      metadata: { name: name.value || "<name>", namespace: project }, spec: spec() });
  };
  const formEl = h("form", { novalidate: true, oninput: refresh, onchange: refresh },
    field("Name", name), field("Model", model), field("Node selector", selector, "key=value pairs; Jetsons carry visioninapp.io/edge=true."),
    field("Canary steps (% of nodes)", steps, "Each wave must pass the health gate before the next."),
    h("div", { class: "row" }, h("div", { class: "col-6" }, field("Ready for (s)", minReady)), h("div", { class: "col-6" }, field("Max error rate", errorRate))),
    submit);
  onValidSubmit(formEl, submit, async () => {
    const created = await api(`/projects/${project}/deployments`, { method: "POST", body: { name: name.value, spec: spec() } });
    location.hash = `#/p/${project}/deployments/${encodeURIComponent(created.name)}`;
  });
  refresh();
  setPage("New deployment", h("h1", { class: "h4 mb-3" }, "New edge deployment"),
    h("div", { class: "row g-4" }, h("div", { class: "col-lg-6" }, formEl), h("div", { class: "col-lg-6" }, yaml)));
}

const CAMERA_STATE = { streaming: "success", connecting: "secondary", reconnecting: "warning", failed: "danger", stopped: "light" };

// Per-camera numbers of a node, when its runtime reports them (a small table under the node).
function cameraTable(node) {
  if (!Array.isArray(node.cameras) || !node.cameras.length) return null;
  return h("table", { class: "table table-sm small camera-table stack", "aria-label": `Cameras of ${node.node}` },
    h("thead", {}, h("tr", {}, ["Camera", "State", "FPS", "Frames read / processed / dropped", "p50 / p99 ms", "Reconnects", "Error"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, node.cameras.map((c) => h("tr", {},
      h("td", { "data-label": "Camera" }, c.name),
      h("td", { "data-label": "State" }, h("span", { class: `badge text-bg-${CAMERA_STATE[c.state] || "light"}` }, c.state || "–")),
      h("td", { "data-label": "FPS" }, `${amount(c.fps, 1)} of ${amount(c.targetFps, 1)}`),
      h("td", { "data-label": "Frames read / processed / dropped" }, [c.framesRead, c.framesProcessed, c.framesDropped].map((v) => amount(v, 0)).join(" / ")),
      h("td", { "data-label": "p50 / p99 ms" }, `${amount(c.p50Ms, 1)} / ${amount(c.p99Ms, 1)}`),
      h("td", { "data-label": "Reconnects" }, amount(c.reconnects, 0)),
      h("td", { "data-label": "Error", class: "text-break" }, c.error || "–")))));
}

export function fleetTable(nodes) {
  if (!nodes.length) return h("p", { class: "text-secondary" }, "No node has reported yet.");
  const headings = ["Node", "Model", "Revision", "Ready", "Heartbeat", "Requests", "Errors", "p95 ms", "Reason"];
  const last = "in its newest window (history below)";
  const body = h("tbody", {});
  for (const n of nodes) {
    body.append(h("tr", {},
      h("td", { "data-label": "Node" }, n.node), h("td", { "data-label": "Model" }, n.model || "–"),
      h("td", { "data-label": "Revision" }, n.revision ? n.revision.slice(0, 10) : "–"),
      h("td", { "data-label": "Ready" }, n.ready == null ? "–" : n.ready ? "yes" : "no"),
      h("td", { "data-label": "Heartbeat" }, when(n.lastHeartbeat)),
      h("td", { "data-label": "Requests", title: last }, amount(n.requests, 0)), h("td", { "data-label": "Errors", title: last }, amount(n.errors, 0)),
      h("td", { "data-label": "p95 ms", title: last }, amount(n.p95Ms, 1)),
      h("td", { "data-label": "Reason", class: "small text-break" }, n.reason || "–")));
    const cameras = cameraTable(n);
    if (cameras) body.append(h("tr", { class: "cameras" }, h("td", { colspan: headings.length }, cameras)));
  }
  return h("div", { class: "table-responsive" }, h("table", { class: "table table-sm stack" },
    h("caption", { class: "small" }, "Requests, errors and p95: each node's newest 15-second window; the charts below show the last hour or day."),
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))), body));
}

// A deployment that follows a model line's stage: which version holds it, and whether this
// deployment is held back from it (that version failed the health gate here).
function lineText(deployment) {
  const follows = deployment.spec.model;
  if (!follows) return null;
  const status = deployment.status || {};
  const condition = (status.conditions || []).find((c) => c.type === "FollowsLine");
  const held = condition && condition.reason === "HeldBack";
  return h("p", { class: "mb-1", "data-testid": "line" }, `Follows ${follows.line} ${follows.stage || "production"}: `,
    status.lineModel || "no version holds it yet", " ",
    held ? h("span", { class: "badge text-bg-warning", title: condition.message }, "held back") : null);
}

// The deployment ledger: per node, which model and revision it served, from when to when.
function ledgerTable(entries) {
  if (!entries.length) return h("p", { class: "text-secondary small" }, "No node has reported serving a model yet.");
  return stackTable(["Node", "Model", "Revision", "From", "Until"], entries.map((e) =>
    [e.node, e.model, e.revision.slice(0, 10), when(e.since), e.current ? "now" : when(e.until || e.lastSeen)]),
  { class: "table-sm small" });
}

function historyTable(history) {
  if (!history || !history.length) return h("p", { class: "text-secondary small" }, "No revision rolled out yet.");
  return stackTable(["Revision", "Model", "Format", "Rolled out", "Outcome"], history.map((r) =>
    [r.revision.slice(0, 10), r.model, r.format, when(r.time), badge(r.outcome)]), { class: "table-sm small" });
}

const RANGES = [[3600, "Last hour"], [86400, "Last day"]];

// Requests, p95 and error rate over time for the deployment and each node.
function fleetCharts(Chart, project, name) {
  const box = h("div", {});
  const range = h("select", { class: "form-select form-select-sm w-auto", id: "fleet-range" },
    RANGES.map(([s, label]) => h("option", { value: s }, label)));
  const canvases = { requests: "Requests per bucket", p95Ms: "p95 latency (ms, worst window)", errorRate: "Error rate" };
  const made = {};
  const grid = h("div", { class: "row g-3" }, Object.entries(canvases).map(([key, label]) => {
    const canvas = h("canvas", { role: "img", "aria-label": label });
    made[key] = new Chart(canvas, { type: "line", data: { labels: [], datasets: [] },
      options: { animation: false, maintainAspectRatio: false, spanGaps: true,
        plugins: { title: { display: true, text: label } }, scales: { y: { beginAtZero: true } } } });
    return h("div", { class: "col-lg-4" }, h("div", { class: "chart-box small-chart" }, canvas));
  }));
  const load = async () => {
    const data = await api(`/projects/${project}/deployments/${encodeURIComponent(name)}/history?seconds=${range.value}&buckets=60`);
    const labels = data.series[0].points.map((p) => new Date(p.time).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" }));
    for (const [key, chart] of Object.entries(made)) {
      chart.data.labels = labels;
      chart.data.datasets = data.series.map((s) => ({ label: s.node || "all nodes", data: s.points.map((p) => p[key]),
        borderWidth: s.node ? 1 : 2, pointRadius: 0, tension: 0.2 }));
      chart.update();
    }
    const points = data.series[0].points.filter((p) => p.requests).length;
    box.dataset.points = String(points);
    empty.hidden = points > 0;
  };
  range.addEventListener("change", () => load().catch((e) => toast(e.message)));
  const empty = h("p", { class: "small text-secondary mb-1", hidden: true }, "No requests recorded in this range: nodes report a window every 15 s once they serve.");
  fill(box, h("div", { class: "d-flex align-items-center gap-2 mb-2" }, h("label", { for: "fleet-range", class: "small" }, "Range"), range), empty, grid);
  box.dataset.testid = "fleet-charts";
  return { box, load };
}

async function detail(project, name) {
  const base = `/projects/${project}/deployments/${encodeURIComponent(name)}`;
  const Chart = await charts();
  const head = h("div", {});
  const fleet = h("div", {});
  const why = h("div", {});
  const revisions = h("div", {});
  const ledger = h("div", {});
  const history = fleetCharts(Chart, project, name);
  const draw = async () => {
    const [deployment, nodes, events, served] = await Promise.all([api(base), api(`${base}/nodes`),
      api(`${base}/events`).catch(() => null), api(`${base}/ledger?limit=100`)]);
    const status = deployment.status || {};
    const steps = deployment.spec.strategy?.canary?.steps || [];
    const action = (label, run, style, describe) => {
      const button = h("button", { class: `btn btn-${style} btn-sm`, type: "button" }, label);
      button.addEventListener("click", () => busy(button, async () => {
        if (describe && !(await confirmAction(`${label} ${name}?`, describe, label))) return;
        const answer = await run();
        toast(answer && answer.message ? answer.message : `${label}: done`, "success");
        await draw();
      }));
      return button;
    };
    const previous = status.previousModel;
    const rollback = previous
      ? action("Roll back", () => api(`${base}/rollback`, { method: "POST" }), "outline-danger",
        `Every node of ${name} goes back to ${previous} (the model before ${deployment.model}), without a canary. ${deployment.model} stays registered; roll it out again with Retry.`)
      : h("span", { class: "d-inline-block", tabindex: "0", title: "Nothing to roll back to: this deployment has had one model only" },
        h("button", { class: "btn btn-outline-danger btn-sm", type: "button", disabled: true }, "Roll back"));
    const reason = reasonOf(deployment);
    fill(head,
      h("h1", { class: "h4" }, name, " ", badge(deployment.paused ? "Paused" : deployment.phase)),
      lineText(deployment),
      h("p", { class: "mb-1" }, `Model ${deployment.model} · ${nodesText(deployment)} · canary step `,
        h("span", { "data-testid": "step" }, deployment.currentStep != null ? `${deployment.currentStep + 1} of ${steps.length} (${steps.join("%, ")}%)` : "not started")),
      reason ? h("div", { class: `alert ${deployment.phase === "Failed" || deployment.phase === "RolledBack" ? "alert-danger" : "alert-warning"} py-2`, "data-testid": "reason" }, reason) : null,
      canWrite() ? h("div", { class: "d-flex gap-2 flex-wrap mb-3" },
        action(deployment.paused ? "Resume" : "Pause", () => api(base, { method: "PATCH", body: { paused: !deployment.paused } }), "outline-secondary"),
        deployment.phase === "Progressing" ? action("Promote", () => api(`${base}/promote`, { method: "POST" }), "outline-primary",
          `Every remaining node of ${name} gets ${deployment.model} now, skipping the remaining canary steps and their health gates.`) : null,
        rollback,
        deployment.phase === "RolledBack" ? action("Retry", () => api(`${base}/retry`, { method: "POST" }), "outline-primary",
          `The rollout of ${deployment.model} starts again from the first canary step.`) : null) : null);
    fill(fleet, fleetTable(nodes));
    fill(why, h("h3", { class: "h6" }, "Conditions"), conditionsTable(status.conditions),
      h("h3", { class: "h6 mt-3" }, "Events"), events === null ? h("p", { class: "small text-secondary" }, "Events could not be read.") : eventsTable(events));
    fill(revisions, historyTable(status.history));
    fill(ledger, ledgerTable(served.items));
  };
  await draw();
  setPage(`Deployment ${name}`, head,
    h("h2", { class: "h6" }, "Fleet"), fleet,
    h("h2", { class: "h6 mt-3" }, "Fleet over time"), history.box,
    h("div", { class: "row g-3 mt-2" },
      h("div", { class: "col-lg-7" }, h("h2", { class: "h6" }, "Why: conditions and events"), why),
      h("div", { class: "col-lg-5" }, h("h2", { class: "h6" }, "Revision history"), revisions)),
    h("h2", { class: "h6 mt-3" }, "What each node served"), ledger);
  await history.load();
  let ticks = 0;
  const timer = setInterval(() => {
    draw().catch((e) => toast(e.message));
    if (++ticks % 6 === 0) history.load().catch((e) => toast(e.message));
  }, 5000);
  return () => clearInterval(timer);
}
