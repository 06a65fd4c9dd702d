// ratebudget dashboard: polls the JSON API of the server that sent this page
// (and nothing else) about once a second and draws what it reads.
"use strict";

const EVERY_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function shape(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// an amount as the API gives it (USD: an exact decimal string)
function amount(axis, value) {
  if (value === null || value === undefined) return "—";
  if (axis === "usd") return "$" + value;
  const n = Number(value);
  return Number.isInteger(n) ? n.toLocaleString("en-US") : String(value);
}

// "2026-12-07T00:00:00+00:00" -> "2026-12-07 00:00 +00:00"
function when(iso) {
  if (!iso) return "—";
  const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)(?::[\d.]+)?(.*)$/.exec(iso);
  return m ? `${m[1]} ${m[2]}${m[3] ? " " + m[3].replace("Z", "UTC") : ""}` : iso;
}

// a time of day from an ISO time: "2026-12-07T00:00:00+01:00" -> "00:00 +01:00"
function clock(iso) {
  return when(iso).slice(11);
}

// an estimate: cents are enough (the exact value is in data-value)
function approx(axis, value) {
  if (axis !== "usd" || value === null || value === undefined) return amount(axis, value);
  const n = Number(value);
  return "$" + (n >= 1 ? n.toFixed(2) : n.toPrecision(3));
}

