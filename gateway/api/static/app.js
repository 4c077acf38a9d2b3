// The dashboard: reads /api/events (server-sent events over fetch, so the API token can go in a
// header) and draws what arrives; the SQL box posts to /api/sql. No libraries, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let token = localStorage.getItem("edge-gateway-token") || "";
let lastSnapshot = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtNumber(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return Number.isInteger(v) ? String(v) : v.toFixed(2).replace(/\.?0+$/, "");
}

function fmtBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return "now";
  if (seconds < 90) return Math.round(seconds) + "s";
  if (seconds < 5400) return Math.round(seconds / 60) + "m";
  if (seconds < 172800) return Math.round(seconds / 3600) + "h";
  return Math.round(seconds / 86400) + "d";
}

function fmtTime(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString();
}

// -- charts ------------------------------------------------------------------------------------
function sparkline(values) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 100 20");
  svg.setAttribute("preserveAspectRatio", "none");
  const nums = values.filter((v) => typeof v === "number");
  if (nums.length === 1) nums.push(nums[0]);  // one reading so far: a level line
  if (nums.length > 1) {
    const lo = Math.min(...nums), hi = Math.max(...nums), span = hi - lo || 1;
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", nums.map((v, i) =>
      `${(i / (nums.length - 1)) * 100},${18 - ((v - lo) / span) * 16}`).join(" "));
    svg.append(line);
  }
  return svg;
}

const PALETTE = ["#1f7ae0", "#1a9b5b", "#d98a00", "#d6394a", "#8a5cf6"];

