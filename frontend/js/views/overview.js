// Overview, a project's landing page: what runs, what serves, what happened, what waits.
import { api } from "../api.js";
import { badge, h, number, setPage, stackTable, when } from "../ui.js";
import { nodesText, reasonOf } from "./deployments.js";

const ACTIVE = new Set(["Pending", "Queued", "Running"]);

function card(title, link, body) {
  return h("section", { class: "col-12 col-xl-6" }, h("div", { class: "card h-100" }, h("div", { class: "card-body" },
    h("div", { class: "d-flex justify-content-between align-items-baseline mb-2" }, h("h2", { class: "h5 m-0" }, title),
      link ? h("a", { class: "small", href: link[0] }, link[1]) : null),
    body)));
}

const empty = (text) => h("p", { class: "text-secondary small m-0" }, text);

function load(project) {
  const base = `/projects/${project}`;
  return Promise.all([
    api(`${base}/training-jobs?limit=200&includeHistory=false`),
    api(`${base}/models?limit=500`),
    api(`${base}/deployments?limit=200`),
    api(`${base}/notifications?limit=5`),
    api(`${base}/feedback?status=new&limit=1`),
  ]);
}

const prefetched = new Map();

// Started before the project list is known (main.js); used once, by the next render.
export function prefetch(project) {
  const pending = load(project);
  pending.catch(() => {}); // a project the user may not read: the render says so
  prefetched.set(project, pending);
}

export async function render(project) {
  const pending = prefetched.get(project) || load(project);
  prefetched.delete(project);
  const [runs, models, deployments, notes, frames] = await pending;
  const active = runs.items.filter((r) => ACTIVE.has(r.phase));
  const lines = new Map();
  for (const m of models.items) lines.set(m.model, [...(lines.get(m.model) || []), m]);
  const p = `#/p/${project}`;

  const running = active.length ? stackTable(["Run", "Phase", "Epoch", "mAP50"], active.map((r) => [
    h("a", { href: `${p}/training/${encodeURIComponent(r.name)}` }, r.name), badge(r.phase),
    r.epoch != null ? `${r.epoch} / ${r.epochs ?? "?"}` : "not started", number(r.mAP50)]), { class: "table-sm" })
    : empty("No run in progress.");
  const lineRows = [...lines.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([line, versions]) => {
    const production = versions.find((m) => m.stage === "production");
    const best = versions.reduce((a, b) => ((b.metrics.mAP50_95 ?? -1) > (a.metrics.mAP50_95 ?? -1) ? b : a));
    return [line, production ? h("a", { href: `${p}/models/${encodeURIComponent(production.name)}` }, production.version) : "none",
      String(versions.length), h("a", { href: `${p}/models/${encodeURIComponent(best.name)}` }, `${best.version} (${number(best.metrics.mAP50_95)})`)];
  });
  const modelTable = lineRows.length ? stackTable(["Model line", "Production", "Versions", "Best mAP50-95"], lineRows, { class: "table-sm" })
    : empty("No model yet: a finished training run registers one.");
  const fleet = deployments.items.length ? stackTable(["Deployment", "Model", "Health", "Nodes", "Why"], deployments.items.map((d) => [
    h("a", { href: `${p}/deployments/${encodeURIComponent(d.name)}` }, d.name), d.model,
    badge(d.paused ? "Paused" : d.phase), nodesText(d), h("span", { class: "small" }, reasonOf(d) || "–")]), { class: "table-sm" })
    : empty("Nothing deployed yet.");
  const recent = notes.items.length ? h("ul", { class: "list-unstyled m-0" }, notes.items.map((n) => h("li", { class: "mb-2" },
    h("div", {}, h("strong", {}, n.title)), h("div", { class: "small text-secondary" }, [when(n.createdAt), n.message].filter(Boolean).join(" · ")))))
    : empty("Nothing has happened yet.");
  const waiting = frames.total
    ? h("p", { class: "m-0" }, h("span", { class: "stat", "data-testid": "frames-waiting" }, String(frames.total)),
      ` hard frame(s) from the edge wait for review: review them in the `, h("a", { href: `${p}/review` }, "review queue"), ".")
    : empty("No hard frame waits for review.");

  setPage("Overview",
    h("h1", { class: "h4 mb-3" }, "Overview"),
    h("div", { class: "row g-3" },
      card("Runs in progress", [`${p}/training`, "All runs"], running),
      card("Models by line", [`${p}/models`, "Registry"], modelTable),
      card("Deployments", [`${p}/deployments`, "All deployments"], fleet),
      card("Recent notifications", [`${p}/notifications`, "All notifications"], recent),
      card("Hard frames waiting", null, waiting)));
}
