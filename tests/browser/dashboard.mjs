// Opens the dashboard in Debian's chromium (headless) and prints, as one JSON line, what the
// page shows: the overview's figures and tables and the account page's balances and chart.
// Usage: node dashboard.mjs <base url> <account> <screenshot dir>
import { chromium } from "playwright-core";

const [base, account, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  await page.goto(`${base}/dashboard/`);
  await page.waitForSelector("body[data-loaded=true] #accounts", { timeout: 20000 });
  const accounts = await page.textContent("#accounts");
  const creditTypes = await page.$$eval("#credit-types tbody tr", (rows) =>
    rows.map((r) => [r.querySelector(".col-credit_type").textContent, r.querySelector(".col-balance").textContent]));
  const topConsumers = await page.$$eval("#top-consumers tbody tr", (rows) =>
    rows.map((r) => [r.querySelector(".col-credit_type").textContent, r.querySelector(".col-account").textContent,
      r.querySelector(".col-consumed").textContent]));
  const alerts = await page.textContent("#alerts");
  const service = await page.$$eval("#service tbody tr", (rows) =>
    rows.map((r) => ["endpoint", "requests", "ok", "refused", "mean_ms"].map((c) => r.querySelector(".col-" + c).textContent)));
  const revenue = await page.$$eval("#credit-types tbody tr", (rows) =>
    rows.map((r) => [r.querySelector(".col-recognized").textContent, r.querySelector(".col-deferred").textContent]));
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

  await page.fill("#find-account", account);
  await page.click("#find button");
  await page.waitForFunction((id) => document.querySelector("#account-id")?.textContent === id, account, { timeout: 20000 });
  const balances = await page.$$eval("#balances tbody tr", (rows) =>
    rows.map((r) => [r.querySelector(".col-credit_type").textContent, r.querySelector(".col-balance").textContent]));
  const runways = await page.$$eval("#balances tbody tr", (rows) =>
    rows.map((r) => r.querySelector(".col-runs_out_at").textContent));
  const chartPoints = Number(await page.getAttribute("#chart", "data-points"));
  const polyline = await page.$$eval("#chart polyline", (p) => p.map((x) => x.getAttribute("points").split(" ").length));
  const grants = await page.$$eval("#grants tbody tr", (rows) => rows.length);
  const charges = await page.$$eval("#charges tbody tr", (rows) => rows.length);
  const accountAlerts = await page.$$eval("#alerts tbody tr", (rows) =>
    rows.map((r) => [r.querySelector(".col-alert").textContent, r.querySelector(".col-lows").textContent]));
  const lines = await page.$$eval("#lines tbody tr", (rows) =>
    rows.map((r) => [r.querySelector(".col-kind").textContent, r.querySelector(".col-money").textContent]));
  await page.screenshot({ path: `${shots}/account.png`, fullPage: true });
  console.log(JSON.stringify({ accounts, creditTypes, topConsumers, alerts, service, revenue, balances, runways, chartPoints, polyline, grants, charges, lines, accountAlerts, errors }));
} finally {
  await browser.close();
}
