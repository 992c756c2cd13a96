// procfleet dashboard. No framework, no build step: the dispatcher embeds
// this file. Every data call carries the token kept in sessionStorage as a
// bearer header; live state arrives over GET /v1/events (server-sent events
// read with fetch, so the header can be sent), one compact delta a second.
"use strict";

const TOKEN_KEY = "procfleet_token";
const PAGE = 25;          // rows per table page
const MAX_PROGRESS = 200; // progress lines kept for the followed job

const S = {
  agents: new Map(),      // name -> agent info (as the agent's info endpoint answers)
  queues: [],
  history: [],
  features: {},
  job: "",                // the job followed live
  pages: {agents: 0, workers: 0, failures: 0, dlq: 0},
  failures: [],
  dlq: [],
  selected: new Set(),    // selected dead-letter seqs
  stream: null,           // AbortController of the SSE fetch
  lastSnap: 0,
};

const $ = (id) => document.getElementById(id);

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = sessionStorage.getItem(TOKEN_KEY);
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

async function api(method, path, body) {
  const opt = {method, headers: headers(body ? {"Content-Type": "application/json"} : {})};
  if (body) opt.body = JSON.stringify(body);
  const r = await fetch(path, opt);
  if (r.status === 401) { needSignIn(); throw new Error("401: sign in again"); }
  let data = null;
  const text = await r.text();
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!r.ok) throw new Error(r.status + ": " + ((data && data.error) || r.statusText));
  return data;
}

// needSignIn answers a 401. A tab that holds no token (a second tab, opened
// on the browser's session cookie) signs in on its own, leaving the other
// tabs' session alone; a token that stopped working signs the browser out.
function needSignIn() {
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    location.replace("/?signin");
    return;
  }
  signOut();
}

async function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  try { await fetch("/ui/logout", {method: "POST"}); } catch (_) { /* offline */ }
  location.replace("/");
}

// ---- small DOM helpers ----
function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  if (props) for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function td(v, cls) { return el("td", cls ? {class: cls} : null, v === undefined || v === null ? "" : v); }
function fmtNum(n) { return n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US"); }
function fmtRate(n) { return n === undefined ? "–" : (n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString("en-US")); }
function fmtMS(n) { return !n ? "–" : n < 1000 ? n.toFixed(n < 10 ? 1 : 0) + " ms" : (n / 1000).toFixed(2) + " s"; }
function fmtBytes(b) { if (!b) return "–"; const u = ["B", "KiB", "MiB", "GiB"]; let i = 0; while (b >= 1024 && i < 3) { b /= 1024; i++; } return b.toFixed(i ? 1 : 0) + " " + u[i]; }
function fmtAge(t) {
  if (!t) return "–";
  let s = Math.max(0, (Date.now() - Date.parse(t)) / 1000);
  if (s < 60) return Math.floor(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + Math.floor(s % 86400 / 3600) + "h";
}
function fmtTime(t) { return t ? new Date(t).toLocaleTimeString("en-GB") : "–"; }
function jobLink(id) {
  if (!id) return "";
  return el("a", {href: "#job=" + id, on: {click: (e) => { e.preventDefault(); lookUp(id); }}}, id);
}

// pager draws "‹ page i of n ›" under a table and returns the page's rows.
function paged(name, rows, redraw) {
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  S.pages[name] = Math.min(S.pages[name], pages - 1);
  const p = S.pages[name];
  const box = $(name + "-pager");
  box.replaceChildren(
    el("button", {type: "button", disabled: p === 0, on: {click: () => { S.pages[name]--; redraw(); }}}, "‹"),
    el("span", {class: "page"}, `page ${p + 1} of ${pages} · ${rows.length} rows`),
    el("button", {type: "button", disabled: p >= pages - 1, on: {click: () => { S.pages[name]++; redraw(); }}}, "›"));
  return rows.slice(p * PAGE, (p + 1) * PAGE);
}

// ---- tabs ----
function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === name);
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== "tab-" + name;
  if (name === "dlq") loadDLQ();
  if (name === "jobs") loadFailures();
  if (name === "schedules") loadSchedules();
  if (name === "queues") drawChart();
}