// series: [{name, points: [[x, y], ...]}]; x numeric (epoch seconds when `time`) or categories.
function chart(container, series, opts) {
  container.replaceChildren();
  const all = series.flatMap((s) => s.points);
  if (!all.length) return;
  // Drawn at the container's own width, so text is not stretched.
  const W = Math.max(280, container.clientWidth || 600), H = 160, L = 44, B = 18, T = 14, R = 8;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const ys = all.map((p) => p[1]);
  const yMin = Math.min(0, ...ys), yMax = Math.max(...ys, yMin + 1);
  const y = (v) => T + (H - T - B) * (1 - (v - yMin) / (yMax - yMin));
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  for (const v of [yMin, (yMin + yMax) / 2, yMax]) {
    add("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "axis" });
    add("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, fmtNumber(v));
  }
  if (opts.bars) {
    const cats = series[0].points.map((p) => p[0]);
    const slot = (W - L - R) / cats.length, width = slot / (series.length + 0.5);
    series.forEach((s, si) => s.points.forEach((p, i) => {
      add("rect", { x: L + i * slot + si * width + width / 4, y: y(Math.max(p[1], 0)),
        width: width, height: Math.abs(y(p[1]) - y(0)), fill: PALETTE[si % PALETTE.length] });
    }));
    const step = Math.ceil(cats.length / 8);
    cats.forEach((c, i) => {
      if (i % step === 0) add("text", { x: L + i * slot + slot / 2, y: H - 4, "text-anchor": "middle" }, String(c).slice(0, 14));
    });
  } else {
    const xs = all.map((p) => p[0]);
    const xMin = Math.min(...xs), xMax = Math.max(...xs, xMin + 1);
    const x = (v) => L + (W - L - R) * (v - xMin) / (xMax - xMin);
    series.forEach((s, si) => {
      add("polyline", { points: s.points.map((p) => `${x(p[0])},${y(p[1])}`).join(" "),
        fill: "none", stroke: PALETTE[si % PALETTE.length], "stroke-width": 1.5 });
    });
    const label = (v) => opts.time ? new Date(v * 1000).toLocaleTimeString() : fmtNumber(v);
    add("text", { x: L, y: H - 4 }, label(xMin));
    add("text", { x: W - R, y: H - 4, "text-anchor": "end" }, label(xMax));
  }
  series.forEach((s, si) => {
    if (series.length > 1 || opts.legend) {
      add("text", { x: W - R - (series.length - si) * 110, y: T - 3,
        style: "fill: " + PALETTE[si % PALETTE.length] }, "■ " + s.name);
    }
  });
  container.append(svg);
}

// -- the live view -----------------------------------------------------------------------------
function render(snap) {
  lastSnapshot = snap;
  const st = snap.status;
  $("gateway-id").textContent = st.gateway_id;
  const broker = $("broker");
  broker.textContent = st.broker.connected ? "broker connected" : "broker DISCONNECTED";
  broker.classList.toggle("off", !st.broker.connected);
  broker.title = st.broker.address + (st.broker.last_error ? " · " + st.broker.last_error : "");
  $("rate").textContent = fmtNumber(st.ingest.readings_per_s);
  $("readings").textContent = fmtNumber(st.ingest.readings);
  $("quarantined").textContent = fmtNumber(st.ingest.quarantined);
  $("buffer-size").textContent = fmtBytes(st.buffer.file_bytes);
  chart($("throughput"), [{ name: "readings/s", points: snap.throughput }], { time: true });
  renderDevices(snap.devices, snap.time);
  renderRegistry(snap.registry, snap.time);
  renderAlerts(snap.alerts.active);
  renderFirings(snap.firings);
  renderSinks(snap.sinks);
  renderQuarantine(snap.quarantine);
  renderClocks(snap.timelines);
}

function renderClocks(timelines) {
  $("clocks-empty").hidden = timelines.length > 0;
  $("clocks").hidden = timelines.length === 0;
  $("clocks").tBodies[0].replaceChildren(...timelines.map((t) =>
    el("tr", { "data-device": t.device },
      el("td", {}, t.device), el("td", {}, t.time_source || "–"),
      el("td", { class: "num" }, fmtNumber(t.lag_s) + " s"),
      el("td", { class: "num" }, fmtNumber(t.late_dropped)),
      el("td", { class: "num" }, fmtNumber(t.clock_skew_adjusted)),
      el("td", { class: "num" }, fmtNumber(t.clock_skew_dropped)))));
}

function renderRegistry(registry, now) {
  $("registry-count").textContent = registry.length;
  $("registry-empty").hidden = registry.length > 0;
  $("registry").hidden = registry.length === 0;
  $("registry").tBodies[0].replaceChildren(...registry.map((d) => {
    const model = [d.vendor, d.model].filter((x) => x).join(" ") || "–";
    return el("tr", { "data-device": d.device, "data-availability": d.availability || "" },
      el("td", {}, d.device),
      el("td", { class: "availability " + (d.availability || "unknown") }, d.availability || "–"),
      el("td", { class: "num" }, d.availability_since ? fmtAge(now - d.availability_since) : "–"),
      el("td", { class: "num" }, fmtAge(now - d.last_seen)),
      el("td", { class: "num" }, fmtNumber(d.messages)),
      el("td", { class: "num" }, fmtNumber(d.quarantined)),
      el("td", {}, model),
      el("td", { class: "hint" }, d.routes.join(", ")));
  }));
}

function renderDevices(devices, now) {
  const filter = $("device-filter").value.trim().toLowerCase();
  const rows = devices.filter((d) => !filter || (d.device + " " + d.metric).toLowerCase().includes(filter));
  $("device-count").textContent = devices.length;
  $("devices-empty").hidden = devices.length > 0;
  $("devices").tBodies[0].replaceChildren(...rows.map((d) => {
    const latest = d.value !== null ? fmtNumber(d.value) + (d.unit ? " " + d.unit : "") : (d.text ?? "–");
    return el("tr", { "data-device": d.device, "data-metric": d.metric },
      el("td", {}, d.device), el("td", {}, d.metric),
      el("td", { class: "num latest" }, latest),
      el("td", {}, sparkline(d.spark)),
      el("td", { class: "num" }, fmtAge(now - d.at)));
  }));
}

function renderAlerts(active) {
  $("alert-count").textContent = active.length;
  $("alerts-empty").hidden = active.length > 0;
  $("alerts-active").replaceChildren(...active.map((a) =>
    el("li", { "data-rule": a.rule_id, "data-device": a.device },
      el("span", { class: "sev " + a.severity }, a.severity),
      el("strong", {}, a.rule_id), el("span", {}, a.device),
      el("span", {}, a.message || ""),
      el("span", { class: "when" }, "since " + fmtTime(a.since)))));
}

function renderFirings(firings) {
  $("firings-empty").hidden = firings.length > 0;
  $("firings").replaceChildren(...firings.map((f) =>
    el("li", { "data-rule": f.rule_id },
      el("strong", {}, f.rule_id), el("span", {}, f.device),
      el("span", { class: "hint" }, f.actions.join(", ")),
      el("span", { class: "when" }, fmtTime(f.time)))));
}

function renderSinks(sinks) {
  $("sinks-empty").hidden = sinks.length > 0;
  $("sinks").hidden = sinks.length === 0;
  $("sinks").tBodies[0].replaceChildren(...sinks.map((s) =>
    el("tr", { "data-sink": s.sink },
      el("td", {}, s.sink + " (" + s.type + ")"), el("td", {}, s.stream),
      el("td", { class: "num" }, fmtNumber(s.backlog_rows)),
      el("td", { class: "num" }, fmtAge(s.oldest_unsent_age_s)),
      el("td", { class: "num" }, fmtNumber(s.rows_per_s)),
      el("td", { class: "error", title: s.last_error || "" }, s.last_error || ""))));
}

function renderQuarantine(q) {
  $("quarantine-empty").hidden = q.reasons.length > 0;
  $("quarantine-reasons").replaceChildren(...q.reasons.map((r) =>
    el("li", {}, el("strong", {}, fmtNumber(r.messages) + " ×"), el("span", {}, r.reason),
      el("span", { class: "when" }, "last " + fmtTime(r.last)))));
  $("quarantine").tBodies[0].replaceChildren(...q.recent.map((m) =>
    el("tr", {}, el("td", {}, fmtTime(m.received_at)), el("td", {}, m.topic),
      el("td", {}, m.reason), el("td", { class: "payload", title: m.payload }, m.payload))));
}

function setLive(on) {
  const live = $("live");
  live.textContent = on ? "live" : "offline";
  live.classList.toggle("off", !on);
}

async function follow() {
  let delay = 1000;
  for (;;) {
    try {
      const response = await fetch("/api/events", { headers: headers(), cache: "no-store" });
      if (response.status === 401) { askToken(); return; }
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      setLive(true);
      delay = 1000;
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
          let event = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (event === "snapshot" && data) render(JSON.parse(data));
        }
      }
    } catch (err) {
      console.warn("event stream:", err);
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function askToken() {
  setLive(false);
  $("token-form").hidden = false;
  $("token").focus();
}

// -- SQL box -----------------------------------------------------------------------------------
function looksLikeTime(v) {
  return typeof v === "string" && /^\d{4}-\d\d-\d\d[ T]\d\d:\d\d/.test(v);
}

function chartResult(columns, rows) {
  const box = $("sql-chart");
  box.replaceChildren();
  if (rows.length < 2 || columns.length < 2) return;
  const numeric = columns.map((_, i) => rows.every((r) => r[i] === null || typeof r[i] === "number"));
  const xTime = rows.every((r) => looksLikeTime(r[0]));
  const ys = columns.map((c, i) => i).filter((i) => i > 0 && numeric[i]).slice(0, 4);
  if (!ys.length) return;
  if (xTime || numeric[0]) {
    const xval = (v) => xTime ? Date.parse(v.replace(" ", "T")) / 1000 : v;
    const series = ys.map((i) => ({ name: columns[i],
      points: rows.filter((r) => r[i] !== null).map((r) => [xval(r[0]), r[i]]).sort((a, b) => a[0] - b[0]) }));
    chart(box, series, { time: xTime, legend: true });
  } else {
    const series = ys.map((i) => ({ name: columns[i], points: rows.slice(0, 40).map((r) => [r[0], r[i] ?? 0]) }));
    chart(box, series, { bars: true, legend: true });
  }
}

async function runSql(event) {
  if (event) event.preventDefault();
  const status = $("sql-status");
  status.className = "";
  status.textContent = "running…";
  const started = performance.now();
  try {
    const response = await fetch("/api/sql", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "application/json" }),
      body: JSON.stringify({ sql: $("sql").value, limit: 1000 }),
    });
    const body = await response.json();
    if (response.status === 401) { askToken(); throw new Error(body.error); }
    if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
    const table = $("sql-results");
    table.replaceChildren(
      el("thead", {}, el("tr", {}, ...body.columns.map((c) => el("th", {}, c)))),
      el("tbody", {}, ...body.rows.map((r) => el("tr", {}, ...r.map((v) =>
        el("td", { class: typeof v === "number" ? "num" : "" }, v === null ? "NULL" : (typeof v === "number" ? fmtNumber(v) : v)))))));
    chartResult(body.columns, body.rows);
    status.textContent = `${body.rows.length} rows in ${Math.round(performance.now() - started)} ms`;
  } catch (err) {
    status.className = "error";
    status.textContent = String(err.message || err);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sql-form").addEventListener("submit", runSql);
  $("sql").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runSql(e);
  });
  $("device-filter").addEventListener("input", () => {
    if (lastSnapshot) renderDevices(lastSnapshot.devices, lastSnapshot.time);
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value;
    localStorage.setItem("edge-gateway-token", token);
    $("token-form").hidden = true;
    follow();
  });
  follow();
});
