// tunebus dashboard: pages built from the JSON API, kept live by conditional polling.
// Every value from the API is put in the page as text (never as HTML): trial parameters,
// errors and logs come from untrusted trial code.
"use strict";

const main = document.getElementById("main");
const session = { actions: false, poll_seconds: 1 };
let timer = null;
let pollers = [];

// ------------------------------------------------------------------ small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return Math.abs(value) >= 1e5 || (value !== 0 && Math.abs(value) < 1e-3) ? value.toExponential(3)
    : String(Number(value.toPrecision(5)));
}

function fmtSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(Math.floor(seconds % 60)).padStart(2, "0")}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, "0")}m`;
}

function fmtTime(iso) {
  return iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–";
}

function badge(status) {
  return el("span", { class: `status ${status}`, "data-status": status }, status);
}

function compact(params) {
  return Object.entries(params || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(", ");
}

async function api(path, options) {
  const response = await fetch(path, { cache: "no-store", ...options });
  if (response.status === 304) return { notModified: true };
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return { body, etag: response.headers.get("ETag") };
}

// A GET kept fresh: asked again every poll period with If-None-Match (a 304 costs nothing),
// never while the tab is hidden, never twice at once (a load asked for meanwhile runs after).
class Live {
  constructor(url, onData) { this.url = url; this.onData = onData; this.etag = null; this.busy = false; }
  async load() {
    if (this.busy) { this.again = true; return; }
    this.busy = true;
    const url = this.url;
    try {
      const found = await api(url, { headers: this.etag ? { "If-None-Match": this.etag } : {} });
      // An answer for the address before a retarget (a filter typed meanwhile) is dropped.
      if (!found.notModified && url === this.url) { this.etag = found.etag; await this.onData(found.body); }
      setLive(`live · ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      setLive(`not updated: ${error.message}`);
    } finally {
      this.busy = false;
      if (this.again || url !== this.url) { this.again = false; this.load(); }
    }
  }
  retarget(url) { if (url !== this.url) { this.url = url; this.etag = null; } return this.load(); }
}

function setLive(text) { document.getElementById("live").textContent = text; }

function watch(...lives) {
  pollers = lives;
  clearInterval(timer);
  timer = setInterval(() => { if (!document.hidden) pollers.forEach((p) => p.load()); },
                      session.poll_seconds * 1000);
  return Promise.all(lives.map((p) => p.load()));
}

function crumbs(...parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren(...parts.map((p) => (p.href ? el("a", { href: p.href }, p.text) : el("span", {}, p.text))));
}

function notice(container, text, bad) {
  container.replaceChildren(el("div", { class: bad ? "notice bad" : "notice", role: "status" }, text));
}

async function post(path, body, feedback) {
  try {
    const found = await api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                    body: JSON.stringify(body || {}) });
    notice(feedback, `requested (${found.body.published})`);
    pollers.forEach((p) => setTimeout(() => p.load(), 300));
  } catch (error) { notice(feedback, error.message, true); }
}

function actionButton(label, cls, id, onclick) {
  return el("button", { class: cls, id, onclick, disabled: !session.actions,
                        title: session.actions ? null : "actions need the token: open the URL printed at start" },
            label);
}

// plotly.js loads asynchronously (index.html); plots wait for it, nothing else does.
const plotlyReady = new Promise((resolve, reject) => {
  if (window.Plotly) { resolve(); return; }
  const script = document.getElementById("plotly");
  script.addEventListener("load", resolve);
  script.addEventListener("error", () => reject(new Error("plotly.js did not load")));
});

async function plot(id, data, layout) {
  await plotlyReady;
  const node = document.getElementById(id);
  if (!node) return;  // the page moved on meanwhile
  await window.Plotly.react(node, data, { margin: { t: 30, r: 20, b: 45, l: 60 }, ...layout },
                            { displaylogo: false, responsive: true });
}

// ------------------------------------------------------------------ experiments list

