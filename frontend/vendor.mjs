// Copies the browser builds the console uses out of node_modules into vendor/ (no CDN at run time).
import { cpSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const files = {
  "bootstrap/dist/css/bootstrap.min.css": "bootstrap.min.css",
  "bootstrap/dist/js/bootstrap.bundle.min.js": "bootstrap.bundle.min.js",
  "chart.js/dist/chart.umd.min.js": "chart.umd.min.js",
  "firebase/firebase-app-compat.js": "firebase-app-compat.js",
  "firebase/firebase-auth-compat.js": "firebase-auth-compat.js",
};
const target = join(here, "vendor");
rmSync(target, { recursive: true, force: true });
mkdirSync(target);
for (const [source, name] of Object.entries(files)) {
  cpSync(join(here, "node_modules", source), join(target, name));
}
console.log(`vendored ${Object.keys(files).length} files into ${target}`);
