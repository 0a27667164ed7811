// Search over the project's runs, models, deployments and datasets (the API's /search).
import { api } from "../api.js";
import { h, setPage } from "../ui.js";

const LINKS = {
  runs: "training", epochs: "training", logs: "training", models: "models", deployments: "deployments",
  datasets: "datasets", feedback: "datasets",
};

function target(project, hit) {
  const section = LINKS[hit.collection];
  if (!section) return null;
  const doc = hit.document || {};
  const name = section === "training" ? doc.trainingJob || doc.name : doc.name || hit.id.split("/")[1];
  return section === "datasets" || section === "training" && !name || !name ? `#/p/${project}/${section}` : `#/p/${project}/${section}/${encodeURIComponent(name)}`;
}

// The API's highlight marks matches with <em>; shown as text with the marks as <mark>, never as HTML.
function highlighted(text) {
  return String(text || "").split(/(<em>.*?<\/em>)/g).filter(Boolean).map((part) =>
    (part.startsWith("<em>") ? h("mark", {}, part.slice(4, -5)) : part));
}

export async function render(project, rest, query) {
  const words = (query.get("q") || "").trim();
  const box = document.getElementById("search-words");
  if (box) box.value = words;
  if (!words) {
    setPage("Search", h("h1", { class: "h4 mb-3" }, "Search"), h("p", { class: "text-secondary" }, "Type words in the search box above."));
    return;
  }
  const hits = await api(`/search?q=${encodeURIComponent(words)}&project=${encodeURIComponent(project)}&limit=50`);
  setPage(`Search: ${words}`,
    h("h1", { class: "h4 mb-3" }, `Search: ${words}`),
    hits.length ? h("ul", { class: "list-group" }, hits.map((hit) => {
      const href = target(project, hit);
      return h("li", { class: "list-group-item" },
        h("div", {}, href ? h("a", { href }, hit.title || hit.id) : (hit.title || hit.id),
          h("span", { class: "badge text-bg-light ms-2" }, hit.collection)),
        hit.highlight ? h("div", { class: "small text-secondary" }, highlighted(hit.highlight)) : null);
    })) : h("p", { class: "text-secondary" }, `Nothing in ${project} matches “${words}”.`));
}