// ---- live stream ----
function follow(job) {
  S.job = job || "";
  if (S.stream) S.stream.abort();
  const ctl = new AbortController();
  S.stream = ctl;
  const url = "/v1/events" + (S.job ? "?job=" + encodeURIComponent(S.job) : "");
  (async () => {
    let wait = 1000;
    while (!ctl.signal.aborted) {
      try {
        const r = await fetch(url, {headers: headers(), signal: ctl.signal});
        if (r.status === 401) { needSignIn(); return; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        setLive(true);
        wait = 1000;
        await readSSE(r.body, onEvent);
      } catch (x) {
        if (ctl.signal.aborted) return;
      }
      setLive(false);
      await new Promise((res) => setTimeout(res, wait));
      wait = Math.min(wait * 2, 15000);
    }
  })();
}

async function readSSE(body, fn) {
  const rd = body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await rd.read();
    if (done) return;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message", data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) {
        const text = data.join("\n");
        try { fn(event, JSON.parse(text), text.length); } catch (x) { console.error(x); }
      }
    }
  }
}

function setLive(on) {
  const l = $("live");
  l.className = "live " + (on ? "on" : "off");
  l.textContent = on ? "live" : "reconnecting…";
}

function onEvent(event, d, size) {
  switch (event) {
  case "snap": onSnap(d, size); break;
  case "progress": addProgress(d); break;
  case "attempt": addAttempt(d); break;
  case "result": showResult(d); if (d.id === S.job) loadJob(S.job); break;
  }
}

function onSnap(d, size) {
  S.lastSnap = Date.now();
  if (d.full) {
    S.agents.clear();
    S.history = d.history || [];
    if (d.features) applyFeatures(d.features);
  } else if (d.point && d.point.t) {
    S.history.push(d.point);
    if (S.history.length > 300) S.history.splice(0, S.history.length - 300);
  }
  for (const a of d.agents || []) S.agents.set(a.agent.name, a);
  for (const g of d.gone || []) S.agents.delete(g);
  S.queues = d.queues || [];
  $("live").textContent = "live · " + new Date(d.t).toLocaleTimeString("en-GB");
  drawCards();
  drawAgents();
  drawWorkers();
  drawQueues();
  if (!$("tab-queues").hidden) drawChart();
  // For the scale measurement (TestDashboardScale).
  if (!window.procfleetFirstRender) window.procfleetFirstRender = performance.now();
  window.procfleetLastSnapBytes = size;
}

function applyFeatures(f) {
  S.features = f;
  document.querySelector('#tabs button[data-tab="schedules"]').hidden = !f.schedules;
  $("dlq-purge").hidden = !f.dlq_purge;
  $("job-cancel").hidden = !f.cancel || !S.job;
}

function drawCards() {
  let workers = 0, busy = 0, sessions = 0;
  for (const a of S.agents.values()) { workers += a.pool.Size; busy += a.pool.Busy; sessions += a.pool.Sessions; }
  const q = S.queues[0] || {};
  $("c-agents").textContent = fmtNum(S.agents.size);
  $("c-workers").textContent = fmtNum(workers);
  $("c-busy").textContent = fmtNum(busy);
  $("c-sessions").textContent = fmtNum(sessions);
  $("c-depth").textContent = fmtNum(q.depth);
  $("c-in").textContent = fmtRate(q.in);
  $("c-out").textContent = fmtRate(q.out);
  $("c-results").textContent = fmtNum(q.results);
  $("c-dlq").textContent = fmtNum(q.dead_letters);
}

function drawAgents() {
  const f = $("agent-filter").value.toLowerCase();
  const rows = [...S.agents.values()].filter((a) => !f || a.agent.name.toLowerCase().includes(f) || (a.agent.host || "").toLowerCase().includes(f));
  rows.sort((x, y) => x.agent.name.localeCompare(y.agent.name));
  const body = $("agents").tBodies[0];
  body.replaceChildren(...paged("agents", rows, drawAgents).map((a) => {
    const p = a.pool, j = a.jobs || {};
    const tr = el("tr", {"data-agent": a.agent.name},
      td(a.agent.name), td(a.agent.host), td((a.queues || []).map((q) => q.queue).join(", ") || "default"), td(a.agent.pid), td(fmtAge(a.agent.started_at)),
      td(p.Size), td(p.Busy), td(p.Idle), td(fmtNum(p.Sessions)), td((a.partitions || []).length),
      td(fmtNum(j.Succeeded)), td(fmtNum((j.AppFailed || 0) + (j.Exhausted || 0))), td(fmtNum(j.Retried)),
      td(p.Degraded ? "degraded" : "ok", p.Degraded ? "bad" : "ok"));
    tr.title = "partitions: " + (a.partitions || []).join(", ") + (p.LastError ? "\nlast error: " + p.LastError : "");
    return tr;
  }));
}

