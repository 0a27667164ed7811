// Drives the console in Debian's chromium with playwright-core; prints one JSON line with results.
// Env: APP_URL, AUTH_HOST (emulator host:port), EMAIL, VIEWER_EMAIL, PASSWORD, PROJECT, ARTIFACTS,
// CONSOLE_DIR, SEEN_DIR (where it notes each live step it saw, for the test's fake trainer).
import { mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.env.CONSOLE_DIR, "package.json"));
const { chromium } = require("playwright-core");

const app = new URL(process.env.APP_URL);
const allowedHosts = new Set([app.host, process.env.AUTH_HOST]);
const artifacts = process.env.ARTIFACTS;
mkdirSync(artifacts, { recursive: true });
const problems = [];
const titles = {};

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
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

async function checkPage(name) {
  await page.waitForFunction(() => !document.title.startsWith("Loading") && document.title.includes("VisionInApp"));
  titles[name] = await page.title();
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea")]
    .filter((el) => el.type !== "hidden" && !el.hidden && el.offsetParent !== null)
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
    .map((el) => el.outerHTML.slice(0, 120)));
  for (const field of unlabelled) problems.push(`${name}: form field without a label: ${field}`);
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

const step = async (name, action) => {
  try {
    await action();
  } catch (error) {
    problems.push(`${name}: ${error.message.split("\n")[0]}`);
    await page.screenshot({ path: join(artifacts, `failed-${name}.png`), fullPage: true }).catch(() => {});
    throw error;
  }
};

let boxes = 0;
try {
  await step("sign-in", async () => {
    await page.goto(app.href);
    await page.getByLabel("Email").fill(process.env.EMAIL);
    await page.getByLabel("Password").fill(process.env.PASSWORD);
    await checkPage("sign-in");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Training runs" }).waitFor();
    await checkPage("training-list");
  });
  await step("create-training-job", async () => {
    await page.getByRole("link", { name: "New training run" }).click();
    await page.getByLabel("Name", { exact: true }).fill("e2e-run");
    await page.getByLabel("Dataset URI").fill("datasets/vision/shapes/v1");
    await page.getByLabel("epochs").fill("3");
    await page.getByLabel("imgsz").fill("320");
    const yaml = await page.getByLabel("TrainingJob YAML").textContent();
    if (!yaml.includes("kind: TrainingJob") || !yaml.includes("epochs: 3")) problems.push(`YAML preview wrong: ${yaml}`);
    await checkPage("training-new");
    await page.getByRole("button", { name: "Create TrainingJob" }).click();
    await page.getByRole("heading", { name: "e2e-run" }).waitFor();
  });
  await step("live-epochs", async () => {
    // The fake trainer sends epoch n+1 only once this page showed epoch n, and the final status last.
    const showsEpoch = (n) => page.waitForFunction((e) => document.querySelector("[data-testid=epoch]")?.textContent.startsWith(`${e} /`), n, { timeout: 60000 });
    writeFileSync(join(process.env.SEEN_DIR, "detail"), "");
    for (const n of [1, 2]) {
      await showsEpoch(n);
      writeFileSync(join(process.env.SEEN_DIR, `epoch-${n}`), "");
    }
    await showsEpoch(3);
    await checkPage("training-detail");
  });
  await step("model", async () => {
    await page.getByRole("link", { name: "Models" }).click();
    await page.getByRole("link", { name: "e2e-run-v1" }).click();
    await page.getByRole("heading", { name: /e2e-run-v1/ }).waitFor();
    await checkPage("model-detail");
  });
  await step("deployment", async () => {
    await page.getByRole("link", { name: "Roll out" }).click();
    await page.getByLabel("Name", { exact: true }).fill("e2e-canary");
    await page.getByLabel("Canary steps (% of nodes)").fill("50, 100");
    await checkPage("deployment-new");
    await page.getByRole("button", { name: "Start rollout" }).click();
    await page.getByRole("heading", { name: /e2e-canary/ }).waitFor();
    await checkPage("deployment-detail");
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
      return coloured;
    });
    if (!drawn) problems.push("no box pixels on the canvas");
    await checkPage("playground");
  });
  await step("datasets", async () => {
    await page.getByRole("link", { name: "Datasets" }).click();
    await page.getByRole("heading", { name: "Datasets", exact: true }).waitFor();
    await checkPage("datasets");
  });
  await step("phone", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${app.origin}/#/p/${process.env.PROJECT}/training`);
    await page.getByRole("heading", { name: "Training runs" }).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) problems.push(`phone width: the page is ${overflow}px wider than the screen`);
    await checkPage("phone-training");
    await page.reload();  // a fresh load: the first Tab must reach the skip link
    await page.getByRole("heading", { name: "Training runs" }).waitFor();
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => document.activeElement?.textContent?.trim());
    if (focused !== "Skip to content") problems.push(`first Tab focuses ${focused}, not the skip link`);
  });
  await step("viewer", async () => {
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.evaluate(() => document.getElementById("sign-out").click());
    await page.getByLabel("Email").fill(process.env.VIEWER_EMAIL);
    await page.getByLabel("Password").fill(process.env.PASSWORD);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Training runs" }).waitFor();
    if (await page.getByRole("link", { name: "New training run" }).count()) problems.push("a viewer sees New training run");
    await page.getByRole("link", { name: "e2e-run", exact: true }).click();
    await page.getByRole("heading", { name: "e2e-run" }).waitFor();
    for (const label of ["Suspend", "Delete", "Write summary"]) {
      if (await page.getByRole("button", { name: label }).count()) problems.push(`a viewer sees ${label}`);
    }
    await checkPage("viewer-training-detail");
  });
} catch (error) {
  // recorded by step()
} finally {
  await browser.close();
}
console.log(JSON.stringify({ problems, titles, boxes }));
process.exit(problems.length ? 1 : 0);
