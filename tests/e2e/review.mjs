// Reviews a hard frame in the console with Debian's chromium (playwright-core): moves a box with
// the mouse, changes its class with a number key, draws a new box, accepts with Enter; checks the
// pages (axe, labels, overflow at 390 px) and prints one JSON line with what the history showed.
// Env: APP_URL, AUTH_HOST, EMAIL, PASSWORD, PROJECT, FRAME, ARTIFACTS, CONSOLE_DIR.
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { DESKTOP, PHONE, pageChecker } from "./pages.mjs";

const require = createRequire(join(process.env.CONSOLE_DIR, "package.json"));
const { chromium } = require("playwright-core");

const app = new URL(process.env.APP_URL);
const artifacts = process.env.ARTIFACTS;
mkdirSync(artifacts, { recursive: true });
const problems = [];

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
});
const page = await (await browser.newContext({ viewport: DESKTOP })).newPage();
page.setDefaultTimeout(30000);
page.on("console", (message) => message.type() === "error" && problems.push(`console error: ${message.text()}`));
page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
const checkPage = pageChecker({ page, problems, artifacts, consoleDir: process.env.CONSOLE_DIR });


const historyActions = () => page.evaluate(() =>
  [...document.querySelectorAll("[data-testid=review-history] [data-action]")].map((li) => li.dataset.action).reverse());
const waitForAction = (action) => page.waitForFunction((a) =>
  !!document.querySelector(`[data-testid=review-history] [data-action="${a}"]`), action);
const boxRect = (id) => page.locator(`[data-label="${id}"] .body`).boundingBox();

let history = [];
let historyText = "";
let step = "sign-in";
try {
  await page.goto(app.href);
  await page.getByLabel("Email").fill(process.env.EMAIL);
  await page.getByLabel("Password").fill(process.env.PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor();

  step = "queue";
  await page.getByRole("link", { name: "Review", exact: true }).click();
  await page.getByRole("heading", { name: "Review queue" }).waitFor();
  await checkPage("review-queue");
  await page.setViewportSize(PHONE);
  await checkPage("review-queue");
  await page.setViewportSize(DESKTOP);
  await page.getByRole("link", { name: `Frame ${process.env.FRAME}`, exact: true }).click();
  await page.getByRole("heading", { name: `Review frame ${process.env.FRAME}` }).waitFor();
  await page.locator('[data-label="b2"]').waitFor();

  step = "move";  // drag the smaller box (on top of the larger one) by its middle
  const before = await boxRect("b2");
  const start = [before.x + before.width / 2, before.y + before.height / 2];
  await page.mouse.move(...start);
  await page.mouse.down();
  await page.mouse.move(start[0] + 60, start[1] + 40, { steps: 8 });
  await page.mouse.up();
  await waitForAction("move");

  step = "class";  // the dragged box has the focus: key 3 makes it the third class
  const focused = await page.evaluate(() => document.activeElement?.dataset?.label);
  if (focused !== "b2") problems.push(`after the drag the focus is on ${focused}, not on box b2`);
  await page.keyboard.press("3");
  await waitForAction("relabel");

  step = "draw";  // on an empty area, bottom right of the image
  const canvas = await page.getByTestId("review-canvas").boundingBox();
  await page.mouse.move(canvas.x + canvas.width * 0.7, canvas.y + canvas.height * 0.7);
  await page.mouse.down();
  await page.mouse.move(canvas.x + canvas.width * 0.92, canvas.y + canvas.height * 0.9, { steps: 8 });
  await page.mouse.up();
  await waitForAction("add");
  await page.locator('[data-label="b3"]').waitFor();
  await checkPage("review-frame");
  await page.setViewportSize(PHONE);
  await checkPage("review-frame");
  await page.setViewportSize(DESKTOP);

  step = "keyboard";  // Tab goes from box to box; the focused box is the selected one
  await page.locator('[data-label="b3"]').focus();
  const order = [];
  for (let i = 0; i < 3; i++) {
    order.push(await page.evaluate(() => document.activeElement?.dataset?.label || document.activeElement?.tagName));
    await page.keyboard.press("Shift+Tab");
  }
  if (order.join(",") !== "b3,b2,b1") problems.push(`Shift+Tab went through ${order.join(", ")}, not b3, b2, b1`);

  step = "accept";
  await page.locator('[data-label="b3"]').focus();
  await page.keyboard.press("Enter");
  await waitForAction("accept");
  await page.waitForFunction(() => document.querySelector("[data-testid=review-status]").textContent.includes("reviewed by"));
  history = await historyActions();
  historyText = await page.getByTestId("review-history").innerText();
  await checkPage("review-accepted");
} catch (error) {
  problems.push(`${step}: ${error.message.split("\n")[0]}`);
  await page.screenshot({ path: join(artifacts, `failed-review-${step}.png`), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify({ problems, history, historyText }));
