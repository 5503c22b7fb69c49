// The GNS console: a client of the federation's REST API, signed in with an
// API token kept in this tab's session storage. No build step: plain DOM.
"use strict";

const TOKEN_KEY = "gns-token";
const POLL_MS = 2000;
// A gateway instance without a report for this long is shown as silent
// (they report every 5 s), before the federation's --gateway-timeout.
const STALE_MS = 12000;
let timers = [];
let me = null;

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role") node.setAttribute(k, v);
    else if (k === "for") node.htmlFor = v;
    else node[k] = v;
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
};

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  return { status: resp.status, body: data };
}

function message(body) {
  return (body && (body.message || body.error)) || "unexpected answer";
}

function every(ms, fn) {
  fn();
  timers.push(setInterval(fn, ms));
}

function page(title, ...children) {
  const section = $("#page");
  section.replaceChildren(el("h2", { id: "page-title" }, title), ...children);
  section.hidden = false;
  document.title = title + " · GNS console";
}

// ---- sign in ----------------------------------------------------------
async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  const who = await api("GET", "/v1/whoami");
  if (who.status !== 200) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("#sign-in-error").textContent = who.status === 401
      ? "This token is not valid (unknown, expired or revoked)."
      : "Cannot sign in: " + message(who.body);
    return;
  }
  me = who.body;
  $("#sign-in").hidden = true;
  $("#nav").hidden = false;
  $("#nav-audit").hidden = me.role !== "admin";
  route();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  timers.forEach(clearInterval);
  timers = [];
  $("#page").hidden = true;
  $("#nav").hidden = true;
  $("#sign-in").hidden = false;
  $("#token").value = "";
  $("#token").focus();
}

const canWrite = () => me && (me.role === "editor" || me.role === "admin");

// ---- overview ---------------------------------------------------------
// A cluster's health from its status: the sync phase and its gateway
// instances (the cluster list carries both: one request for all clusters).
function health(cluster) {
  const phase = (cluster.status && cluster.status.phase) || "Pending";
  const items = (cluster.status && cluster.status.gatewayInstances) || [];
  const newest = items.map((i) => Date.parse(i.lastSeen)).filter((t) => !isNaN(t)).sort().pop();
  if (phase === "Unreachable") return ["unhealthy", "API unreachable"];
  if (items.length === 0) return ["unknown", "no gateway has reported"];
  const age = Date.now() - newest;
  if (age > STALE_MS) return ["unhealthy", "gateways silent for " + Math.round(age / 1000) + " s"];
  if (phase !== "Connected") return ["unknown", "sync " + phase];
  return ["healthy", items.length + " gateway instance(s) reporting"];
}

function topology(clusters, links) {
  const w = 720, h = 320, cx = w / 2, cy = h / 2 - 10, rx = 250, ry = 95;
  const pos = {};
  // On an ellipse, the first cluster on the left.
  clusters.forEach((c, i) => {
    const a = Math.PI + (2 * Math.PI * i) / Math.max(clusters.length, 1);
    pos[c.name] = [cx + rx * Math.cos(a), cy + ry * Math.sin(a)];
  });
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("width", String(w));
  svg.setAttribute("role", "img");
  const desc = links.map((l) => `${l.source} to ${l.destination}: ${fmtRate(l.totals.rps)}`).join("; ");
  svg.setAttribute("aria-label", "Clusters and the traffic between them. " + (desc || "No traffic in the last minute."));
  for (const l of links) {
    const a = pos[l.source], b = pos[l.destination];
    if (!a || !b || l.source === l.destination) continue;
    const line = document.createElementNS(ns, "line");
    line.setAttribute("x1", a[0]); line.setAttribute("y1", a[1]);
    line.setAttribute("x2", b[0]); line.setAttribute("y2", b[1]);
    line.setAttribute("stroke", "#1f4e8c"); line.setAttribute("stroke-width", "3");
    svg.append(line);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", (a[0] + b[0]) / 2); t.setAttribute("y", (a[1] + b[1]) / 2 - 6);
    t.setAttribute("text-anchor", "middle");
    t.textContent = `${l.source}→${l.destination} ${fmtRate(l.totals.rps)}, ${fmtPct(l.totals.errorRate)} 5xx, p99 ${fmtMs(l.totals.p99Ms)}`;
    svg.append(t);
  }
  for (const c of clusters) {
    const [x, y] = pos[c.name];
    const node = document.createElementNS(ns, "circle");
    node.setAttribute("cx", x); node.setAttribute("cy", y); node.setAttribute("r", "34");
    node.setAttribute("fill", c.health === "healthy" ? "#0a6b2b" : c.health === "unhealthy" ? "#b00020" : "#8a5a00");
    svg.append(node);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y + 52); t.setAttribute("text-anchor", "middle");
    t.textContent = `${c.name} (${c.health})`;
    svg.append(t);
  }
  return svg;
}

