// What every console page is checked for, shared by console.mjs and review.mjs: a title, labelled
// fields, no leaked `[object …]`/undefined/NaN/long floats, no axe violation of serious or critical
// impact, no horizontal overflow on a phone; a screenshot of it.
import { readFileSync } from "node:fs";
import { join } from "node:path";

export const PHONE = { width: 390, height: 844 };
export const DESKTOP = { width: 1280, height: 900 };

// `checkPage(name)` for `page`: problems go to `problems`, each page's title to `titles` and the
// widths it was checked at to `checked`, screenshots to `artifacts`.
export function pageChecker({ page, problems, artifacts, consoleDir, titles = {}, checked = {} }) {
  const manifest = JSON.parse(readFileSync(join(consoleDir, "vendor", "manifest.json"), "utf8"));
  const axePath = join(consoleDir, manifest["axe.js"]);
  return async function checkPage(name) {
    await page.waitForFunction(() => !document.title.startsWith("Loading") && document.title.includes("VisionInApp"));
    await page.waitForLoadState("networkidle").catch(() => {});
    titles[name] = await page.title();
    await page.mouse.move(0, 0);  // a pointer resting on a toast keeps it open
    const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea")]
      .filter((el) => el.type !== "hidden" && !el.hidden && el.offsetParent !== null)
      .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
      .map((el) => el.outerHTML.slice(0, 120)));
    for (const field of unlabelled) problems.push(`${name}: form field without a label: ${field}`);
    const text = await page.evaluate(() => document.body.innerText);
    for (const [label, pattern] of [["[object", /\[object/], ["undefined", /\bundefined\b/], ["NaN", /\bNaN\b/],
      ["a float with more than 3 decimals", /\b\d+\.\d{4,}\b/]]) {
      const found = text.match(pattern);
      if (found) problems.push(`${name}: the page shows ${label}: “…${text.slice(Math.max(0, found.index - 40), found.index + 40).replace(/\s+/g, " ")}…”`);
    }
    const width = page.viewportSize().width;
    if (width <= PHONE.width) {
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      if (overflow > 1) problems.push(`${name}: at ${width} px the page is ${overflow}px wider than the screen`);
    }
    await page.addScriptTag({ path: axePath });
    const violations = await page.evaluate(async () => {
      const result = await window.axe.run(document, { resultTypes: ["violations"] });
      return result.violations.filter((v) => ["serious", "critical"].includes(v.impact))
        .map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
    });
    for (const violation of violations) problems.push(`${name} at ${width} px: axe ${violation}`);
    checked[name] = (checked[name] || []).concat(width);
    await page.screenshot({ path: join(artifacts, `${name}-${width}.png`), fullPage: true });
  };
}
