// Drives the console in Debian's chromium with playwright-core; prints one JSON line with results.
// Env: APP_URL, AUTH_HOST (emulator host:port), EMAIL, VIEWER_EMAIL, PASSWORD, PROJECT, ARTIFACTS,
// CONSOLE_DIR, SEEN_DIR (where it notes each live step it saw, for the test's fake trainer),
// REVIEW_FRAME (a hard frame's id, for the review pages).
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import { join } from "node:path";
import { DESKTOP, PHONE, pageChecker } from "./pages.mjs";

const require = createRequire(join(process.env.CONSOLE_DIR, "package.json"));
const { chromium } = require("playwright-core");

const app = new URL(process.env.APP_URL);
const allowedHosts = new Set([app.host, process.env.AUTH_HOST, new URL(process.env.LOCAL_URL).host]);
const artifacts = process.env.ARTIFACTS;
mkdirSync(artifacts, { recursive: true });
for (const old of readdirSync(artifacts)) if (old.endsWith(".png")) rmSync(join(artifacts, old));  // this run's only
const problems = [];
const titles = {};

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: app.origin });
const page = await context.newPage();
page.setDefaultTimeout(30000);
page.on("console", (message) => {
  if (message.type() === "error") problems.push(`console error: ${message.text()}`);
});
page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
page.on("request", (request) => {
  const url = new URL(request.url());
  if (["http:", "https:"].includes(url.protocol) && !allowedHosts.has(url.host)) problems.push(`request to ${url.host}`);
});

const checked = {};
const checkPage = pageChecker({ page, problems, artifacts, consoleDir: process.env.CONSOLE_DIR, titles, checked });


const step = async (name, action) => {
  try {
    await action();
  } catch (error) {
    problems.push(`${name}: ${error.message.split("\n")[0]}`);
    await page.screenshot({ path: join(artifacts, `failed-${name}.png`), fullPage: true }).catch(() => {});
    throw error;
  }
};

const project = process.env.PROJECT;
const at = (path) => `${app.origin}/#/p/${project}/${path}`;
const toastText = () => page.evaluate(() => document.getElementById("toasts").innerText);
const expectText = async (where, pattern) => {
  const text = await page.evaluate(() => document.getElementById("main").innerText);
  if (!pattern.test(text)) problems.push(`${where}: expected ${pattern} on the page`);
};

