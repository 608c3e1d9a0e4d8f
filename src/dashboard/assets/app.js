// creditflow dashboard: plain JavaScript, no library, no network beyond this processor's own
// /api/v1 and /metrics. Every value is inserted as text (never as HTML).
"use strict";

const REFRESH_MS = 2000;
const main = document.getElementById("main");
const status = document.getElementById("status");
let timer = null;
let lastApplied = null;

function token() { return sessionStorage.getItem("creditflow-token") || ""; }

async function api(path) {
  const headers = token() ? { Authorization: "Bearer " + token() } : {};
  const response = await fetch(path, { headers });
  const text = await response.text();
  if (response.status === 401) throw { unauthorized: true };
  let body;
  try { body = JSON.parse(text); } catch (_) { body = text; }
  if (!response.ok) {
    const e = body && body.error ? body.error : { code: response.status, reason: "error", detail: text };
    throw e;
  }
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function card(title, ...content) {
  return el("section", { class: "card" }, el("h2", {}, title), ...content);
}

function cell(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function isNumber(value) { return typeof value === "number" || (typeof value === "string" && /^-?\d+(\.\d+)?$/.test(value)); }

// A table of flat objects: the given columns, or every key of the first row.
function table(rows, columns) {
  if (!rows || rows.length === 0) return el("p", { class: "muted" }, "none");
  columns = columns || Object.keys(rows[0]);
  const head = el("tr", {}, ...columns.map((c) => el("th", { class: isNumber(rows[0][c]) ? "num" : "" }, c)));
  const body = rows.map((row) => el("tr", {}, ...columns.map((c) =>
    el("td", { class: (isNumber(row[c]) ? "num " : "") + "col-" + c }, cell(row[c])))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function showError(error) {
  if (error && error.unauthorized) {
    main.replaceChildren(document.getElementById("token-form").content.cloneNode(true));
    document.getElementById("token").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem("creditflow-token", document.getElementById("token-value").value);
      route();
    });
    return;
  }
  const text = error && error.reason ? `${error.code} ${error.reason}: ${error.detail}` : String(error);
  main.replaceChildren(el("section", { class: "card wide error", id: "error" }, text));
}

// Sums of the Prometheus text's series named `name` (any labels).
function metricSum(text, name) {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) sum += Number(line.split(" ").pop());
  }
  return sum;
}

// The Prometheus text's series named `name`: each its labels and value.
function metricSeries(text, name) {
  const series = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue;
    const labels = {};
    const close = line.lastIndexOf("}");
    if (line[name.length] === "{" && close > name.length) {
      for (const m of line.slice(name.length + 1, close).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]] = m[2];
    }
    series.push({ labels, value: Number(line.split(" ").pop()) });
  }
  return series;
}

// The service's requests since the processor started, one row per endpoint asked at least
// once: how many, how many refused (by code), and the mean time in the processor.
function serviceRows(metrics) {
  const rows = new Map();
  for (const s of metricSeries(metrics, "creditflow_service_requests_total")) {
    if (!(s.value > 0)) continue;
    const endpoint = s.labels.endpoint;
    if (!rows.has(endpoint)) rows.set(endpoint, { endpoint, requests: 0, ok: 0, refused: [], mean_ms: "—" });
    const row = rows.get(endpoint);
    row.requests += s.value;
    if (s.labels.outcome === "ok") row.ok += s.value;
    else row.refused.push(`${s.labels.outcome}×${s.value}`);
  }
  const sums = Object.fromEntries(metricSeries(metrics, "creditflow_service_request_duration_seconds_sum")
    .map((s) => [s.labels.endpoint, s.value]));
  for (const s of metricSeries(metrics, "creditflow_service_request_duration_seconds_count")) {
    const row = rows.get(s.labels.endpoint);
    if (row && s.value > 0) row.mean_ms = ((sums[s.labels.endpoint] / s.value) * 1000).toFixed(3);
  }
  return [...rows.values()].map((r) => ({ ...r, refused: r.refused.join(" ") || "—" }));
}

