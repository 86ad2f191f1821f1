// edgefleet hub dashboard: a small hash-routed page over the /api/v1 JSON API.
// Every number comes from the API; the page refreshes itself by polling. The DOM is built
// with textContent only (no HTML from data), so a device id can never inject markup.
"use strict";

const API = "/api/v1";
const POLL_MS = 5000;
let me = null; // {name, role, csrf}
let timer = null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function link(href, text) { return h("a", { href }, text); }
function fmtTime(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "-"; }
function ago(t, now) {
  if (!t) return "never";
  const d = Math.max(0, now - t);
  if (d < 120) return `${d.toFixed(0)}s ago`;
  if (d < 7200) return `${(d / 60).toFixed(0)}m ago`;
  if (d < 172800) return `${(d / 3600).toFixed(0)}h ago`;
  return `${(d / 86400).toFixed(0)}d ago`;
}
function num(v, digits) {
  if (v === null || v === undefined) return "-";
  return typeof v === "number" ? v.toFixed(digits === undefined ? 3 : digits) : String(v);
}
function enc(s) { return encodeURIComponent(s); }

function table(headers, rows, cls) {
  return h("table", { class: cls || null },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => (c instanceof Node && c.tagName === "TD") ? c : h("td", {}, c))))));
}

function banner(text) {
  const b = document.getElementById("banner");
  b.textContent = text || "";
  b.hidden = !text;
}

async function api(path, options) {
  const opts = Object.assign({ headers: {}, credentials: "same-origin" }, options || {});
  if (opts.method && opts.method !== "GET" && me && me.csrf) opts.headers["X-CSRF-Token"] = me.csrf;
  if (opts.body && typeof opts.body !== "string") {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.body);
  }
  const resp = await fetch(API + path, opts);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || resp.statusText));
    err.status = resp.status;
    throw err;
  }
  return data;
}

function canOperate() { return me && (me.role === "operator" || me.role === "admin"); }

// ---- pages -------------------------------------------------------------------------------

function loginPage() {
  const input = h("input", { type: "password", id: "token", placeholder: "efc_...", autocomplete: "off" });
  const msg = h("p", { class: "muted" }, "Paste an API token (edgefleet hub token create NAME --role viewer).");
  const form = h("form", { class: "login", onsubmit: async (e) => {
    e.preventDefault();
    try {
      me = await api("/session", { method: "POST", body: { token: input.value.trim() } });
      input.value = "";
      showWho();
      route();
    } catch (err) { msg.textContent = "Sign-in failed: " + err.message; }
  } }, h("h1", {}, "Sign in"), msg, input, h("button", { type: "submit", id: "signin" }, "Sign in"));
  return form;
}

async function overviewPage() {
  const o = await api("/overview");
  const cards = h("div", { class: "cards" },
    card("devices", o.devices.total), card("online", o.devices.online), card("offline", o.devices.offline, o.devices.offline > 0),
    card("refusing directives", o.states.refusing || 0, (o.states.refusing || 0) > 0),
    card("updating", o.states.updating || 0), card("open alerts", o.alerts.open, o.alerts.open > 0),
    card("active rollouts", o.rollouts.length));
  const groups = table(["group", "devices", "online", "states", "versions"], o.groups.map((g) => [
    link(`#/devices?group=${enc(g.group || "")}`, g.group || "(none)"), g.devices, g.online,
    Object.entries(g.states).map(([k, v]) => `${k} ${v}`).join(", "),
    Object.entries(g.versions).map(([k, v]) => `${k} × ${v}`).join(", ") || "-"]));
  const rollouts = o.rollouts.length ? table(["rollout", "model", "state", "phase", "devices"], o.rollouts.map((r) => [
    link(`#/rollout/${enc(r.rollout)}`, r.rollout), `${r.model}:${r.version}`, r.state, `${r.phase || "-"}/${r.phase_count}`, r.devices]))
    : h("p", { class: "muted" }, "no active rollouts");
  const drift = o.drift_models === null ? h("p", { class: "muted" }, "looking up the models with telemetry...")
    : o.drift_models.length ? h("ul", {}, o.drift_models.map((m) =>
      h("li", {}, link(`#/drift/${enc(m.model)}?scope=device`, `${m.model} (versions ${m.versions.join(", ")})`))))
      : h("p", { class: "muted" }, "no telemetry yet");
  const alerts = o.alerts.items.length ? alertTable(o.alerts.items, false) : h("p", { class: "muted" }, "no open alerts");
  const refusing = o.refusing.length ? h("p", {}, "Refusing: ", o.refusing.map((d, i) => [i ? ", " : "", link(`#/device/${enc(d)}`, d)])) : null;
  return h("div", {}, h("h1", {}, "Fleet overview"), cards, refusing,
    h("h2", {}, "Groups"), groups, h("h2", {}, "Active rollouts"), rollouts,
    h("h2", {}, "Drift by model"), drift, h("h2", {}, "Open alerts"), alerts);
}