function experimentsPage() {
  crumbs({ text: "experiments" });
  const filter = el("select", { id: "status-filter" },
    ["", "RUNNING", "STOPPING", "DONE", "STOPPED", "ERROR", "INITIALIZED"].map(
      (s) => el("option", { value: s }, s || "all statuses")));
  const body = el("tbody");
  const count = el("span", { class: "muted" });
  main.replaceChildren(el("h1", {}, "Experiments"), el("div", { class: "toolbar" }, "Status:", filter, count),
    el("table", { id: "experiments-table" },
      el("thead", {}, el("tr", {}, ["ID", "Name", "Status", "Trials (done / max)", "Time (used / max)",
                                    "Best", "Started"].map((h) => el("th", {}, h)))), body));
  const live = new Live("/api/experiments", (data) => {
    count.textContent = `${data.items.length} of ${data.total}`;
    body.replaceChildren(...data.items.map((r) => el("tr", { "data-experiment": r.id },
      el("td", {}, el("a", { href: `/experiments/${r.id}` }, r.id)), el("td", {}, r.name || ""),
      el("td", {}, badge(r.status), r.reason ? el("div", { class: "muted" }, r.reason) : null),
      el("td", { class: "num" }, `${r.trials_done} / ${r.max_trials === null ? "∞" : r.max_trials}`),
      el("td", { class: "num" }, `${fmtSeconds(r.elapsed_seconds)} / ${fmtSeconds(r.max_duration_seconds)}`),
      el("td", { class: "num" }, fmt(r.best)), el("td", {}, fmtTime(r.started_at)))));
    if (!data.items.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no experiments")));
  });
  filter.addEventListener("change", () => live.retarget(`/api/experiments?status=${filter.value}`));
  return watch(live);
}

// ------------------------------------------------------------------ one experiment

const TABS = { overview: "Overview", params: "Hyper-parameters", intermediate: "Intermediate results",
               trials: "Trials" };

function experimentPage(id) {
  crumbs({ text: "experiments", href: "/" }, { text: id });
  const tab = TABS[location.hash.slice(1)] ? location.hash.slice(1) : "overview";
  const head = el("div", { id: "experiment-head" });
  const feedback = el("div", { id: "feedback" });
  const body = el("div", { id: "tab-body" });
  const tabs = el("nav", { class: "tabs" }, Object.entries(TABS).map(([key, label]) =>
    el("a", { href: `#${key}`, class: key === tab ? "active" : null, id: `tab-${key}` }, label)));
  main.replaceChildren(el("h1", {}, `Experiment ${id}`), head, feedback, tabs, body);
  const tabLive = { overview: overviewTab, params: paramsTab, intermediate: curvesTab, trials: trialsTab }[tab](id, body);
  const overview = new Live(`/api/experiments/${id}`, (data) => {
    renderHead(id, data, head, feedback);
    if (tab === "overview") renderOverview(data);
  });
  // Both polled, side by side: the tab's answers change with the state document, and a
  // running trial's curve between its changes too.
  return watch(overview, tabLive);
}

function card(label, value, id) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label),
            el("div", { class: "value", id }, value));
}

function renderHead(id, data, head, feedback) {
  const e = data.experiment;
  const limits = data.limits;
  const ended = ["DONE", "STOPPED", "ERROR"].includes(e.status);
  const input = (name, value, inputId) => el("input", { type: name === "maxExperimentDuration" ? "text" : "number",
    min: 1, id: inputId, name, placeholder: value === null ? "–" : String(value),
    disabled: !session.actions });
  const concurrency = input("trialConcurrency", limits.trialConcurrency, "in-concurrency");
  const maxTrials = input("maxTrialNumber", limits.maxTrialNumber, "in-max-trials");
  const maxDuration = input("maxExperimentDuration", limits.maxExperimentDuration === null ? null
    : fmtSeconds(limits.maxExperimentDuration), "in-max-duration");
  const update = () => {
    const body = {};
    for (const field of [concurrency, maxTrials]) if (field.value) body[field.name] = Number(field.value);
    if (maxDuration.value) body.maxExperimentDuration = /^[0-9.]+$/.test(maxDuration.value)
      ? Number(maxDuration.value) : maxDuration.value;
    return post(`/api/experiments/${id}/update`, body, feedback);
  };
  head.replaceChildren(
    el("div", { class: "cards" },
      card("status", [badge(e.status), e.reason ? el("div", { class: "muted", id: "reason" }, e.reason) : null]),
      card("trials done / max", `${e.trials_done} / ${limits.maxTrialNumber ?? "∞"}`, "progress-trials"),
      card("time used / max", `${fmtSeconds(e.elapsed_seconds)} / ${fmtSeconds(limits.maxExperimentDuration)}`),
      card(`best (${e.optimize_mode || "–"})`, e.best_trial
        ? el("a", { href: `/experiments/${id}/trials/${e.best_trial}` }, fmt(e.best)) : "–", "best"),
      card("started", fmtTime(e.started_at)),
      card("concurrency", fmt(limits.trialConcurrency), "limit-concurrency")),
    el("div", { class: "toolbar" },
      ended ? actionButton("Resume", "primary", "btn-resume", () => post(`/api/experiments/${id}/resume`, {}, feedback))
            : actionButton("Stop", "danger", "btn-stop", () => post(`/api/experiments/${id}/stop`, {}, feedback)),
      el("span", { class: "muted" }, "limits:"), "concurrency", concurrency, "max trials", maxTrials,
      "max duration", maxDuration, actionButton("Update", "", "btn-update", update)));
}