let boxes = 0;
let coldLoad = null;
const oldRuns = process.env.OLD_RUNS.split(",");
try {
  await step("sign-in", async () => {
    await page.goto(app.href);
    await page.getByLabel("Email").fill(process.env.EMAIL);
    await page.getByLabel("Password").fill(process.env.PASSWORD);
    await checkPage("sign-in");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await expectText("overview", /night-run[\s\S]*4 \/ 20/);
    await expectText("overview", /shapes\s+v1/);
    await expectText("overview", /dock/);
    const waiting = await page.getByTestId("frames-waiting").textContent();
    if (waiting !== process.env.HARD_FRAMES) problems.push(`overview: ${waiting} hard frames waiting, not ${process.env.HARD_FRAMES}`);
  });
  await step("create-training-job", async () => {
    await page.getByRole("link", { name: "Training", exact: true }).click();
    await page.getByRole("heading", { name: "Training runs" }).waitFor();
    await page.getByRole("link", { name: "New training run" }).click();
    await page.getByTestId("capacity").waitFor();
    const gpus = await page.getByLabel("GPUs").inputValue();
    if (gpus !== "0") problems.push(`new run: ${gpus} GPU(s) by default where no node has one`);
    await page.getByRole("button", { name: "Create TrainingJob" }).click();  // empty name: an inline error
    const inline = page.locator("form [role=alert]");
    await inline.waitFor();
    if (!/Some fields are invalid: Name/.test(await inline.textContent())) problems.push(`new run: inline error says ${await inline.textContent()}`);
    await page.getByLabel("Name", { exact: true }).fill("e2e-run");
    await page.getByLabel("Model line").fill("shapes");
    await page.getByLabel("Dataset URI").fill("datasets/vision/shapes/v1");
    await page.getByLabel("epochs").fill("3");
    await page.getByLabel("imgsz").fill("320");
    const yaml = await page.getByLabel("TrainingJob YAML").textContent();
    if (!yaml.includes("kind: TrainingJob") || !yaml.includes("epochs: 3")) problems.push(`YAML preview wrong: ${yaml}`);
    await page.getByRole("button", { name: "Create TrainingJob" }).click();
    await page.getByRole("heading", { name: "e2e-run" }).waitFor();
  });
  await step("live-epochs", async () => {
    // The fake trainer sends epoch n+1 only once this page showed epoch n, and the final status last.
    const showsEpoch = (n) => page.waitForFunction((e) => document.querySelector("[data-testid=epoch]")?.textContent.startsWith(`${e} /`), n, { timeout: 60000 });
    writeFileSync(join(process.env.SEEN_DIR, "detail"), "");
    await page.getByRole("button", { name: "Suspend" }).waitFor();
    if (await page.getByRole("button", { name: "Write summary" }).count()) problems.push("a pending run offers Write summary");
    for (const n of [1, 2]) {
      await showsEpoch(n);
      writeFileSync(join(process.env.SEEN_DIR, `epoch-${n}`), "");
    }
    await showsEpoch(3);
    await page.getByRole("button", { name: "Write summary" }).waitFor();  // finished: the actions follow
    if (await page.getByRole("button", { name: "Suspend" }).count()) problems.push("a finished run offers Suspend");
    const toasts = await toastText();
    for (const run of oldRuns) if (toasts.includes(run)) problems.push(`the run page replayed an old notification: ${toasts}`);
    if (!toasts.includes("e2e-run")) problems.push(`no toast for the run that just finished: ${toasts}`);
    await page.waitForFunction(() => document.querySelector("[aria-label='Training logs']")?.innerText.includes("epoch 1 done"));
    const logs = await page.getByRole("region", { name: "Training logs" }).innerText();
    if (/\u001b|\[\d+m/.test(logs)) problems.push(`logs show terminal colour codes: ${logs}`);
    if ((await page.getByRole("region", { name: "Training logs" }).getAttribute("tabindex")) !== "0") problems.push("the log box is not keyboard-reachable");
  });
  await step("model", async () => {
    await page.getByRole("link", { name: "Models" }).click();
    await page.getByRole("heading", { name: "Model registry" }).waitFor();
    await expectText("models", /shapes\s+production: v1 \(shapes-v1\)/);
    await page.getByRole("link", { name: "e2e-run-v1" }).click();
    await page.getByRole("heading", { name: /e2e-run-v1/ }).waitFor();
  });
  await step("deployment", async () => {
    await page.getByRole("link", { name: "Roll out" }).click();
    await page.getByLabel("Name", { exact: true }).fill("e2e-canary");
    await page.getByLabel("Canary steps (% of nodes)").fill("50, 100");
    await page.getByRole("button", { name: "Start rollout" }).click();
    await page.getByRole("heading", { name: /e2e-canary/ }).waitFor();
  });
  await step("deployment-why", async () => {
    await page.goto(at("deployments/dock"));
    await page.getByRole("heading", { name: /dock/ }).waitFor();
    await page.waitForFunction(() => Number(document.querySelector("[data-testid=fleet-charts]")?.dataset.points || 0) > 0);
    await expectText("dock", /WaitingForGate[\s\S]*jetson-b has not been ready/);
    await expectText("dock", /GateWaiting/);
    await expectText("dock", /41be09aa3c[\s\S]*Superseded/);
    const cameras = page.getByRole("table", { name: "Cameras of jetson-a" });
    await cameras.waitFor();
    const cameraText = await cameras.innerText();
    if (!/streaming[\s\S]*14\.8 of 15[\s\S]*reconnecting[\s\S]*connection refused/.test(cameraText)) problems.push(`cameras: ${cameraText}`);
    await checkPage("deployment-dock-cameras");
    // The ledger: jetson-a served shapes-v1 for the first half hour, then shapes-v2 (still serving).
    await page.getByRole("heading", { name: "What each node served" }).waitFor();
    await expectText("dock ledger", /jetson-a\s+shapes-v2\s+7d9f2c1a0b\s+\S.*\s+now/);
    await expectText("dock ledger", /jetson-a\s+shapes-v1\s+7d9f2c1a0b/);
    await page.getByRole("button", { name: "Roll back" }).click();
    const dialog = page.getByRole("dialog");
    await dialog.waitFor();
    if (!(await dialog.innerText()).includes("goes back to shapes-v1")) problems.push(`rollback dialog: ${await dialog.innerText()}`);
    await dialog.getByRole("button", { name: "Roll back" }).click();
    await page.waitForFunction(() => document.getElementById("toasts").innerText.includes("rollback requested"));
    await page.unrouteAll({ behavior: "ignoreErrors" });
    await page.goto(at("deployments/yard"));
    await page.getByRole("heading", { name: /yard/ }).waitFor();
    const reason = await page.getByTestId("reason").innerText();
    if (!reason.includes("does not exist yet")) problems.push(`yard: the reason shown is “${reason}”`);
    await expectText("yard", /no nodes/);
    if (!(await page.getByRole("button", { name: "Roll back" }).isDisabled())) problems.push("yard: Roll back enabled with nothing to roll back to");
  });
  await step("model-loop", async () => {
    // The registry shows where the line's closed loop is, and a writer can evaluate it now.
    await page.goto(at("models"));
    const loop = page.getByTestId("loop-shapes-loop");
    await loop.waitFor();
    const before = await loop.innerText();
    if (!/Retrain policy shapes-loop:\s*GateFailed/.test(before) || !before.includes("dropped 0.031")) problems.push(`loop: ${before}`);
    await loop.getByRole("button", { name: "Evaluate now" }).click();
    await page.waitForFunction(() => document.getElementById("toasts").innerText.includes("shapes-loop: GateFailed: waiting: 0 of 20"));
    const after = await page.getByTestId("loop-shapes-loop").innerText();
    if (!/14 waiting for review/.test(after) || !after.includes("Last outcome: shapes-loop-r1 failed")) problems.push(`loop after: ${after}`);
  });
  await step("model-gate", async () => {
    // The quality gate of a fine-tuned version: its verdict and the held-out classes side by side
    // (the evaluation record, read through the API and checked against its sha256 there).
    await page.goto(at("models/shapes-v2"));
    await page.getByRole("region", { name: "Held-out classes, both models" }).getByRole("table").waitFor();
    await expectText("model gate", /Quality gate\s*passed/);
    await expectText("model gate", /Held-out set \(16 images\), AP50-95; baseline shapes-v1/);
    await expectText("model gate", /all \(mAP50-95\)\s+46\s+0\.430\s+0\.412\s+\+0\.018/);
    await expectText("model gate", /circle\s+10\s+0\.415\s+0\.397\s+\+0\.018/);
    // What to decide by: the candidate's PR curves (one line per class) and its confusion matrix;
    // the select shows the baseline's instead.
    await page.waitForFunction(() => document.querySelector("[data-series] canvas")?.parentElement.dataset.series === "4");
    await page.getByRole("region", { name: "Confusion matrix of shapes-v2" }).getByRole("table").waitFor();
    await expectText("model gate", /Confusion matrix of shapes-v2 on the held-out set: detections above confidence 0\.25 matched at IoU above 0\.45/);
    await expectText("model gate", /Predicted \\ true\s+circle\s+square\s+triangle\s+cross\s+background/);
    await expectText("model gate", /square\s+0\s+10\s+0\s+0\s+1\s/);
    const cell = () => page.locator('td[data-cell="circle|square"]').textContent();
    if ((await cell()) !== "1") problems.push(`model gate: circle predicted for a square ${await cell()} times, not 1`);
    await page.getByLabel("Model", { exact: true }).selectOption("baseline");
    await page.getByRole("region", { name: "Confusion matrix of shapes-v1" }).waitFor();
    if ((await cell()) !== "2") problems.push(`model gate: the baseline's circle-for-square cell is ${await cell()}, not 2`);
    if (await page.locator("[data-series]").getAttribute("data-series") !== "4") problems.push("model gate: the baseline's PR chart has not 4 lines");
  });
  await step("model-compare", async () => {
    // Two versions side by side: their runs' epoch curves overlaid, and what was trained differently.
    await page.goto(at("models/compare?a=shapes-v1&b=shapes-v2"));
    await page.getByRole("heading", { name: "What was trained differently" }).waitFor();
    await page.waitForFunction(() => document.querySelector("[data-curves]")?.dataset.curves === "2");
    await expectText("model compare", /lr0\s+0\.01\s+0\.002\s+differs/);
    await expectText("model compare", /imgsz\s+320\s+320\s+same/);
  });
  await step("playground", async () => {
    await page.getByRole("link", { name: "Playground" }).click();
    await page.getByRole("heading", { name: "Detection playground" }).waitFor();
    await page.getByLabel("Model").selectOption("e2e-run-v1");
    await page.getByRole("button", { name: "Use the sample image" }).click();
    await page.getByRole("button", { name: "Detect" }).click();
    await page.waitForFunction(() => Number(document.querySelector("canvas.detections")?.dataset.boxes || 0) > 0);
    boxes = await page.evaluate(() => Number(document.querySelector("canvas.detections").dataset.boxes));
    const drawn = await page.evaluate(() => {
      const canvas = document.querySelector("canvas.detections");
      const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      const colours = ["e6194b", "3cb44b", "4363d8", "f58231", "911eb4", "42d4f4", "f032e6", "bfef45"];
      let coloured = 0;  // pixels in the box colours: boxes were drawn over the image
      for (let i = 0; i < pixels.length; i += 4) {
        const hex = [pixels[i], pixels[i + 1], pixels[i + 2]].map((v) => v.toString(16).padStart(2, "0")).join("");
        if (colours.includes(hex)) coloured++;
      }
      return { coloured, width: canvas.getBoundingClientRect().width };
    });
    if (!drawn.coloured) problems.push("no box pixels on the canvas");
    if (drawn.width < 400) problems.push(`the playground image is drawn ${drawn.width}px wide`);
    await page.waitForFunction(() => document.getElementById("toasts").innerText.includes("detection"));
    const rows = await page.locator("main table tbody tr").count();
    const toasted = Number((await toastText()).match(/(\d+) detection/)[1]);
    if (rows !== toasted || rows !== boxes) problems.push(`playground: toast says ${toasted}, table has ${rows}, canvas ${boxes}`);
    await checkPage("playground-detected");
  });
  await step("datasets", async () => {
    await page.getByRole("link", { name: "Datasets" }).click();
    await page.getByRole("heading", { name: "Datasets", exact: true }).waitFor();
    await expectText("datasets", /v2[\s\S]*synthetic shapes, seed 2/);
    await page.waitForFunction((n) => [...document.querySelectorAll("canvas.frame-thumb")].filter((c) => Number(c.dataset.boxes) > 0).length === n,
      Number(process.env.HARD_FRAMES));
  });
  await step("search", async () => {
    await page.getByLabel("Search this project").fill("shapes");
    await page.getByLabel("Search this project").press("Enter");
    await page.getByRole("heading", { name: "Search: shapes" }).waitFor();
    await page.locator("main .list-group-item a", { hasText: "shapes v2" }).first().waitFor();
  });
  await step("download", async () => {
    // A model file saved from the console comes through the API, unchanged: it has the artifact's sha256.
    await page.goto(at("models/e2e-run-v1"));
    const button = page.getByRole("button", { name: "Download onnx" });
    const [download] = await Promise.all([page.waitForEvent("download"), button.click()]);
    const digest = createHash("sha256").update(readFileSync(await download.path())).digest("hex");
    if (digest !== process.env.E2E_RUN_SHA256) problems.push(`download: sha256 ${digest}, expected ${process.env.E2E_RUN_SHA256}`);
    if (download.suggestedFilename() !== "e2e-run-v1-onnx.onnx") problems.push(`download name: ${download.suggestedFilename()}`);
  });
  await step("notifications", async () => {
    await page.getByRole("link", { name: "Notifications" }).click();
    await page.getByRole("heading", { name: "Notifications" }).waitFor();
    await expectText("notifications", /Training run e2e-run finished/);
  });
  const tour = [
    ["overview", "overview"], ["training-list", "training"], ["training-new", "training/new"],
    ["training-detail", "training/e2e-run"], ["training-running", "training/night-run"], ["training-failed", "training/helmets-first"],
    ["model-list", "models"], ["model-detail", "models/e2e-run-v1"], ["model-gated", "models/shapes-v2"], ["model-compare", "models/compare?a=shapes-v1&b=shapes-v2"],
    ["deployment-list", "deployments"], ["deployment-new", "deployments/new"], ["deployment-detail", "deployments/e2e-canary"],
    ["deployment-yard", "deployments/yard"], ["deployment-dock", "deployments/dock"], ["playground", "playground"],
    ["datasets", "datasets"], ["review-queue", "review"], ["review-frame", `review/${process.env.REVIEW_FRAME}`],
    ["notifications", "notifications"], ["search", "search?q=shapes"],
  ];
  for (const viewport of [DESKTOP, PHONE]) {
    await step(`tour-${viewport.width}`, async () => {
      await page.setViewportSize(viewport);
      for (const [name, path] of tour) {
        await page.goto(at(path));
        await page.waitForFunction(() => !document.title.startsWith("Loading"));
        await checkPage(name);
      }
    });
  }
  await step("phone", async () => {
    await page.setViewportSize(PHONE);
    await page.goto(at("training"));
    await page.getByRole("heading", { name: "Training runs" }).waitFor();
    await page.reload();  // a fresh load: the first Tab must reach the skip link
    await page.getByRole("heading", { name: "Training runs" }).waitFor();
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => document.activeElement?.textContent?.trim());
    if (focused !== "Skip to content") problems.push(`first Tab focuses ${focused}, not the skip link`);
  });
  await step("viewer", async () => {
    await page.setViewportSize(DESKTOP);
    await page.goto(at("overview"));
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await page.evaluate(() => document.getElementById("sign-out").click());
    await page.getByLabel("Email").fill(process.env.VIEWER_EMAIL);
    await page.getByLabel("Password").fill(process.env.PASSWORD);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await page.goto(at("training"));
    await page.getByRole("heading", { name: "Training runs" }).waitFor();
    if (await page.getByRole("link", { name: "New training run" }).count()) problems.push("a viewer sees New training run");
    await page.getByRole("link", { name: "e2e-run", exact: true }).click();
    await page.getByRole("heading", { name: "e2e-run" }).waitFor();
    for (const label of ["Suspend", "Delete", "Write summary"]) {
      if (await page.getByRole("button", { name: label }).count()) problems.push(`a viewer sees ${label}`);
    }
    await checkPage("viewer-training-detail");
    await page.goto(at(`review/${process.env.REVIEW_FRAME}`));
    await page.getByRole("heading", { name: `Review frame ${process.env.REVIEW_FRAME}` }).waitFor();
    for (const label of ["Accept frame (Enter)", "Reject frame (R)", "Delete selected box"]) {
      if (await page.getByRole("button", { name: label }).count()) problems.push(`a viewer sees ${label}`);
    }
    await checkPage("viewer-review-frame");
  });
  await step("cold-load", async () => {
    // The overview loaded cold (empty cache, signed in) over Chrome's Fast 3G profile: 562.5 ms
    // latency, 1.44 Mbit/s down, 675 kbit/s up; with sign-in (Firebase) and as local mode serves it.
    const measure = async (url, name) => {
      const cold = await context.newPage();
      cold.on("console", (message) => {
        if (message.type() === "error") problems.push(`cold load ${name}: console error: ${message.text()}`);
      });
      const cdp = await context.newCDPSession(cold);
      await cdp.send("Network.enable");
      await cdp.send("Network.clearBrowserCache");
      await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 562.5, downloadThroughput: 1440000 / 8, uploadThroughput: 675000 / 8 });
      const transfers = [];
      const urls = new Map();
      cdp.on("Network.requestWillBeSent", (event) => urls.set(event.requestId, event.request.url));
      cdp.on("Network.loadingFinished", (event) => transfers.push([urls.get(event.requestId), event.encodedDataLength]));
      const started = Date.now();
      await cold.goto(url);
      await cold.getByRole("heading", { name: "Overview" }).waitFor({ timeout: 60000 });
      const ms = Date.now() - started;
      const bytes = transfers.reduce((sum, [, size]) => sum + size, 0);
      await cold.screenshot({ path: join(artifacts, `cold-overview-${name}-1280.png`) });
      await cold.close();
      return { ms, requests: transfers.length, bytes, files: transfers.map(([address, size]) => `${new URL(address).pathname} ${size}`) };
    };
    coldLoad = {
      signedIn: await measure(at("overview"), "signed-in"),
      local: await measure(`${new URL(process.env.LOCAL_URL).origin}/#/p/${project}/overview`, "local"),
    };
  });
} catch (error) {
  // recorded by step()
} finally {
  await browser.close();
}
console.log(JSON.stringify({ problems, titles, boxes, coldLoad, checked }));
process.exit(problems.length ? 1 : 0);
