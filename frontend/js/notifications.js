// Which notifications this user has seen, per project: a cursor (the newest id seen) the console
// remembers in this browser. Live streams start after it, so old notifications never come back as
// toasts; the first visit starts at the newest one.
import { api } from "./api.js";
import { currentUser } from "./auth.js";

const key = (project) => `visioninapp.seen.${(currentUser() || {}).email || "anonymous"}.${project}`;

export function seen(project) {
  const value = Number(localStorage.getItem(key(project)));
  return Number.isInteger(value) && value > 0 ? value : null;
}

export function markSeen(project, id) {
  if (Number.isInteger(id) && id > (seen(project) || 0)) localStorage.setItem(key(project), String(id));
}

// The cursor a live stream starts from: the remembered one, or (first visit) the newest id now.
export async function cursor(project) {
  let value = seen(project);
  if (value === null) {
    const newest = await api(`/projects/${project}/notifications?limit=1`);
    value = newest.items.length ? newest.items[0].id : 0;
    localStorage.setItem(key(project), String(value));
  }
  return value;
}