// ------------------------------------------------------------------ tabs

const STATUS_COLOURS = { SUCCEEDED: "#16a34a", FAILED: "#dc2626", RUNNING: "#2563eb", WAITING: "#60a5fa",
                         USER_CANCELED: "#d97706", SYS_CANCELED: "#b45309", EARLY_STOPPED: "#a855f7" };

function overviewTab(id, body) {
  body.replaceChildren(
    el("div", { class: "grid2" }, el("div", { class: "plot", id: "plot-metric" }),
       el("div", { class: "plot", id: "plot-counts" })),
    el("p", { class: "muted", id: "metric-note" }),
    el("h2", {}, "Configuration"), el("pre", { id: "config" }));
  return new Live(`/api/experiments/${id}/metric`, (series) => {
    if (!series) return;
    const traces = Object.keys(STATUS_COLOURS).map((status) => {
      const idx = series.scatter.status.map((s, i) => (s === status ? i : -1)).filter((i) => i >= 0);
      return { type: "scatter", mode: "markers", name: status, marker: { color: STATUS_COLOURS[status], size: 6 },
               x: idx.map((i) => series.scatter.sequence[i]), y: idx.map((i) => series.scatter.value[i]),
               text: idx.map((i) => series.scatter.trial_id[i]) };
    }).filter((t) => t.x.length);
    traces.push({ type: "scatter", mode: "lines", name: "best so far", line: { shape: "hv", color: "#111827" },
                  x: series.best.sequence, y: series.best.value });
    plot("plot-metric", traces, { title: { text: "default metric by trial" }, xaxis: { title: { text: "trial sequence" } } });
    document.getElementById("metric-note").textContent = series.downsampled
      ? `${series.scored} scored trials; the scatter shows each bucket's lowest and highest and every improvement`
      : `${series.scored} scored trials`;
  });
}

function renderOverview(data) {
  const counts = Object.entries(data.counts);
  plot("plot-counts", [{ type: "bar", x: counts.map(([s]) => s), y: counts.map(([, n]) => n),
                         marker: { color: counts.map(([s]) => STATUS_COLOURS[s] || "#9ca3af") } }],
       { title: { text: "trials by status" } });
  const config = document.getElementById("config");
  if (config) config.textContent = JSON.stringify(data.config, null, 2);
}

function paramsTab(id, body) {
  const top = el("input", { type: "number", min: 1, max: 100, value: 100, id: "in-top" });
  const note = el("span", { class: "muted", id: "params-note" });
  body.replaceChildren(el("div", { class: "toolbar" }, "Top", top, "% of scored trials", note),
                       el("div", { class: "plot", id: "plot-params", style: "min-height: 420px" }));
  const live = new Live(`/api/experiments/${id}/parameters?top=100`, (data) => {
    if (!data) return;
    note.textContent = `${data.shown} of ${data.scored} scored trials`;
    const dims = data.dimensions.map((d) => ({ label: d.kind === "log" ? `${d.name} (log)` : d.name,
      values: d.values, ...(d.tickvals ? { tickvals: d.tickvals, ticktext: d.ticktext } : {}) }));
    dims.push({ label: "metric", values: data.metric });
    plot("plot-params", [{ type: "parcoords", dimensions: dims,
      line: { color: data.metric, colorscale: "Viridis", showscale: true,
              reversescale: data.optimize_mode !== "maximize" } }], { margin: { t: 60, l: 60, r: 60, b: 30 } });
  });
  top.addEventListener("change", () => live.retarget(`/api/experiments/${id}/parameters?top=${top.value}`));
  return live;
}