function drawWorkers() {
  const f = $("worker-filter").value.toLowerCase();
  const rows = [];
  const names = [...S.agents.keys()].sort();
  for (const n of names) {
    for (const w of S.agents.get(n).workers || []) {
      if (f && !(n.toLowerCase().includes(f) || (w.state || "").includes(f) || (w.current_job || "").toLowerCase().includes(f) || (w.id || "").toLowerCase().includes(f) || (w.queue || "default").includes(f))) continue;
      rows.push([n, w]);
    }
  }
  const body = $("workers").tBodies[0];
  body.replaceChildren(...paged("workers", rows, drawWorkers).map(([n, w]) => el("tr", {"data-worker": w.id || ""},
    td(n), td(w.queue || "default"), td(w.id || "–"), td(w.pid || "–"), td(w.state + (w.retiring ? " (retiring)" : ""), "state-" + w.state),
    td(fmtBytes(w.rss)), td(fmtNum(w.jobs)), td(fmtNum(w.sessions)), td(fmtAge(w.started_at)),
    el("td", null, jobLink(w.current_job)))));
}

function drawQueues() {
  const body = $("queues").tBodies[0];
  body.replaceChildren(...S.queues.map((q) => el("tr", {"data-queue": q.name},
    td(q.name), td(fmtNum(q.depth)), td(q.oldest ? fmtAge(q.oldest) + " ago" : "–"), td(fmtRate(q.in)), td(fmtRate(q.out)),
    td(fmtMS(q.p50_ms)), td(fmtMS(q.p99_ms)), td(fmtNum(q.sessions)), td(`${fmtNum(q.busy)} / ${fmtNum(q.workers)}`),
    td(fmtNum(q.dead_letters)))));
}

const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) { const e = document.createElementNS(SVGNS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }

function drawChart() {
  const c = $("chart");
  const W = 1200, H = 180, pad = 22;
  const h = S.history;
  const max = Math.max(1, ...h.map((p) => Math.max(p.in, p.out)));
  const t1 = h.length ? h[h.length - 1].t : Date.now(), t0 = t1 - 300000;
  const x = (t) => pad + (W - pad) * (t - t0) / 300000;
  const y = (v) => H - pad - (H - 2 * pad) * v / max;
  const line = (k) => h.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + "," + y(p[k]).toFixed(1)).join(" ");
  const kids = [
    svg("line", {x1: pad, y1: H - pad, x2: W, y2: H - pad, class: "axis"}),
    svg("line", {x1: pad, y1: pad, x2: W, y2: pad, class: "axis"}),
  ];
  const top = svg("text", {x: 2, y: pad + 4}); top.textContent = fmtRate(max);
  const zero = svg("text", {x: 2, y: H - pad + 4}); zero.textContent = "0";
  const left = svg("text", {x: pad, y: H - 4}); left.textContent = "-5 min";
  const right = svg("text", {x: W - 28, y: H - 4}); right.textContent = "now";
  kids.push(top, zero, left, right);
  if (h.length > 1) {
    kids.push(svg("path", {d: line("in"), class: "in"}), svg("path", {d: line("out"), class: "out"}));
  }
  c.replaceChildren(...kids);
}

// ---- jobs ----
async function lookUp(id) {
  id = (id || "").trim();
  showTab("jobs");
  $("job-id").value = id;
  $("job-error").textContent = "";
  $("job-progress").replaceChildren();
  $("job-attempts").tBodies[0].replaceChildren();
  $("job-detail").hidden = false;
  $("job-state").textContent = "…";
  $("job-envelope").textContent = "";
  $("job-result").textContent = "";
  $("job-follow").textContent = "following live";
  follow(id);
  applyFeatures(S.features);
  await loadJob(id);
}

