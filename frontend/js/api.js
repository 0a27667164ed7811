// The console's only way to the backend: /api/v1 with the signed-in user's ID token.
import { idToken } from "./auth.js";

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error;
    super(error ? error.message : `request failed (${status})`);
    this.status = status;
    this.details = (error && error.details) || [];
  }
}

async function headers(extra = {}) {
  const token = await idToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

export async function api(path, { method = "GET", body, form } = {}) {
  const init = { method, headers: await headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  if (form) init.body = form;
  const response = await fetch(`/api/v1${path}`, init);
  if (response.status === 204) return null;
  const data = (response.headers.get("content-type") || "").includes("json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Upload with progress events (fetch has none for request bodies).
export function upload(path, form, onProgress) {
  return new Promise(async (resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", `/api/v1${path}`);
    for (const [key, value] of Object.entries(await headers())) request.setRequestHeader(key, value);
    request.upload.onprogress = (event) => event.lengthComputable && onProgress(event.loaded / event.total);
    request.onload = () => {
      const data = request.responseText ? JSON.parse(request.responseText) : null;
      request.status < 300 ? resolve(data) : reject(new ApiError(request.status, data));
    };
    request.onerror = () => reject(new Error("network error during upload"));
    request.send(form);
  });
}

export async function blobUrl(path) {
  const response = await fetch(`/api/v1${path}`, { headers: await headers() });
  if (!response.ok) throw new ApiError(response.status, null);
  return URL.createObjectURL(await response.blob());
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header). Reconnects
// with the last event id, so nothing is missed; returns a function that stops it.
export function liveEvents(path, onEvent) {
  const controller = new AbortController();
  let lastId = null;
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        const extra = lastId ? { "Last-Event-ID": lastId } : {};
        const response = await fetch(`/api/v1${path}`, { headers: await headers(extra), signal: controller.signal });
        if (!response.ok) throw new ApiError(response.status, null);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const event = { event: "message", data: "" };
            for (const line of block.split("\n")) {
              const [name, ...rest] = line.split(": ");
              if (name === "event") event.event = rest.join(": ");
              else if (name === "id") lastId = rest.join(": ");
              else if (name === "data") event.data += rest.join(": ");
            }
            if (event.data) onEvent(event.event, JSON.parse(event.data));
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  };
  run();
  return () => controller.abort();
}