function card(label, n, bad) {
  return h("div", { class: "card" + (bad ? " bad" : "") }, h("div", { class: "n" }, n), h("div", { class: "muted" }, label));
}

async function devicesPage(params) {
  const q = new URLSearchParams(params);
  if (!q.get("limit")) q.set("limit", "100");
  const d = await api("/devices?" + q.toString());
  const offset = d.offset;
  const pager = h("div", { class: "pager" },
    h("button", { disabled: offset === 0 ? true : null, onclick: () => { q.set("offset", Math.max(0, offset - d.limit)); location.hash = "#/devices?" + q.toString(); } }, "previous"),
    `${d.total ? offset + 1 : 0}–${Math.min(offset + d.limit, d.total)} of ${d.total}`,
    h("button", { disabled: offset + d.limit >= d.total ? true : null, onclick: () => { q.set("offset", offset + d.limit); location.hash = "#/devices?" + q.toString(); } }, "next"));
  return h("div", {}, h("h1", {}, "Devices"), pager,
    table(["device", "status", "last seen", "group", "profile", "state", "models", "refusal"], d.items.map((x) => [
      link(`#/device/${enc(x.device)}`, x.device), x.online ? "online" : "offline", ago(x.last_seen, d.now),
      x.group || "-", x.profile, h("td", { class: "state-" + x.state }, x.state + (x.revoked ? " (revoked)" : "")),
      Object.entries(x.models).map(([m, v]) => `${m}:v${v.version === null ? "-" : v.version}${v.deployment ? " (" + v.deployment + ")" : ""}`).join(", ") || "-",
      x.refusal || ""])));
}

async function devicePage(id) {
  const d = await api("/devices/" + enc(id));
  const models = table(["model", "running", "deployment", "reason", "desired"], Object.keys(Object.assign({}, d.models, d.desired)).sort().map((m) => [
    m, d.models[m] ? num(d.models[m].version, 0) : "-", (d.models[m] && d.models[m].deployment) || "-",
    (d.models[m] && d.models[m].reason) || "", d.desired[m] !== undefined ? d.desired[m] : "-"]));
  const history = d.history.length ? table(["rollout", "model", "from", "install", "assigned", "settled", "reason", "rollout state"], d.history.map((x) => [
    link(`#/rollout/${enc(x.rollout)}`, x.rollout), `${x.model}:${x.version}`, x.previous_version === null ? "-" : x.previous_version,
    h("td", { class: "state-" + x.install }, x.install), fmtTime(x.assigned_at), fmtTime(x.settled_at), x.detail || "", x.rollout_state]))
    : h("p", { class: "muted" }, "not part of any rollout");
  return h("div", {}, h("h1", {}, `Device ${d.device}`),
    h("div", { class: "cards" }, card(d.online ? "online" : "offline", d.online ? "●" : "○", !d.online),
      card("last seen", ago(d.last_seen, d.now)), card("state", d.state, d.state === "refusing"),
      card("telemetry window", d.window_s ? d.window_s + " s" : "-")),
    d.refusal ? h("p", { class: "state-refusing", id: "refusal" }, "Refuses the hub's directive: " + d.refusal) : null,
    h("p", {}, `group ${d.group || "-"}, profile ${d.profile}, directive seq ${num(d.directive.latest_seq, 0)} (device reports ${num(d.directive.device_seq, 0)})`,
      d.directive.behind ? " — behind" : ""),
    h("h2", {}, "Models"), models, h("h2", {}, "Install, probation and rollback history"), history);
}