// loadJob fills the detail from GET /v1/jobs/{id}; live events add to it.
async function loadJob(id) {
  try {
    const v = await api("GET", "/v1/jobs/" + encodeURIComponent(id));
    if (id !== S.job) return;
    $("job-state").textContent = v.state;
    $("job-follow").textContent = (v.running_on ? "running on " + v.running_on + " · " : "") + (v.result ? "" : "following live");
    $("job-envelope").textContent = v.envelope ? JSON.stringify(v.envelope, null, 2) : "(not known yet)";
    for (const a of v.attempts || []) addAttempt(a);
    if (v.result) showResult(v.result);
    if (v.dead_letter) $("job-result").textContent += "\n\ndead letter #" + v.dead_letter.seq + ": " + v.dead_letter.kind + ": " + v.dead_letter.error;
  } catch (x) {
    if (String(x.message).startsWith("404")) {
      $("job-state").textContent = "waiting";
      $("job-envelope").textContent = "(nothing known yet: it may be queued; progress and attempts appear here live)";
    } else {
      $("job-error").textContent = x.message;
    }
  }
}

function addAttempt(a) {
  if (a.id !== S.job) return;
  const body = $("job-attempts").tBodies[0];
  const key = a.attempt + "/" + a.agent + "/" + a.finished_at;
  if ([...body.rows].some((r) => r.dataset.key === key)) return;
  const took = a.started_at && a.finished_at ? Date.parse(a.finished_at) - Date.parse(a.started_at) : 0;
  body.append(el("tr", {"data-key": key},
    td(a.attempt), td(a.agent), td(a.worker), td(a.worker_pid), td(fmtTime(a.started_at)), td(fmtMS(took)),
    td(a.outcome + (a.kind ? " (" + a.kind + ")" : ""), a.outcome === "ok" ? "ok" : "bad"), td(a.error, "wrap")));
  if ($("job-state").textContent === "waiting" || $("job-state").textContent === "unknown") $("job-state").textContent = "running";
}

function addProgress(d) {
  const ol = $("job-progress");
  ol.append(el("li", null, new Date().toLocaleTimeString("en-GB") + "  " + JSON.stringify(d)));
  while (ol.children.length > MAX_PROGRESS) ol.firstChild.remove();
  ol.scrollTop = ol.scrollHeight;
  if ($("job-state").textContent === "waiting") $("job-state").textContent = "running";
}

function showResult(r) {
  if (r.id && r.id !== S.job) return;
  $("job-state").textContent = r.ok ? "done" : "failed";
  $("job-result").textContent = JSON.stringify(r.ok ? {result: r.result, agent: r.agent, worker: r.worker, attempt: r.attempt,
    started_at: r.started_at, finished_at: r.finished_at} : {error: r.error, agent: r.agent, attempt: r.attempt}, null, 2);
}

async function cancelJob() {
  if (!S.job || !confirm("Cancel job " + S.job + "?")) return;
  try { await api("DELETE", "/v1/jobs/" + encodeURIComponent(S.job)); $("job-error").textContent = "cancel requested"; }
  catch (x) { $("job-error").textContent = x.message; }
}

async function loadFailures() {
  const kind = $("fail-kind").value;
  try {
    const d = await api("GET", "/v1/failures?limit=500" + (kind ? "&kind=" + encodeURIComponent(kind) : ""));
    S.failures = d.failures;
    const sel = $("fail-kind");
    const have = new Set([...sel.options].map((o) => o.value));
    for (const k of Object.keys(d.kinds).sort()) if (!have.has(k)) sel.append(el("option", {value: k}, k));
    drawFailures();
  } catch (x) { $("job-error").textContent = x.message; }
}

function drawFailures() {
  $("failures").tBodies[0].replaceChildren(...paged("failures", S.failures, drawFailures).map((a) => el("tr", null,
    td(fmtTime(a.finished_at)), el("td", null, jobLink(a.id)), td(a.attempt), td(a.agent), td(a.worker), td(a.kind),
    td(a.outcome), td(a.error, "wrap"))));
}

