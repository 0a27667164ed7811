// Console entry: configuration, sign-in, project switcher and the hash router.
import { api } from "./api.js";
import { loadScript } from "./load.js";
import { currentUser, initAuth, isLocalMode, signIn, signOut } from "./auth.js";
import { busy, field, focus, h, setPage, spinner, toast } from "./ui.js";
import * as datasets from "./views/datasets.js";
import * as deployments from "./views/deployments.js";
import * as models from "./views/models.js";
import * as notifications from "./views/notifications.js";
import * as overview from "./views/overview.js";
import * as playground from "./views/playground.js";
import * as review from "./views/review.js";
import * as search from "./views/search.js";
import * as training from "./views/training.js";

export const state = { projects: [], project: null, role: "viewer" };
let stopView = null;

const SECTIONS = [
  ["overview", "Overview"],
  ["training", "Training"],
  ["models", "Models"],
  ["deployments", "Deployments"],
  ["playground", "Playground"],
  ["datasets", "Datasets"],
  ["review", "Review"],
  ["notifications", "Notifications"],
];

// Write buttons are only for members and admins; viewers see read-only pages.
export const canWrite = () => state.role === "member" || state.role === "admin";

function signInPage() {
  const email = h("input", { class: "form-control", type: "email", autocomplete: "username", required: true });
  const password = h("input", { class: "form-control", type: "password", autocomplete: "current-password",
    required: true });
  const submit = h("button", { class: "btn btn-primary", type: "submit" }, "Sign in");
  const form = h("form", { class: "card card-body", style: "max-width: 420px", novalidate: true },
    h("h1", { class: "h4 mb-3" }, "Sign in"), field("Email", email), field("Password", password), submit);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(submit, async () => {
      await signIn(email.value, password.value);
      await loadProjects();
      location.hash = "#/";
      route();
    });
  });
  setPage("Sign in", h("div", { class: "d-flex justify-content-center mt-4" }, form));
}

async function loadProjects() {
  const page = await api("/projects?limit=500");
  state.projects = page.items;
  const switcher = document.getElementById("project-switcher");
  switcher.replaceChildren(...state.projects.map((p) => h("option", { value: p.name }, p.displayName || p.name)));
  switcher.hidden = state.projects.length === 0;
}

function renderChrome(section) {
  const user = currentUser();
  document.getElementById("who").textContent = user ? user.email || "" : "";
  document.getElementById("sign-out").hidden = !user || isLocalMode();
  document.getElementById("sign-out").title = user && user.email ? `Signed in as ${user.email}` : "";
  const links = document.getElementById("nav-links");
  links.replaceChildren(...(state.project ? SECTIONS.map(([key, label]) =>
    h("li", { class: "nav-item" }, h("a", {
      class: `nav-link${key === section ? " active" : ""}`, href: `#/p/${state.project}/${key}`,
      "aria-current": key === section ? "page" : null,
    }, label))) : []));
  const switcher = document.getElementById("project-switcher");
  if (state.project) switcher.value = state.project;
  document.getElementById("search").hidden = !state.project;
}

export async function route() {
  if (stopView) {
    stopView();
    stopView = null;
  }
  if (!currentUser()) {
    renderChrome(null);
    signInPage();
    return;
  }
  const parts = location.hash.replace(/^#\/?/, "").split("?")[0].split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  if (parts[0] !== "p" || !parts[1]) {
    if (!state.projects.length) {
      renderChrome(null);
      setPage("No project", h("div", { class: "alert alert-info" },
        "You are not a member of any project yet. Ask a project admin to add you."));
      return;
    }
    location.hash = `#/p/${state.projects[0].name}/overview`;
    return;
  }
  const project = state.projects.find((p) => p.name === parts[1]);
  if (!project) {
    setPage("Not found", h("div", { class: "alert alert-warning" }, `Project ${parts[1]} not found.`));
    return;
  }
  state.project = project.name;
  state.role = project.role;
  const [section = "overview", ...rest] = parts.slice(2);
  renderChrome(section);
  const views = { overview, training, models, deployments, playground, datasets, review, notifications, search };
  const view = views[section];
  if (!view) {
    setPage("Not found", h("div", { class: "alert alert-warning" }, `No page ${section}.`));
    return;
  }
  setPage("Loading", spinner());
  try {
    stopView = (await view.render(state.project, rest, query)) || null;
  } catch (error) {
    setPage("Error", h("div", { class: "alert alert-danger", role: "alert" }, error.message));
  }
}

// The API inlines its /api/config answer into index.html (one round trip less on a cold load).
async function config() {
  const inline = document.getElementById("console-config");
  if (inline && inline.textContent.trim().startsWith("{")) return JSON.parse(inline.textContent);
  return (await fetch("/api/config")).json();
}

async function start() {
  try {
    await initAuth(await config());
    if (currentUser()) {
      // A project's overview asks for its data while the project list loads (one round trip less).
      const [, p, project, section = "overview"] = location.hash.split("?")[0].split("/");
      if (p === "p" && project && section === "overview") overview.prefetch(decodeURIComponent(project));
      await loadProjects();
    }
  } catch (error) {
    toast(`cannot start the console: ${error.message}`);
  }
  document.getElementById("project-switcher").addEventListener("change", (event) => {
    location.hash = `#/p/${event.target.value}/overview`;
  });
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const words = document.getElementById("search-words").value.trim();
    if (words && state.project) location.hash = `#/p/${state.project}/search?q=${encodeURIComponent(words)}`;
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    await signOut();
    state.projects = [];
    state.project = null;
    location.hash = "#/";
    route();
  });
  window.addEventListener("hashchange", () => {
    focus.onRender = true;
    route();
  });
  await route();
  // Bootstrap's script (toasts, dialogs, the phone menu) after the first page: off the critical path.
  loadScript("bootstrap.js").catch((error) => toast(error.message));
}

start();