async function rolloutsPage() {
  const r = await api("/rollouts");
  return h("div", {}, h("h1", {}, "Rollouts"), r.items.length ? table(["rollout", "model", "state", "phase", "devices", "updated", "reason"], r.items.map((x) => [
    link(`#/rollout/${enc(x.rollout)}`, x.rollout), `${x.model}:${x.version}`, x.state, `${x.phase || "-"}/${x.phase_count}`, x.devices, fmtTime(x.updated_at), x.reason]))
    : h("p", { class: "muted" }, "no rollouts"));
}

async function rolloutPage(id) {
  const r = await api("/rollouts/" + enc(id));
  const actions = [];
  if (canOperate()) {
    const act = (name, cls) => h("button", { class: cls || null, id: "action-" + name, onclick: async () => {
      try { await api(`/rollouts/${enc(id)}/${name}`, { method: "POST", body: { reason: `${name} from the dashboard by ${me.name}` } }); route(); }
      catch (err) { banner(`${name} failed: ${err.message}`); }
    } }, name);
    if (r.state === "running" || r.state === "created") actions.push(act("pause"));
    if (r.state === "paused") actions.push(act("resume"));
    if (["created", "running", "paused"].includes(r.state)) actions.push(act("abort", "danger"));
    if (["running", "paused", "aborted", "completed"].includes(r.state)) actions.push(act("rollback", "danger"));
  }
  const phases = table(["phase", "devices", "cumulative", "counts"], r.phases.map((p) => [
    (p.current ? "▶ " : "") + p.phase, p.devices, p.cumulative_devices, Object.entries(p.counts).map(([k, v]) => `${k} ${v}`).join(", ")]));
  const gates = r.decision ? table(["gate", "status", "value", "threshold", "evidence"], r.decision.gates.map((g) => [
    g.name, h("td", { class: "status-" + g.status.replace("/", "") }, g.status), num(g.value), num(g.threshold), g.detail])) : null;
  const waiting = r.waiting.length ? table(["waits for", "until", ""], r.waiting.map((w) => [
    `${w.gate}: ${w.waits_for}`, w.until ? fmtTime(w.until) : "-", w.overdue ? "overdue" : (w.until ? `in ${Math.max(0, w.until - r.now).toFixed(0)} s` : "")])) : null;
  const devices = table(["device", "phase", "online", "install", "detail"], r.devices.map((d) => [
    link(`#/device/${enc(d.device)}`, d.device), d.phase, d.online ? "yes" : "no", d.install, d.detail || ""]));
  return h("div", {}, h("h1", {}, `Rollout ${r.rollout}: ${r.model}:${r.version}`),
    h("p", { class: "headline", id: "rollout-state" }, r.headline),
    h("p", {}, `to ${r.selector}; state `, h("strong", { id: "state" }, r.state), `, phase ${r.phase || "-"}/${r.phase_count}`), h("div", {}, actions),
    h("h2", {}, "Phases"), phases,
    gates ? [h("h2", {}, `Gates: ${r.decision.verdict}`), gates] : null,
    waiting ? [h("h2", {}, "Why it waits"), waiting] : null,
    h("h2", {}, "Devices"), devices,
    h("h2", {}, "History"), table(["at", "event", "detail"], r.events.map((e) => [fmtTime(e.at), e.event, e.detail])));
}

async function driftIndexPage() {
  const m = await api("/drift");
  return h("div", {}, h("h1", {}, "Drift"), m.items.length ? h("ul", {}, m.items.map((x) =>
    h("li", {}, link(`#/drift/${enc(x.model)}?scope=group`, `${x.model} by group`), " · ", link(`#/drift/${enc(x.model)}?scope=device`, "by device"))))
    : h("p", { class: "muted" }, "no telemetry yet"));
}

function heatColor(cell) {
  if (!cell || cell.psi === null || cell.psi === undefined) return "#f2f4f7";
  if (cell.verdict === "drift") return "#f97066";
  if (cell.verdict === "warn") return "#fdb022";
  const a = Math.min(1, cell.psi / 0.2);
  return `rgba(23, 178, 106, ${0.15 + 0.25 * (1 - a)})`;
}

