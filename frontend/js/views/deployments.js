// Deployments: EdgeDeployments, the fleet's per-node state, and rollout actions.
import { api } from "../api.js";
import { canWrite } from "../main.js";
import { NAME_PATTERN, badge, busy, field, h, onValidSubmit, setPage, toast, toYaml } from "../ui.js";

export async function render(project, rest, query) {
  if (rest[0] === "new") return form(project, query.get("model"));
  if (rest[0]) return detail(project, rest[0]);
  return list(project);
}

async function list(project) {
  const page = await api(`/projects/${project}/deployments?limit=200`);
  const rows = page.items.map((d) => h("tr", {},
    h("td", {}, h("a", { href: `#/p/${project}/deployments/${encodeURIComponent(d.name)}` }, d.name)),
    h("td", {}, d.model), h("td", {}, badge(d.paused ? "Paused" : d.phase)),
    h("td", {}, `${d.readyNodes} / ${d.desiredNodes}`), h("td", {}, d.currentStep ?? "–")));
  setPage("Deployments",
    h("div", { class: "d-flex justify-content-between align-items-center mb-3" }, h("h1", { class: "h4 m-0" }, "Edge deployments"),
      canWrite() ? h("a", { class: "btn btn-primary", href: `#/p/${project}/deployments/new` }, "New deployment") : null),
    rows.length ? h("div", { class: "table-responsive" }, h("table", { class: "table table-hover" },
      h("thead", {}, h("tr", {}, ["Name", "Model", "Phase", "Ready nodes", "Canary step"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows))) : h("p", { class: "text-secondary" }, "Nothing deployed yet."));
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
  const yaml = h("pre", { class: "yaml bg-body-tertiary p-2 border rounded", "aria-label": "EdgeDeployment YAML" });
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

async function detail(project, name) {
  const container = h("div", {});
  const draw = async () => {
    const [deployment, nodes] = await Promise.all([
      api(`/projects/${project}/deployments/${encodeURIComponent(name)}`),
      api(`/projects/${project}/deployments/${encodeURIComponent(name)}/nodes`),
    ]);
    const action = (label, run, style = "outline-secondary") => {
      const button = h("button", { class: `btn btn-${style} btn-sm`, type: "button" }, label);
      button.addEventListener("click", () => busy(button, async () => { await run(); toast(`${label}: requested`, "success"); await draw(); }));
      return button;
    };
    const base = `/projects/${project}/deployments/${encodeURIComponent(name)}`;
    const steps = deployment.spec.strategy?.canary?.steps || [];
    container.replaceChildren(
      h("h1", { class: "h4" }, name, " ", badge(deployment.paused ? "Paused" : deployment.phase)),
      h("p", {}, `Model ${deployment.model} · ${deployment.readyNodes}/${deployment.desiredNodes} nodes ready · canary step `,
        h("span", { "data-testid": "step" }, deployment.currentStep != null ? `${deployment.currentStep + 1} of ${steps.length} (${steps.join("%, ")}%)` : "–")),
      deployment.message ? h("div", { class: "alert alert-secondary py-2" }, deployment.message) : "",
      canWrite() ? h("div", { class: "d-flex gap-2 flex-wrap mb-3" },
        action(deployment.paused ? "Resume" : "Pause", () => api(base, { method: "PATCH", body: { paused: !deployment.paused } })),
        action("Promote", () => api(`${base}/promote`, { method: "POST" }), "outline-primary"),
        action("Roll back", () => api(`${base}/rollback`, { method: "POST" }), "outline-danger")) : "",
      h("h2", { class: "h6" }, "Fleet"),
      nodes.length ? h("div", { class: "table-responsive" }, h("table", { class: "table table-sm" },
        h("thead", {}, h("tr", {}, ["Node", "Model", "Revision", "Ready", "Heartbeat", "Requests", "p95 ms", "Reason"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, nodes.map((n) => h("tr", {},
          h("td", {}, n.node), h("td", {}, n.model || "–"), h("td", {}, n.revision || "–"),
          h("td", {}, n.ready ? "yes" : "no"), h("td", {}, n.lastHeartbeat ? new Date(n.lastHeartbeat).toLocaleString() : "–"),
          h("td", {}, n.requests ?? "–"), h("td", {}, n.p95Ms ?? "–"), h("td", { class: "small" }, n.reason || "")))))) :
        h("p", { class: "text-secondary" }, "No node has reported yet."));
  };
  await draw();
  setPage(`Deployment ${name}`, container);
  const timer = setInterval(() => draw().catch((e) => toast(e.message)), 5000);
  return () => clearInterval(timer);
}