function curvesTab(id, body) {
  const pick = el("input", { type: "text", id: "in-curve-trials", placeholder: "trial ids, comma-separated (default: running and best)", size: 50 });
  body.replaceChildren(el("div", { class: "toolbar" }, "Trials", pick),
                       el("div", { class: "plot", id: "plot-curves", style: "min-height: 420px" }));
  const live = new Live(`/api/experiments/${id}/intermediate`, (data) => {
    plot("plot-curves", data.curves.map((c) => ({ type: "scatter", mode: "lines", x: c.step, y: c.value,
      name: `#${c.sequence_id} ${c.trial_id}${c.status === "RUNNING" ? " (running)" : ""}` })),
    { title: { text: "intermediate results" }, xaxis: { title: { text: "step" } } });
  });
  pick.addEventListener("change", () => live.retarget(
    `/api/experiments/${id}/intermediate?trials=${encodeURIComponent(pick.value.replace(/\s/g, ""))}`));
  return live;
}

function trialsTab(id, body) {
  const query = { status: "", q: "", sort: "sequence", offset: 0, limit: 50 };
  const status = el("select", { id: "trial-status" }, ["", "WAITING", "RUNNING", "SUCCEEDED", "FAILED",
    "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"].map((s) => el("option", { value: s }, s || "all statuses")));
  const search = el("input", { type: "search", id: "trial-search", placeholder: "search parameters" });
  const rows = el("tbody");
  const info = el("span", { class: "muted", id: "trials-info" });
  const columns = [["sequence", "#"], ["trial_id", "Trial"], ["status", "Status"], ["final", "Final"],
                   ["latest", "Latest"], ["metrics", "Reports"], ["duration", "Duration"], [null, "Parameters"], [null, ""]];
  const header = el("tr", {}, columns.map(([key, label]) => el("th", key ? { class: "sortable", "data-sort": key,
    onclick: () => { query.sort = query.sort === key ? `-${key}` : key; query.offset = 0; reload(); } } : {}, label)));
  const prev = el("button", { id: "page-prev", onclick: () => { query.offset = Math.max(0, query.offset - query.limit); reload(); } }, "‹ previous");
  const next = el("button", { id: "page-next", onclick: () => { query.offset += query.limit; reload(); } }, "next ›");
  const feedback = el("div");
  body.replaceChildren(el("div", { class: "toolbar" }, status, search, info), feedback,
                       el("table", { id: "trials-table" }, el("thead", {}, header), rows),
                       el("div", { class: "pager" }, prev, next));
  const url = () => `/api/experiments/${id}/trials?${new URLSearchParams(query)}`;
  const live = new Live(url(), (page) => {
    info.textContent = `${page.matched} of ${page.total} trials` +
      (page.matched ? `, showing ${page.offset + 1}–${page.offset + page.items.length}` : "");
    prev.disabled = page.offset === 0;
    next.disabled = page.offset + page.items.length >= page.matched;
    for (const th of header.children) th.classList.toggle("sorted", query.sort.replace("-", "") === th.dataset.sort);
    rows.replaceChildren(...page.items.map((t) => el("tr", { "data-trial": t.trial_id },
      el("td", { class: "num" }, t.sequence_id),
      el("td", {}, el("a", { href: `/experiments/${id}/trials/${t.trial_id}` }, t.trial_id)),
      el("td", {}, badge(t.status)), el("td", { class: "num" }, fmt(t.final_value)),
      el("td", { class: "num" }, fmt(t.last_intermediate)), el("td", { class: "num" }, t.metric_count),
      el("td", { class: "num" }, fmtSeconds(t.duration_seconds)), el("td", { class: "params" }, compact(t.parameters)),
      el("td", {}, t.ended ? null : actionButton("Kill", "danger", `kill-${t.trial_id}`,
        () => post(`/api/experiments/${id}/trials/${t.trial_id}/kill`, {}, feedback))))));
  });
  const reload = () => live.retarget(url());
  status.addEventListener("change", () => { query.status = status.value; query.offset = 0; reload(); });
  search.addEventListener("input", () => { query.q = search.value; query.offset = 0; reload(); });
  return live;
}