const fmtRate = (r) => (r || 0).toFixed(r >= 10 ? 0 : 2) + " rps";
const fmtPct = (p) => ((p || 0) * 100).toFixed(1) + " %";
const fmtMs = (m) => (m === undefined || m === null ? "–" : m.toFixed(1) + " ms");

function overview() {
  const cards = el("div", { class: "cards", id: "cluster-cards" });
  const picture = el("div", { id: "topology" });
  const status = el("p", { id: "overview-status", class: "hint" });
  page("Overview", picture, cards, status);
  every(POLL_MS, async () => {
    const clusters = await api("GET", "/v1/clusters");
    if (clusters.status !== 200) {
      status.textContent = "Clusters: " + message(clusters.body);
      return;
    }
    const links = await api("GET", "/v1/telemetry/links?window=1m");
    const items = clusters.body.items || [];
    const shown = [];
    for (const c of items) {
      const [state, why] = health(c);
      shown.push({ name: c.name, health: state, why, phase: (c.status && c.status.phase) || "Pending" });
    }
    cards.replaceChildren(...shown.map((c) =>
      el("div", { class: "card", "data-cluster": c.name },
        el("h3", {}, c.name),
        el("p", { class: c.health, "data-health": c.health }, c.health),
        el("p", {}, c.why),
        el("p", {}, "sync: " + c.phase),
        el("a", { href: "#/clusters" }, "details"))));
    picture.replaceChildren(topology(shown, (links.body && links.body.items) || []));
    status.textContent = "Updated " + new Date().toLocaleTimeString() + " (every 2 s, no reload needed).";
  });
}

// ---- global namespaces and services ----------------------------------
// A list endpoint read a page at a time (`limit`), the next page appended
// by a "Show more" button (`continue`): a list of any length costs one
// request per page the user asks for.
const PAGE = 100;
function pagedTable(path, headers, row) {
  const body = el("tbody");
  const status = el("p", { class: "hint", role: "status" });
  const more = el("button", { type: "button", hidden: true, class: "more" }, `Show ${PAGE} more`);
  let token = null;
  const load = async () => {
    const sep = path.includes("?") ? "&" : "?";
    const r = await api("GET", `${path}${sep}limit=${PAGE}${token ? "&continue=" + encodeURIComponent(token) : ""}`);
    if (r.status !== 200) { status.className = "error"; status.textContent = message(r.body); return; }
    body.append(...(r.body.items || []).map(row));
    token = r.body.continue || null;
    more.hidden = !token;
    status.textContent = `${body.rows.length} shown` + (token ? "; there are more." : ".");
  };
  more.addEventListener("click", load);
  const table = el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))), body);
  return { view: [table, status, more], load };
}

async function namespaces() {
  const list = pagedTable("/v1/global-namespaces", ["Global namespace", "Domain", "Members"], (g) =>
    el("tr", { "data-gns": g.name },
      el("td", {}, el("a", { href: `#/gns/${encodeURIComponent(g.name)}` }, g.name)),
      el("td", {}, g.domain || ""),
      el("td", {}, (g.members || []).map((m) => `${m.cluster}/${m.namespace}`).join(", "))));
  page("Global namespaces", ...list.view);
  await list.load();
}