async function overview() {
  const [totals, metrics] = await Promise.all([
    api("/api/v1/totals"),
    fetch("/metrics").then((r) => r.text()),
  ]);
  const applied = metricSum(metrics, "creditflow_messages_applied_total");
  const now = Date.now();
  const rate = lastApplied ? ((applied - lastApplied.value) * 1000) / Math.max(1, now - lastApplied.at) : null;
  lastApplied = { value: applied, at: now };
  const figure = (label, value, id) => el("div", {}, el("div", { class: "muted" }, label), el("div", { class: "figure", id }, value));
  const alerts = totals.alerts_last_hour || {};
  const alertsTotal = Object.values(alerts).reduce((a, b) => a + b, 0);
  const top = (totals.top_consumers || []).map((t) => ({ credit_type: t.credit_type, account: t.account, consumed: t.consumed }));
  main.replaceChildren(
    el("h1", {}, "Overview"),
    el("section", { class: "card wide" }, el("div", { class: "figures" },
      figure("accounts", totals.accounts, "accounts"),
      figure("events/s", rate === null ? "…" : rate.toFixed(0), "rate"),
      figure("messages applied", applied, "applied"),
      figure("consumer lag", metricSum(metrics, "creditflow_consumer_lag_messages"), "lag"),
      figure("dead letters", metricSum(metrics, "creditflow_dead_letters_total"), "dead-letters"),
      figure("alerts, last hour", alertsTotal, "alerts"),
      figure("as of input seq", totals.as_of_seq, "as-of"))),
    el("section", { class: "card wide", id: "credit-types" }, el("h2", {}, "Credit types (Σ over accounts; revenue of the open periods)"),
      table(totals.credit_types)),
    el("section", { class: "card", id: "top-consumers" }, el("h2", {}, "Top accounts by credits consumed"),
      topTable(top)),
    el("section", { class: "card", id: "alerts-by-type" }, el("h2", {}, "Alerts in the last hour"),
      table(Object.entries(alerts).map(([type, count]) => ({ type, count })))),
    el("section", { class: "card wide", id: "service" }, el("h2", {}, "Service requests since start (NATS; mean time in the processor)"),
      table(serviceRows(metrics), ["endpoint", "requests", "ok", "refused", "mean_ms"])),
  );
}

// The top consumers, each account a link to its page.
function topTable(rows) {
  const t = table(rows, ["credit_type", "account", "consumed"]);
  for (const td of t.querySelectorAll("td.col-account")) {
    const id = td.textContent;
    td.replaceChildren(el("a", { href: "#/account/" + encodeURIComponent(id) }, id));
  }
  return t;
}

// Cumulative credits of the statement's charges over event time, as an SVG line.
function consumptionChart(charges) {
  const points = charges
    .map((c) => ({ t: Date.parse(c.ts), credits: Number(c.credits) }))
    .filter((p) => !Number.isNaN(p.t))
    .sort((a, b) => a.t - b.t);
  let sum = 0;
  for (const p of points) { sum += p.credits; p.y = sum; }
  const w = 640, h = 200, pad = 36;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("id", "chart");
  svg.setAttribute("data-points", String(points.length));
  svg.setAttribute("width", "100%");
  const line = (x1, y1, x2, y2) => {
    const l = document.createElementNS(svg.namespaceURI, "line");
    Object.entries({ x1, y1, x2, y2, class: "axis" }).forEach(([k, v]) => l.setAttribute(k, v));
    svg.append(l);
  };
  const label = (x, y, text, anchor) => {
    const t = document.createElementNS(svg.namespaceURI, "text");
    Object.entries({ x, y, "text-anchor": anchor || "start" }).forEach(([k, v]) => t.setAttribute(k, v));
    t.textContent = text;
    svg.append(t);
  };
  line(pad, h - pad, w - 8, h - pad);
  line(pad, 8, pad, h - pad);
  if (points.length > 0) {
    const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1), ymax = Math.max(sum, 1e-9);
    const x = (t) => pad + ((t - t0) / (t1 - t0)) * (w - pad - 8);
    const y = (v) => h - pad - (v / ymax) * (h - pad - 8);
    const path = document.createElementNS(svg.namespaceURI, "polyline");
    path.setAttribute("class", "series");
    path.setAttribute("points", points.map((p) => `${x(p.t).toFixed(1)},${y(p.y).toFixed(1)}`).join(" "));
    svg.append(path);
    label(pad - 4, 14, String(+sum.toFixed(6)), "end");
    label(pad, h - pad + 16, new Date(t0).toISOString().slice(0, 16).replace("T", " "));
    label(w - 8, h - pad + 16, new Date(t1).toISOString().slice(0, 16).replace("T", " "), "end");
  }
  return svg;
}