// ------------------------------------------------------------------ one trial

function trialPage(id, trialId) {
  crumbs({ text: "experiments", href: "/" }, { text: id, href: `/experiments/${id}#trials` }, { text: trialId });
  const head = el("div");
  const feedback = el("div", { id: "feedback" });
  const params = el("tbody");
  const metrics = el("tbody");
  const logs = el("div");
  main.replaceChildren(el("h1", {}, `Trial ${trialId}`), head, feedback,
    el("div", { class: "grid2" },
      el("div", {}, el("h2", {}, "Parameters"), el("table", { id: "trial-params" }, params)),
      el("div", { class: "plot", id: "plot-trial" })),
    el("h2", {}, "Reported metrics"), el("table", { id: "trial-metrics" },
      el("thead", {}, el("tr", {}, ["#", "kind", "value", "reported"].map((h) => el("th", {}, h)))), metrics),
    logs);
  const live = new Live(`/api/experiments/${id}/trials/${trialId}`, (d) => {
    const t = d.trial;
    head.replaceChildren(...[el("div", { class: "cards" },
        card("status", badge(t.status)), card("final", fmt(t.final_value), "trial-final"),
        card("sequence", t.sequence_id), card("attempt", t.attempt), card("duration", fmtSeconds(t.duration_seconds)),
        card("started", fmtTime(t.started_at))),
      el("div", { class: "toolbar" },
        t.ended ? null : actionButton("Kill trial", "danger", "btn-kill",
          () => post(`/api/experiments/${id}/trials/${trialId}/kill`, {}, feedback)),
        d.portal_url ? el("a", { href: d.portal_url, target: "_blank", rel: "noopener noreferrer", id: "portal-link" },
          "open in Azure ML studio") : null),
      d.error ? el("div", { class: "notice bad error", id: "trial-error" }, d.error) : null,
      d.kill_reason ? el("div", { class: "notice" }, `kill requested: ${d.kill_reason}`) : null]
      .filter((node) => node !== null));
    params.replaceChildren(...Object.entries(t.parameters).map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", { class: "params" }, typeof v === "object" ? JSON.stringify(v) : v))));
    const periodical = d.metrics.filter((m) => m.kind === "PERIODICAL");
    plot("plot-trial", [{ type: "scatter", mode: "lines+markers", x: periodical.map((_, i) => i + 1),
                          y: periodical.map((m) => m.value), name: "intermediate" }],
         { title: { text: "intermediate results" }, xaxis: { title: { text: "step" } } });
    metrics.replaceChildren(...d.metrics.slice(-200).map((m) => el("tr", {}, el("td", { class: "num" }, m.sequence),
      el("td", {}, m.kind), el("td", { class: "num" }, fmt(m.value)),
      el("td", { class: "params" }, typeof m.raw === "object" ? JSON.stringify(m.raw) : String(m.raw)))));
    if (d.metric_problems.length) metrics.append(el("tr", {}, el("td", { colspan: 4, class: "error" }, d.metric_problems.join("\n"))));
    logs.replaceChildren(...Object.entries(d.logs).map(([stream, log]) => el("section", {},
      el("h2", {}, stream), log === null
        ? el("p", { class: "muted" }, d.portal_url ? "with the Azure ML run (see the link above)"
          : t.ended ? "nothing was written" : "uploaded when the trial ends")
        : [log.skipped ? el("p", { class: "muted" }, `the first ${log.skipped} bytes are left out`) : null,
           el("pre", { id: `log-${stream}` }, log.text)])));
  });
  return watch(live);
}

// ------------------------------------------------------------------ start

async function route() {
  const path = location.pathname;
  const trial = path.match(/^\/experiments\/([\w-]+)\/trials\/([\w-]+)$/);
  const experiment = path.match(/^\/experiments\/([\w-]+)$/);
  if (trial) return trialPage(trial[1], trial[2]);
  if (experiment) return experimentPage(experiment[1]);
  return experimentsPage();
}

async function start() {
  try {
    Object.assign(session, (await api("/api/session")).body);
  } catch (error) { setLive(error.message); }
  window.addEventListener("hashchange", route);
  await route();
  document.body.dataset.ready = "true";
}

start();
