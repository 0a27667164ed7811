// Notifications of a project, newest first, paged; opening the page marks them seen.
import { api } from "../api.js";
import { markSeen, seen } from "../notifications.js";
import { h, setPage, when } from "../ui.js";

const PAGE = 25;

export async function render(project, rest, query) {
  const offset = Math.max(0, Number(query.get("offset")) || 0);
  const before = seen(project) || 0;
  const page = await api(`/projects/${project}/notifications?limit=${PAGE}&offset=${offset}`);
  if (page.items.length) markSeen(project, page.items[0].id);
  const link = (to, label) => h("a", { class: "btn btn-outline-secondary btn-sm", href: `#/p/${project}/notifications?offset=${to}` }, label);
  setPage("Notifications",
    h("h1", { class: "h4 mb-3" }, "Notifications"),
    page.items.length ? h("ul", { class: "list-group mb-3" }, page.items.map((n) => h("li", { class: "list-group-item" },
      h("div", { class: "d-flex justify-content-between flex-wrap gap-2" }, h("strong", {}, n.title,
        n.id > before ? h("span", { class: "badge text-bg-primary ms-2" }, "new") : null),
      h("span", { class: "small text-secondary" }, when(n.createdAt))),
      h("div", { class: "small" }, n.message),
      h("div", { class: "small text-secondary" }, `${n.kind} · ${n.subject}`))))
      : h("p", { class: "text-secondary" }, "No notifications yet: finished and failed runs and rollbacks show here."),
    h("div", { class: "d-flex gap-2 align-items-center" },
      offset > 0 ? link(Math.max(0, offset - PAGE), "Newer") : null,
      offset + PAGE < page.total ? link(offset + PAGE, "Older") : null,
      h("span", { class: "small text-secondary" }, page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "")));
}
