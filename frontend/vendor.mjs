// Copies the browser builds the console uses out of node_modules into vendor/ (no CDN at run time),
// under content-hashed names (cached as immutable: a new build is a new name), each beside a
// gzip copy the API serves to browsers that accept it; manifest.json maps each logical name to its
// file. The Firebase compat builds (app + auth) become one file, loaded only when sign-in is on.
// The console's own modules (js/) are bundled into one file with esbuild where it is installed (a
// cold load then waits for one request, not twenty); without it the API serves the modules.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const bundles = {
  "bootstrap.css": ["bootstrap/dist/css/bootstrap.min.css"],
  "bootstrap.js": ["bootstrap/dist/js/bootstrap.bundle.min.js"],
  "chart.js": ["chart.js/dist/chart.umd.min.js"],
  "firebase.js": ["firebase/firebase-app-compat.js", "firebase/firebase-auth-compat.js"],
  "axe.js": ["axe-core/axe.min.js"], // accessibility checks of the console test; never loaded by the console
};
const testOnly = new Set(["axe.js"]); // a devDependency: skipped where only production dependencies are installed
const target = join(here, "vendor");
rmSync(target, { recursive: true, force: true });
mkdirSync(target);
const manifest = {};
for (const [name, sources] of Object.entries(bundles)) {
  if (testOnly.has(name) && !sources.every((source) => existsSync(join(here, "node_modules", source)))) continue;
  const body = Buffer.concat(sources.flatMap((source) => [readFileSync(join(here, "node_modules", source)), Buffer.from("\n")]));
  const hash = createHash("sha256").update(body).digest("hex").slice(0, 12);
  const ext = extname(name);
  const file = `${name.slice(0, -ext.length)}.${hash}${ext}`;
  writeFileSync(join(target, file), body);
  writeFileSync(join(target, `${file}.gz`), gzipSync(body, { level: 9 }));
  manifest[name] = `vendor/${file}`;
}
async function bundle() {
  let esbuild;
  try {
    esbuild = await import("esbuild");
  } catch {
    console.log("esbuild is not installed: the console's modules are served one by one");
    return;
  }
  if (!existsSync(join(here, "js", "main.js"))) return; // only the package files are here yet (an image build step)
  let built;
  try {
    built = await esbuild.build({
      entryPoints: [join(here, "js", "main.js")], bundle: true, format: "esm", minify: true, target: "es2022",
      write: false, legalComments: "none", logLevel: "error",
    });
  } catch (error) { // e.g. its platform binary left out (npm ci --omit=optional)
    console.log(`esbuild could not bundle the console (${error.message.split("\n")[0]}): its modules are served one by one`);
    return;
  }
  const body = Buffer.from(built.outputFiles[0].contents);
  const file = `console.${createHash("sha256").update(body).digest("hex").slice(0, 12)}.js`;
  writeFileSync(join(target, file), body);
  writeFileSync(join(target, `${file}.gz`), gzipSync(body, { level: 9 }));
  manifest["console.js"] = `vendor/${file}`;
}
await bundle();
writeFileSync(join(target, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
console.log(`vendored ${Object.keys(manifest).length} files into ${target}`);