async function account(id) {
  const path = "/api/v1/accounts/" + encodeURIComponent(id);
  const [balance, usage, statement] = await Promise.all([
    api(path + "/balance"), api(path + "/usage"), api(path + "/statement?limit=100"),
  ]);
  const available = Object.fromEntries((balance.available || []).map((a) => [a.credit_type, a]));
  const balances = balance.balances.map((b) => ({
    credit_type: b.credit_type,
    balance: b.balance,
    held: b.held,
    debt: b.debt,
    available: available[b.credit_type] ? available[b.credit_type].available : null,
    granted: b.ledger.granted,
    consumed: b.ledger.consumed,
    expired: b.ledger.expired,
    [`burned per ${b.runway.window}`]: b.runway.burned,
    runs_out_at: b.runway.runs_out_at ?? "not at this rate",
  }));
  const charges = statement.charges || [];
  main.replaceChildren(
    el("h1", { id: "account-id" }, balance.account),
    el("section", { class: "card wide" }, el("div", { class: "figures" },
      el("div", {}, el("div", { class: "muted" }, "plan"), el("div", { class: "figure" }, balance.plan)),
      el("div", {}, el("div", { class: "muted" }, "clock"), el("div", { class: "figure" }, balance.clock)),
      el("div", {}, el("div", { class: "muted" }, "period"), el("div", { class: "figure" }, `${balance.period_start} → ${balance.period_end}`)),
      el("div", {}, el("div", { class: "muted" }, "as of input seq"), el("div", { class: "figure", id: "as-of" }, balance.as_of_seq)))),
    el("section", { class: "card wide", id: "balances" }, el("h2", {}, "Balances"), table(balances)),
    card("Credits consumed over event time (recent charges)", consumptionChart(charges)),
    el("section", { class: "card", id: "usage" }, el("h2", {}, "Usage this period"), table(usage.meters || [])),
    el("section", { class: "card wide", id: "lines" }, el("h2", {}, "Invoice lines this period"),
      table(usage.lines || [], ["kind", "meter", "credit_type", "quantity", "credits", "money", "currency", "version", "unflushed"])),
    el("section", { class: "card wide", id: "grants" }, el("h2", {}, "Grants"),
      table(balance.grants, ["grant_id", "credit_type", "source", "status", "amount", "remaining", "held", "priority", "expires_at", "cost_basis"])),
    el("section", { class: "card", id: "holds" }, el("h2", {}, "Holds"), table(balance.holds)),
    el("section", { class: "card", id: "alerts" }, el("h2", {}, "Alerts (thresholds crossed)"),
      table(balance.alerts || [], ["credit_type", "alert", "below", "lows", "recoveries"])),
    el("section", { class: "card wide", id: "charges" }, el("h2", {}, "Recent charges"),
      table(charges.map((c) => ({ ts: c.ts, event_id: c.event_id, meter: c.meter, quantity: c.quantity, credits: c.credits,
        overage: c.overage, paid_by: (c.draws || []).map((d) => `${d.grant_id} ${d.credits}`).join(", "), reversed: c.reversed })))),
  );
}

async function route() {
  clearTimeout(timer);
  const hash = decodeURIComponent(location.hash.slice(1));
  try {
    if (hash.startsWith("/account/")) await account(hash.slice("/account/".length));
    else await overview();
    status.textContent = "updated " + new Date().toLocaleTimeString();
    document.body.setAttribute("data-loaded", "true");
  } catch (error) {
    showError(error);
    document.body.setAttribute("data-loaded", "error");
  }
  timer = setTimeout(route, REFRESH_MS);
}

document.getElementById("find").addEventListener("submit", (event) => {
  event.preventDefault();
  location.hash = "#/account/" + encodeURIComponent(document.getElementById("find-account").value.trim());
});
window.addEventListener("hashchange", route);
route();