function share(part, whole) {
  const p = Number(part), w = Number(whole);
  if (!(w > 0) || !(p > 0)) return 0;
  return Math.min(100, (100 * p) / w);
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// -- the scope tree -------------------------------------------------------------

function field(name, axis, value) {
  return el("b", { "data-field": name, "data-value": value ?? "" }, amount(axis, value));
}

function limitRow(scope, limit, index) {
  const cap = limit.kind === "cap";
  const per = limit.per ? ` / ${limit.per}` : cap ? " (lifetime)" : "";
  const full = cap ? limit.limit : limit.burst;
  const what = el("span", { class: "what" }, `${limit.axis} ${limit.kind}${per}`);
  if (limit.soft) what.append(el("span", { class: "soft" }, " (soft)"));
  const bar = el("div", { class: "bar", title: `${limit.axis}: used, reserved, remaining` });
  const used = el("span", { class: "used" });
  used.style.width = share(limit.used, full) + "%";
  const reserved = el("span", { class: "reserved" });
  reserved.style.width = share(limit.reserved, full) + "%";
  bar.append(used, reserved);
  const numbers = el(
    "div", { class: "numbers" },
    field("used", limit.axis, limit.used), " used · ",
    field("reserved", limit.axis, limit.reserved), " reserved · ",
    field("remaining", limit.axis, limit.remaining), " left of ",
    field("limit", limit.axis, full),
  );
  const row = el(
    "div",
    { class: "limit", "data-scope": scope.name, "data-kind": limit.kind,
      "data-axis": limit.axis, "data-index": String(index) },
    what, bar, numbers,
  );
  if (cap && limit.resets_at) {
    row.append(el("div", { class: "numbers" }, "resets ",
      el("span", { "data-field": "resets_at" }, when(limit.resets_at))));
  }
  if (cap && limit.forecast) row.append(forecastLine(limit));
  return row;
}

function forecastLine(limit) {
  const f = limit.forecast;
  const line = el("div", { class: "forecast", "data-field": "forecast" });
  if (f.expected === null) {
    line.append("no forecast: " + f.reason);
    return line;
  }
  const expected = el("b", { "data-field": "expected", "data-value": f.expected },
    approx(limit.axis, f.expected));
  line.append("forecast ", expected,
    ` (${approx(limit.axis, f.low)} – ${approx(limit.axis, f.high)}) by the period's end`);
  if (f.exhausts_at) {
    line.append("; reaches the cap ",
      el("span", { "data-field": "exhausts_at" }, when(f.exhausts_at)));
  }
  return line;
}

function drawScopes(doc) {
  const box = $("scopes");
  const nodes = doc.scopes.map((scope) => {
    const title = el("h3", {}, scope.name + (scope.per_key ? " (per key)" : ""));
    if (scope.owner) title.append(el("span", { class: "owner" }, " — " + scope.owner));
    const node = el("div", { class: "scope", "data-scope": scope.name }, title);
    node.style.marginLeft = 1.2 * scope.depth + "em";
    if (scope.error) node.append(el("p", { class: "error" }, scope.error));
    scope.limits.forEach((limit, i) => node.append(limitRow(scope, limit, i)));
    return node;
  });
  if (!nodes.length) nodes.push(el("p", { class: "note" }, "no limiter on this store yet"));
  box.replaceChildren(...nodes);
}

// -- burn charts ------------------------------------------------------------------

const W = 560, H = 210, L = 64, R = 12, T = 12, B = 26;

function chart(c) {
  const f = c.forecast && c.forecast.expected !== null ? c.forecast : null;
  const values = [c.limit, ...c.points.map((p) => p[1])];
  if (f) values.push(f.high, f.expected);
  const top = Math.max(...values.map(Number), 1e-9) * 1.08;
  const x = (ms) => L + ((W - L - R) * (ms - c.start)) / (c.end - c.start);
  const y = (v) => H - B - ((H - T - B) * Number(v)) / top;
  const svg = shape("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  svg.append(
    shape("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    shape("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    shape("text", { x: L - 4, y: H - B, "text-anchor": "end" }, "$0"),
    shape("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, "$" + top.toPrecision(3)),
    shape("text", { x: L, y: H - 8 }, clock(c.start_at)),
    shape("text", { x: W - R, y: H - 8, "text-anchor": "end" }, clock(c.end_at)),
  );
  const now = Math.min(c.now, c.end);
  const current = Number(c.used) + Number(c.reserved);
  if (f) {
    svg.append(
      shape("polygon", { class: "band",
        points: `${x(now)},${y(current)} ${x(c.end)},${y(f.low)} ${x(c.end)},${y(f.high)}` }),
      shape("line", { class: "expected", x1: x(now), y1: y(current), x2: x(c.end), y2: y(f.expected) }),
    );
    if (f.exhausts_at) {
      svg.append(shape("circle", { class: "exhausts", cx: x(f.exhausts_at), cy: y(c.limit), r: 4 }));
    }
  }
  svg.append(
    shape("line", { class: "cap", x1: L, y1: y(c.limit), x2: W - R, y2: y(c.limit) }),
    shape("text", { x: L + 4, y: y(c.limit) - 4 },
      `${c.soft ? "soft " : ""}cap $${c.limit}`),
    shape("line", { class: "now", x1: x(now), y1: T, x2: x(now), y2: H - B }),
  );
  if (c.points.length) {
    const pts = c.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(shape("polyline", { class: "spend", points: pts }));
  }
  return svg;
}

function drawBurn(doc) {
  const figures = doc.charts.map((c) => {
    const spent = c.points.length ? c.points[c.points.length - 1][1] : null;
    const caption = el("figcaption", {}, `${c.scope}: usd cap / ${c.per} (${c.period}) — spent `,
      el("span", { "data-field": "spent", "data-value": spent ?? "" }, amount("usd", spent)),
      ` of $${c.limit}`);
    const fig = el("figure", { class: "burn", "data-scope": c.scope, "data-index": String(c.index) },
      caption, chart(c));
    if (c.reason) fig.append(el("p", { class: "note" }, c.reason));
    else if (c.forecast && c.forecast.reason) fig.append(el("p", { class: "note" }, "no forecast: " + c.forecast.reason));
    return fig;
  });
  if (!figures.length) figures.push(el("p", { class: "note" }, "no USD cap with a period"));
  $("burn").replaceChildren(...figures);
}

// -- top spenders ---------------------------------------------------------------

function spenderRow(key, row, cls) {
  const name = key === null ? "total" : row[key] ?? "(none)";
  return el("tr", { class: cls, "data-group": name },
    el("td", {}, name),
    el("td", { "data-field": "requests" }, amount("requests", row.requests)),
    el("td", { "data-field": "tokens" }, amount("tokens", row.tokens)),
    el("td", { "data-field": "usd", "data-value": row.usd ?? "" }, amount("usd", row.usd)),
    el("td", { "data-field": "usd_per_request" }, amount("usd", row.usd_per_request)));
}

function drawSpenders(doc) {
  const key = doc.by ? doc.by[0] : $("by").value;
  $("group-key").textContent = key;
  const body = $("spenders").tBodies[0];
  body.replaceChildren(...doc.rows.slice(0, 20).map((r) => spenderRow(key, r, "row")));
  if (!doc.rows.length) {
    body.append(el("tr", {}, el("td", { colSpan: 5, class: "note" },
      doc.total === null ? "no ledger: give --ledger URL" : "nothing spent yet")));
  }
  $("spenders").tFoot.replaceChildren(...(doc.total ? [spenderRow(null, doc.total, "total")] : []));
}

// -- the loop ----------------------------------------------------------------------

async function refresh() {
  const by = encodeURIComponent($("by").value);
  const period = encodeURIComponent($("period").value);
  const [status, burn, report, alerts] = await Promise.all([
    getJSON("/api/status"),
    getJSON("/api/burn"),
    getJSON(`/api/report?by=${by}&period=${period}`),
    getJSON("/api/alerts"),
  ]);
  $("store").textContent = status.store ?? "—";
  $("ledger").textContent = status.ledger ?? "none";
  drawScopes(status);
  drawBurn(burn);
  drawSpenders(report);
  drawAlerts(alerts);
  $("updated").textContent = "updated " + when(status.at);
}

async function loop() {
  try {
    await refresh();
    $("live").textContent = "live";
    $("live").dataset.state = "live";
  } catch (e) {
    $("live").textContent = "error: " + e.message;
    $("live").dataset.state = "error";
  }
  document.body.dataset.rounds = String(Number(document.body.dataset.rounds) + 1);
  setTimeout(loop, EVERY_MS);
}

// -- alerts and refusals ------------------------------------------------------------

function drawAlerts(doc) {
  const rows = doc.events.map((e) => {
    const what = e.kind === "refused" ? `refused (${e.reason ?? "?"})` : `alert: ${e.kind}`;
    const times = e.count > 1 ? ` (×${e.count})` : "";
    return el("tr", { class: e.kind === "refused" ? "refused" : "alert", "data-kind": e.kind },
      el("td", { "data-field": "at" }, when(e.at).slice(0, 16)),
      el("td", { "data-field": "scope" }, e.scope),
      el("td", { "data-field": "what" }, what + times),
      el("td", { "data-field": "message" }, e.message));
  });
  $("alerts").tBodies[0].replaceChildren(...rows);
  $("alerts-note").textContent = !doc.available ? doc.reason
    : rows.length ? "" : "none yet";
}

document.addEventListener("DOMContentLoaded", () => {
  $("by").addEventListener("change", refresh);
  $("period").addEventListener("change", refresh);
  loop();
});