async function namespace(gns) {
  const g = await api("GET", `/v1/global-namespaces/${encodeURIComponent(gns)}`);
  if (g.status !== 200) return page(gns, el("p", { class: "error" }, message(g.body)));
  const list = pagedTable(`/v1/global-namespaces/${encodeURIComponent(gns)}/services`, ["Service", "Name"], (s) =>
    el("tr", { "data-service": s.name },
      el("td", {}, el("a", { href: `#/service/${encodeURIComponent(gns)}/${encodeURIComponent(s.name)}` }, s.name)),
      el("td", {}, `${s.name}.${g.body.domain}`)));
  page(`${gns} (${g.body.domain})`, ...list.view);
  await list.load();
}

function splitBar(rule, index) {
  const total = rule.destinations.reduce((a, d) => a + (d.weight || 0), 0) || 1;
  const label = (d) => [d.cluster, d.subset ? "subset " + d.subset : null,
    d.tags ? Object.entries(d.tags).map(([k, v]) => `${k}=${v}`).join(",") : null].filter(Boolean).join(" ") || "any";
  const bar = el("div", { class: "bar", role: "img", "data-rule": String(index),
    "aria-label": "Split of rule " + index + ": " + rule.destinations.map((d) => `${label(d)} ${Math.round(100 * d.weight / total)} %`).join(", ") });
  for (const d of rule.destinations) {
    const pct = (100 * (d.weight || 0)) / total;
    const part = el("span", { title: label(d) }, `${label(d)} ${Math.round(pct)}%`);
    part.style.width = Math.max(pct, 8) + "%";
    bar.append(part);
  }
  return bar;
}