function spark(points, key) {
  const w = 240, hgt = 40;
  const vals = points.map((p) => (key ? (p.features[key] || {}).psi : p.drift_share)).map((v) => (typeof v === "number" ? v : 0));
  const max = Math.max(0.25, ...vals);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("width", w); svg.setAttribute("height", hgt);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#1d2a3a");
  line.setAttribute("points", vals.map((v, i) => `${(i / Math.max(1, vals.length - 1)) * (w - 4) + 2},${hgt - 2 - (v / max) * (hgt - 4)}`).join(" "));
  svg.append(line);
  return svg;
}

function bars(h) {
  // Reference shares as grey bars, the current window's as dark outlines on top.
  const w = 240, hgt = 60, ns = "http://www.w3.org/2000/svg";
  const n = h.reference ? h.reference.length : 0;
  const max = Math.max(0.01, ...(h.reference || []), ...(h.current || []));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("width", w); svg.setAttribute("height", hgt);
  const bw = n ? (w - 4) / n : 0;
  const draw = (vals, fill, stroke) => (vals || []).forEach((v, i) => {
    const r = document.createElementNS(ns, "rect");
    const bh = (v / max) * (hgt - 4);
    r.setAttribute("x", 2 + i * bw + 1); r.setAttribute("y", hgt - 2 - bh);
    r.setAttribute("width", Math.max(1, bw - 2)); r.setAttribute("height", bh);
    r.setAttribute("fill", fill); if (stroke) r.setAttribute("stroke", stroke);
    svg.append(r);
  });
  draw(h.reference, "#d0d5dd", null);
  draw(h.current, "none", "#1d2a3a");
  return svg;
}

async function driftPage(model, params) {
  const scope = params.get("scope") || "group";
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const d = await api(`/drift/${enc(model)}?scope=${enc(scope)}&offset=${offset}`);
  const drifting = d.drifting.length ? table(["scope", "features", "open alerts"], d.drifting.map((s) => [
    s.kind === "device" ? link(`#/device/${enc(s.name)}`, `device ${s.name}`) : s.kind === "group" ? link(`#/devices?group=${enc(s.name)}`, `group ${s.name}`) : `${s.kind} ${s.name}`,
    s.features.join(", ") || "-", s.alerts.length ? s.alerts.join(", ") : "-"])) : null;
  let heat = null;
  if (d.heatmap) {
    const hm = d.heatmap;
    heat = h("table", { class: "heat" },
      h("thead", {}, h("tr", {}, h("th", {}, scope), h("th", {}, "verdict"), hm.features.map((f) => h("th", {}, f)))),
      h("tbody", {}, hm.rows.map((r) => h("tr", {},
        h("td", {}, scope === "device" ? link(`#/device/${enc(r.scope)}`, r.scope) : r.scope),
        h("td", { class: "verdict-" + r.verdict }, r.verdict),
        hm.features.map((f) => { const c = r.cells[f]; const td = h("td", { class: "cell", title: c ? `${f}: PSI ${num(c.psi)} (${c.verdict})` : f }, c ? num(c.psi, 2) : ""); td.style.background = heatColor(c); return td; })))));
  }
  const features = Object.keys(d.fleet.features || {}).sort();
  const series = d.timeline.length > 1 ? table(["feature", "PSI over time", "pooled verdict"], [["(drift share)", spark(d.timeline, null), ""]].concat(
    features.map((f) => [f, spark(d.timeline, f), h("td", { class: "verdict-" + d.fleet.features[f].verdict }, d.fleet.features[f].verdict)]))) : null;
  const hist = Object.keys(d.histograms || {}).length ? table(["feature", "reference (grey) vs current (outline)", "PSI"],
    Object.entries(d.histograms).map(([f, hg]) => [f, bars(hg), num(((d.fleet.features || {})[f] || {}).psi)])) : null;
  return h("div", {}, h("h1", {}, `Drift of ${d.model}:${d.version}`),
    h("p", { class: "headline" + (d.drifting.length ? " drift" : ""), id: "drift-headline" }, d.headline),
    h("p", { class: "muted", id: "drift-as-of" }, d.computing
      ? "Computing the drift of every device: the open alerts are shown now, the verdicts when they are ready (this page refreshes by itself)."
      : `Verdicts as of ${fmtTime(d.as_of)}, windows since ${d.since ? fmtTime(d.since) : "the first stored"}.`),
    h("p", {}, "Break down by ", link(`#/drift/${enc(model)}?scope=group`, "group"), " · ", link(`#/drift/${enc(model)}?scope=device`, "device"), " · ", link(`#/drift/${enc(model)}?scope=profile`, "profile")),
    drifting ? [h("h2", {}, "Drifting scopes"), drifting] : null,
    heat ? [h("h2", {}, `Feature × ${scope} (PSI)`), heat, heatPager(model, scope, d.heatmap)] : null,
    series ? [h("h2", {}, "Time series"), series] : null,
    hist ? [h("h2", {}, "Reference vs current (pooled fleet)"), hist] : null);
}