// ---- dead letters ----
async function loadDLQ() {
  try {
    S.dlq = await api("GET", "/v1/dlq?limit=1000");
    const have = new Set(S.dlq.map((d) => d.seq));
    for (const s of [...S.selected]) if (!have.has(s)) S.selected.delete(s);
    drawDLQ();
  } catch (x) { $("dlq-msg").textContent = x.message; }
}

function drawDLQ() {
  $("dlq").tBodies[0].replaceChildren(...paged("dlq", S.dlq, drawDLQ).map((d) => el("tr", {"data-seq": d.seq},
    el("td", null, el("input", {type: "checkbox", checked: S.selected.has(d.seq),
      on: {change: (e) => { if (e.target.checked) S.selected.add(d.seq); else S.selected.delete(d.seq); }}})),
    td(d.seq), el("td", null, jobLink(d.job_id)), td(d.kind), td(d.attempts), td(d.agent), td(fmtTime(d.at)), td(d.error, "wrap"),
    el("td", null,
      el("button", {type: "button", class: "inspect", on: {click: () => inspectDLQ(d)}}, "inspect"), " ",
      el("button", {type: "button", class: "replay", on: {click: () => replay([d.seq])}}, "replay")))));
}

async function inspectDLQ(d) {
  const pre = $("dlq-inspect");
  pre.hidden = false;
  let v = d;
  if (S.features.dlq_inspect) { try { v = await api("GET", "/v1/dlq/" + d.seq); } catch (_) { v = d; } }
  pre.textContent = JSON.stringify(v, null, 2);
}

async function replay(seqs) {
  if (!seqs.length) { $("dlq-msg").textContent = "select dead letters first"; return; }
  let ok = 0;
  const errs = [];
  for (const s of seqs) {
    try { await api("POST", "/v1/dlq/" + s + "/replay"); ok++; S.selected.delete(s); }
    catch (x) { errs.push("#" + s + ": " + x.message); }
  }
  $("dlq-msg").textContent = `replayed ${ok} of ${seqs.length}` + (errs.length ? "; " + errs.join("; ") : "");
  loadDLQ();
}

async function purgeDLQ() {
  if (!confirm("Delete every dead letter? This cannot be undone.")) return;
  try { await api("DELETE", "/v1/dlq"); $("dlq-msg").textContent = "purged"; } catch (x) { $("dlq-msg").textContent = x.message; }
  loadDLQ();
}

async function loadSchedules() {
  try { $("schedules").textContent = JSON.stringify(await api("GET", "/v1/schedules"), null, 2); }
  catch (x) { $("schedules").textContent = x.message; }
}

// ---- wiring ----
document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("logout").addEventListener("click", signOut);
  $("agent-filter").addEventListener("input", () => { S.pages.agents = 0; drawAgents(); });
  $("worker-filter").addEventListener("input", () => { S.pages.workers = 0; drawWorkers(); });
  $("job-form").addEventListener("submit", (e) => { e.preventDefault(); lookUp($("job-id").value); });
  $("job-cancel").addEventListener("click", cancelJob);
  $("fail-kind").addEventListener("change", () => { S.pages.failures = 0; loadFailures(); });
  $("fail-refresh").addEventListener("click", loadFailures);
  $("dlq-refresh").addEventListener("click", loadDLQ);
  $("dlq-replay-sel").addEventListener("click", () => replay([...S.selected]));
  $("dlq-purge").addEventListener("click", purgeDLQ);
  $("dlq-all").addEventListener("change", (e) => {
    for (const cb of $("dlq").tBodies[0].querySelectorAll("input[type=checkbox]")) { cb.checked = e.target.checked; cb.dispatchEvent(new Event("change")); }
  });
  $("sched-refresh").addEventListener("click", loadSchedules);
  const m = location.hash.match(/^#job=([A-Za-z0-9_-]{1,128})$/);
  if (m) lookUp(m[1]); else follow("");
  // Ages tick between snapshots; a stream that went quiet shows it.
  setInterval(() => { if (Date.now() - S.lastSnap > 5000) setLive(false); }, 2000);
});