async function service(gns, svc) {
  const base = `/v1/global-namespaces/${encodeURIComponent(gns)}/services/${encodeURIComponent(svc)}`;
  const [catalog, routing] = await Promise.all([api("GET", base), api("GET", base + "/routing")]);
  const host = `${svc}.${((await api("GET", `/v1/global-namespaces/${encodeURIComponent(gns)}`)).body || {}).domain || gns}`;
  const parts = [];
  // Endpoints per cluster.
  const rows = [];
  for (const [cluster, e] of Object.entries((catalog.body && catalog.body.clusters) || {})) {
    for (const ep of e.ready || []) {
      rows.push(el("tr", {}, el("td", {}, cluster), el("td", {}, ep.address),
        el("td", {}, Object.entries(ep.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")), el("td", {}, "ready")));
    }
    for (const ep of e.notReady || []) rows.push(el("tr", {}, el("td", {}, cluster), el("td", {}, ep.address), el("td", {}, ""), el("td", {}, "not ready")));
  }
  parts.push(el("h3", {}, "Endpoints"), el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Cluster"), el("th", {}, "Address"), el("th", {}, "Labels"), el("th", {}, "State"))), el("tbody", {}, rows)));
  // Routing rules as split bars, and the weight slider.
  parts.push(el("h3", {}, "Routing"));
  if (routing.status === 200) {
    (routing.body.rules || []).forEach((rule, i) => {
      const m = rule.match ? JSON.stringify(rule.match) : "every request";
      parts.push(el("p", {}, `Rule ${i} (${m})`), splitBar(rule, i));
      if (canWrite() && rule.destinations.length === 2) parts.push(weightSlider(base, routing.body, i));
    });
  } else {
    parts.push(el("p", {}, routing.status === 404 ? "No routing: every cluster with endpoints, own first." : message(routing.body)));
  }
  // DNS answers per view: every member cluster's, and outside's.
  const dns = el("table", { id: "dns-views" });
  parts.push(el("h3", {}, "DNS answers per view"), dns);
  dnsViews(host, dns);
  // Traffic per destination.
  const traffic = el("div", { id: "traffic" });
  parts.push(el("h3", {}, "Traffic (last minute)"), traffic);
  parts.push(el("h3", {}, "Trace a request"), traceForm(host));
  page(host, ...parts);
  every(POLL_MS, async () => {
    // Only this service's traffic, not every service's.
    const q = `window=1m&globalNamespace=${encodeURIComponent(gns)}&service=${encodeURIComponent(svc)}`;
    const links = await api("GET", "/v1/telemetry/services?" + q);
    const item = ((links.body && links.body.items) || []).find((s) => s.globalNamespace === gns && s.service === svc);
    traffic.replaceChildren(...(item
      ? [el("p", { "data-rps": String(item.totals.rps) }, `${fmtRate(item.totals.rps)}, ${item.totals.requests} requests, ${fmtPct(item.totals.errorRate)} 5xx, p99 ${fmtMs(item.totals.p99Ms)}`),
         el("table", { id: "traffic-destinations" },
           el("thead", {}, el("tr", {}, ["Served by", "Requests", "rps", "5xx", "p99"].map((h) => el("th", {}, h)))),
           el("tbody", {}, (item.destinations || []).map((d) => el("tr", { "data-destination": d.cluster },
             el("td", {}, d.cluster), el("td", {}, String(d.totals.requests)), el("td", {}, fmtRate(d.totals.rps)),
             el("td", {}, fmtPct(d.totals.errorRate)), el("td", {}, fmtMs(d.totals.p99Ms))))))]
      : [el("p", {}, "No traffic reported in the last minute.")]));
  });
}

async function dnsViews(host, table) {
  // Every view in one request (each cluster's, then outside's).
  const v = await api("POST", "/v1/trace/dns", { host });
  if (v.status !== 200) { table.replaceChildren(el("caption", { class: "error" }, message(v.body))); return; }
  const rows = v.body.views.map((view) =>
    el("tr", { "data-view": view.dns.view, "data-from": view.from || "outside" },
      el("td", {}, view.from ? `clients in ${view.from}` : "outside every cluster"),
      el("td", {}, view.dns.view), el("td", {}, view.dns.answers.join(", ") || "none"), el("td", {}, view.dns.why)));
  table.replaceChildren(el("thead", {}, el("tr", {}, ["Client", "View", "Answers", "Why"].map((h) => el("th", {}, h)))), el("tbody", {}, rows));
}

function weightSlider(base, routing, index) {
  const id = "weight-" + index;
  const rule = routing.rules[index];
  const total = rule.destinations[0].weight + rule.destinations[1].weight;
  const slider = el("input", { id, type: "range", min: 0, max: 100, value: String(Math.round(100 * rule.destinations[0].weight / total)) });
  const out = el("output", { for: id, id: id + "-value" }, slider.value + " / " + (100 - slider.value));
  slider.addEventListener("input", () => { out.textContent = slider.value + " / " + (100 - slider.value); });
  const result = el("p", { role: "status", id: id + "-result" });
  const save = el("button", { type: "button", id: id + "-save" }, "Save weights");
  save.addEventListener("click", async () => {
    const body = JSON.parse(JSON.stringify(routing));
    const w = Number(slider.value);
    body.rules[index].destinations[0].weight = w;
    body.rules[index].destinations[1].weight = 100 - w;
    for (const k of ["service", "status", "createdAt", "updatedAt"]) delete body[k];
    const put = await api("PUT", base + "/routing", body);
    if (put.status === 200 || put.status === 201) {
      routing.resourceVersion = put.body.resourceVersion;
      routing.rules = put.body.rules;
      result.className = "healthy";
      result.textContent = `Saved: ${w} / ${100 - w} (version ${put.body.resourceVersion}).`;
    } else if (put.status === 409) {
      result.className = "error";
      result.textContent = "Not saved: someone changed this routing after you loaded it. Reload the page to see their change, then move the slider again.";
    } else {
      result.className = "error";
      result.textContent = "Not saved: " + message(put.body);
    }
  });
  return el("form", { class: "row", onsubmit: (e) => e.preventDefault() },
    el("label", { for: id }, `Weight of the first destination of rule ${index}`), slider,
    el("label", { for: id + "-value" }, "Split"), out, save, result);
}

function traceForm(host) {
  const from = el("input", { id: "trace-from", name: "from", placeholder: "east (empty: outside)" });
  const ua = el("input", { id: "trace-ua", name: "ua", size: 40 });
  const path = el("input", { id: "trace-path", name: "path", value: "/" });
  const out = el("div", { id: "trace-result", role: "status" });
  const run = el("button", { type: "submit", id: "trace-run" }, "Trace");
  const form = el("form", { class: "row" },
    el("label", { for: "trace-from" }, "From cluster"), from,
    el("label", { for: "trace-ua" }, "User-Agent"), ua,
    el("label", { for: "trace-path" }, "Path"), path, run, out);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { host, path: path.value || "/", headers: {} };
    if (from.value.trim()) body.from = from.value.trim();
    if (ua.value) body.headers["User-Agent"] = ua.value;
    const t = await api("POST", "/v1/trace", body);
    if (t.status !== 200) { out.replaceChildren(el("p", { class: "error" }, message(t.body))); return; }
    const r = t.body;
    out.replaceChildren(
      el("p", {}, `DNS (${r.dns.view}): ${r.dns.answers.join(", ") || "none"}: ${r.dns.why}`),
      el("p", { id: "trace-rule", "data-rule": r.rule.index === null ? "" : String(r.rule.index) },
        r.rule.index === null ? `No rule: ${r.rule.why}` : `Rule ${r.rule.index}: ${r.rule.why}`),
      el("ul", { id: "trace-destinations" }, r.destinations.map((d) =>
        el("li", { "data-cluster": d.cluster, "data-subset": d.subset || "", "data-probability": String(d.probability) },
          `${(d.probability * 100).toFixed(2)} % to ${d.cluster}${d.subset ? " [" + d.subset + "]" : ""} (${d.why})`))),
      el("p", { id: "trace-access" }, (r.access.allowed ? "Allowed: " : "Denied: ") + r.access.why));
  });
  return form;
}

// ---- clusters, problems, audit ---------------------------------------
async function clusters() {
  const list = await api("GET", "/v1/clusters");
  if (list.status !== 200) return page("Clusters", el("p", { class: "error" }, message(list.body)));
  const rows = [];
  for (const c of list.body.items || []) {
    const s = c.status || {};
    const inst = (s.gatewayInstances || []).map((i) => `${i.instance} (config ${i.configVersion}, seen ${i.lastSeen})`).join("; ");
    const rollout = s.gateway ? JSON.stringify(s.gateway) : "";
    rows.push(el("tr", {}, el("td", {}, c.name), el("td", {}, s.phase || "Pending"), el("td", {}, s.message || ""),
      el("td", {}, s.gatewayHealth || ""), el("td", {}, inst), el("td", {}, rollout)));
  }
  page("Clusters", el("table", {}, el("thead", {}, el("tr", {}, ["Cluster", "Sync", "Last message", "Gateways", "Instances", "Rollout"].map((h) => el("th", {}, h)))), el("tbody", {}, rows)));
}

async function problems() {
  const s = await api("GET", "/v1/config/status");
  if (s.status !== 200) return page("Compile problems", el("p", { class: "error" }, message(s.body)));
  const items = s.body.problems || [];
  page("Compile problems", el("p", {}, `Snapshot ${s.body.version}: ${items.length} object(s) left out.`),
    el("ul", {}, items.map((p) => el("li", {}, `${p.kind} ${p.globalNamespace ? p.globalNamespace + "/" : ""}${p.name}: ${p.message}`))));
}

async function audit() {
  const a = await api("GET", "/v1/audit?limit=100");
  if (a.status !== 200) return page("Audit log", el("p", { class: "error" }, message(a.body)));
  page("Audit log", el("table", {}, el("thead", {}, el("tr", {}, ["When", "Who", "What", "Object"].map((h) => el("th", {}, h)))),
    el("tbody", {}, (a.body.items || []).map((e) => el("tr", {}, el("td", {}, e.at || ""), el("td", {}, e.actor || ""), el("td", {}, e.action || ""), el("td", {}, `${e.kind || ""} ${e.name || ""}`))))));
}

// ---- routing ----------------------------------------------------------
function route() {
  timers.forEach(clearInterval);
  timers = [];
  if (!me) return;
  const hash = location.hash.replace(/^#/, "") || "/";
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0) overview();
  else if (parts[0] === "gns" && parts.length === 2) namespace(parts[1]);
  else if (parts[0] === "gns") namespaces();
  else if (parts[0] === "service" && parts.length === 3) service(parts[1], parts[2]);
  else if (parts[0] === "clusters") clusters();
  else if (parts[0] === "problems") problems();
  else if (parts[0] === "audit") audit();
  else page("Not found", el("p", {}, "No such page."));
  $("#main").focus();
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    $("#sign-in-error").textContent = "";
    signIn($("#token").value.trim());
  });
  $("#sign-out").addEventListener("click", signOut);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved); else $("#token").focus();
});