function heatPager(model, scope, hm) {
  // Drifting scopes come first; a large fleet's rows come a page at a time.
  if (!hm.total || hm.total <= hm.rows.length) return null;
  const from = hm.offset || 0, to = from + hm.rows.length, size = hm.limit || hm.rows.length;
  const at = (o) => `#/drift/${enc(model)}?scope=${enc(scope)}&offset=${o}`;
  return h("p", { class: "muted" }, `${scope}s ${from + 1}-${to} of ${hm.total} `,
    from > 0 ? link(at(Math.max(0, from - size)), "previous") : null, from > 0 && to < hm.total ? " · " : null,
    to < hm.total ? link(at(to), "next") : null);
}

function alertTable(items, withAck) {
  return table(["id", "severity", "rule", "model", "scope", "opened", "summary", ""], items.map((a) => [
    a.id, h("td", { class: "sev-" + a.severity }, a.severity), a.rule, `${a.model}:${a.version}`,
    a.scope_kind === "device" ? link(`#/device/${enc(a.scope)}`, `device ${a.scope}`) : a.scope_kind === "fleet" ? link(`#/drift/${enc(a.model)}?scope=group`, "fleet") : `${a.scope_kind} ${a.scope}`,
    fmtTime(a.opened_at), a.summary,
    a.acknowledged ? `acknowledged by ${a.acknowledged.by}` : (withAck && canOperate() && a.status === "open" ? h("button", { onclick: async () => {
      try { await api(`/alerts/${a.id}/ack`, { method: "POST", body: { note: "" } }); route(); } catch (err) { banner("acknowledge failed: " + err.message); }
    } }, "acknowledge") : "")]));
}

async function alertsPage(params) {
  const status = params.get("status") || "open";
  const a = await api("/alerts?status=" + enc(status));
  return h("div", {}, h("h1", {}, "Alerts"),
    h("p", {}, link("#/alerts?status=open", "open"), " · ", link("#/alerts?status=resolved", "resolved"), " · ", link("#/alerts?status=all", "all")),
    a.items.length ? alertTable(a.items, true) : h("p", { class: "muted" }, `no ${status} alerts`));
}

// ---- routing and polling -------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

async function render() {
  const { parts, params } = parseHash();
  const [page, arg] = parts;
  if (!page) return overviewPage();
  if (page === "devices") return devicesPage(params);
  if (page === "device" && arg) return devicePage(arg);
  if (page === "rollouts") return rolloutsPage();
  if (page === "rollout" && arg) return rolloutPage(arg);
  if (page === "drift" && arg) return driftPage(arg, params);
  if (page === "drift") return driftIndexPage();
  if (page === "alerts") return alertsPage(params);
  return h("p", {}, "no such page");
}

let rendering = false;
async function route() {
  const main = document.getElementById("main");
  if (!me) { main.replaceChildren(loginPage()); return; }
  if (rendering) return;
  rendering = true;
  try {
    const view = await render();
    main.replaceChildren(view);
    banner("");
    document.body.dataset.loaded = location.hash || "#/";
  } catch (err) {
    if (err.status === 401) { me = null; showWho(); main.replaceChildren(loginPage()); }
    else banner(err.message);
  } finally { rendering = false; }
}

function showWho() {
  const who = document.getElementById("who");
  if (!me) { who.replaceChildren(); return; }
  who.replaceChildren(`${me.name} (${me.role})`, h("button", { onclick: async () => {
    await api("/session", { method: "DELETE" }).catch(() => null);
    me = null; showWho(); route();
  } }, "sign out"));
}

async function start() {
  try {
    const s = await api("/session");
    me = s.authenticated ? s : null;
  } catch (err) { banner(err.message); }
  showWho();
  window.addEventListener("hashchange", route);
  await route();
  timer = setInterval(() => { if (me && document.visibilityState === "visible") route(); }, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
