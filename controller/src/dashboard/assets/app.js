// Ranger dashboard: a single page with hash routes, plain JavaScript.
//
// State comes from the JSON API under /api/ (the same services rangerctl
// calls); /api/events (server-sent events) says when to fetch it again, so
// every page updates live. Elements carry stable ids and data-* attributes
// (data-node-id, data-range-id, data-op-id) for scripts and the browser test.
"use strict";

const state = {
  status: null, // {role, leader}
  nodes: [],
  ranges: [],
  operations: { in_flight: [], recent: [] },
  balance: null,
  history: { interval_ms: 0, samples: [] },
  events: [], // latest controller events, newest first
  error: null, // the API's error body when reads fail (e.g. a standby)
  sort: { key: "id", dir: 1 },
  filter: "",
  explain: {}, // range id -> explain lines (or an error)
  rangeEvents: {}, // range id -> its logged events, newest first (or an error line)
  action: null, // the last action's {state, text}: pending, ok or error
};

const MAX_EVENTS = 50;

// ---------------------------------------------------------------------------
// DOM helpers

// h("td", {class: "x", "data-range-id": 3}, "text", childNode...)
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function fmt(n, digits = 1) {
  return Number.isFinite(n) ? n.toFixed(digits) : "–";
}

function ms(n) {
  if (n < 1000) return `${n} ms`;
  if (n < 60000) return `${(n / 1000).toFixed(1)} s`;
  return `${Math.round(n / 60000)} min`;
}

// A colour for load 0..1 (pale to hot).
function heat(fraction) {
  const f = Math.max(0, Math.min(1, fraction || 0));
  return `hsl(${Math.round(210 - 210 * f)}, ${Math.round(40 + 50 * f)}%, ${Math.round(94 - 44 * f)}%)`;
}

// ---------------------------------------------------------------------------
// API

async function api(path, options) {
  const response = await fetch(`/api/${path}`, options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = { error: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) {
    const error = new Error(body.error || response.statusText);
    error.body = body;
    error.status = response.status;
    throw error;
  }
  return body;
}

function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body || {}),
  });
}

let refreshing = null;
let refreshAgain = false;

// Fetches everything the pages show, then renders the current page. Calls
// that arrive while one runs are folded into one more run.
async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      await load();
    } while (refreshAgain);
    refreshing = null;
  })();
  return refreshing;
}

async function load() {
  try {
    state.status = await api("status");
  } catch (e) {
    state.status = null;
  }
  try {
    const [nodes, ranges, operations, balance, history] = await Promise.all([
      api("nodes"),
      api("ranges"),
      api("operations"),
      api("balance"),
      api("history"),
    ]);
    Object.assign(state, { nodes, ranges, operations, balance, history, error: null });
  } catch (e) {
    state.error = e.body || { error: String(e) };
  }
  const route = currentRoute();
  if (route.page === "range") await loadExplain(route.id);
  render();
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.refreshed = String(Date.now());
}

async function loadExplain(id) {
  try {
    state.explain[id] = (await api(`ranges/${encodeURIComponent(id)}/explain`)).lines;
  } catch (e) {
    state.explain[id] = [`(${e.message})`];
  }
  try {
    const events = (await api(`ranges/${encodeURIComponent(id)}/events`)).events;
    state.rangeEvents[id] = events.map((e) => `${new Date(e.at_ms).toLocaleTimeString()}  ${e.message}`);
  } catch (e) {
    state.rangeEvents[id] = [`(${e.message})`];
  }
}

// ---------------------------------------------------------------------------
// Live updates

let scheduled = null;

function scheduleRefresh() {
  if (scheduled) return;
  scheduled = setTimeout(() => {
    scheduled = null;
    refresh();
  }, 150);
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.onopen = () => live.setAttribute("data-connected", "true");
  source.onerror = () => live.setAttribute("data-connected", "false");
  source.addEventListener("refresh", () => scheduleRefresh());
  source.addEventListener("change", (message) => {
    const event = JSON.parse(message.data);
    state.events.unshift({ at: new Date(), ...event });
    state.events.length = Math.min(state.events.length, MAX_EVENTS);
    scheduleRefresh();
  });
  source.addEventListener("unavailable", (message) => {
    state.error = JSON.parse(message.data);
    live.setAttribute("data-connected", "false");
    scheduleRefresh();
  });
}

// ---------------------------------------------------------------------------
// Derived figures

function activeNodes(range) {
  return range.placements.filter((p) => p.state === "Active").map((p) => p.node);
}

function liveRanges() {
  return state.ranges
    .filter((r) => r.state === "Active")
    .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
}

// Per node: load (requests/s of its active ranges), the capacity it declared,
// and its share of the mean per unit of capacity; the imbalance is the
// balancer's last round's when there is one.
function nodeLoads() {
  const byNode = new Map();
  for (const node of state.nodes) byNode.set(node.id, { load: 0, capacity: node.capacity || null });
  for (const range of state.ranges) {
    for (const node of activeNodes(range)) {
      const entry = byNode.get(node) || { load: 0, capacity: null };
      entry.load += range.load;
      byNode.set(node, entry);
    }
  }
  const perCapacity = [...byNode.values()].map((e) => e.load / (e.capacity || 1));
  const mean = perCapacity.length ? perCapacity.reduce((a, b) => a + b, 0) / perCapacity.length : 0;
  for (const entry of byNode.values()) {
    entry.share = mean > 0 ? entry.load / (entry.capacity || 1) / mean : null;
  }
  const max = Math.max(0, ...perCapacity);
  const balance = state.balance;
  const imbalance = balance && balance.has_round ? balance.imbalance : mean > 0 ? max / mean : null;
  return { byNode, mean, imbalance };
}

// ---------------------------------------------------------------------------
// Routing

function currentRoute() {
  const parts = (location.hash || "#/overview").slice(2).split("/");
  if (parts[0] === "ranges" && parts[1]) return { page: "range", id: decodeURIComponent(parts[1]) };
  const page = ["overview", "keyspace", "ranges", "operations", "admin"].includes(parts[0])
    ? parts[0]
    : "overview";
  return { page };
}

function render() {
  const route = currentRoute();
  const main = document.getElementById("page");
  main.setAttribute("data-page", route.page);
  for (const link of document.querySelectorAll("nav a")) {
    const current = link.dataset.nav === (route.page === "range" ? "ranges" : route.page);
    link.classList.toggle("current", current);
  }
  renderStatus();
  // Keep what the user is typing: admin forms are rendered once per visit.
  if (route.page === "admin" && main.querySelector("#admin-forms")) {
    main.querySelector("#admin-live").replaceWith(adminLive());
    return;
  }
  const view = {
    overview: overviewPage,
    keyspace: keyspacePage,
    ranges: rangesPage,
    range: () => rangePage(route.id),
    operations: operationsPage,
    admin: adminPage,
  }[route.page];
  main.replaceChildren(...view().flat());
}

function renderStatus() {
  const role = document.getElementById("role");
  const banner = document.getElementById("banner");
  const status = state.status;
  role.setAttribute("data-role", status ? status.role : "unknown");
  role.textContent = status ? status.role : "unreachable";
  const leader = (status && status.leader) || (state.error && state.error.leader);
  if (status && status.role !== "leader") {
    banner.hidden = false;
    banner.replaceChildren(
      h("span", { id: "standby-note" }, `This controller is a ${status.role}. `),
      leader
        ? h("span", {}, "The leader is ", h("strong", { id: "leader-address", "data-leader": leader }, leader), ".")
        : h("span", {}, "No leader is known right now."),
    );
  } else if (state.error) {
    banner.hidden = false;
    banner.replaceChildren(h("span", { id: "api-error" }, state.error.error));
  } else {
    banner.hidden = true;
  }
}

// ---------------------------------------------------------------------------
// Pages

function overviewPage() {
  const { byNode, imbalance } = nodeLoads();
  const balance = state.balance;
  const tolerance = balance ? balance.tolerance : 0.1;
  const maxShare = Math.max(1 + tolerance, ...[...byNode.values()].map((e) => e.share || 0));
  const cards = state.nodes.map((node) => {
    const entry = byNode.get(node.id) || { load: 0 };
    const share = entry.share;
    const within = share === null || Math.abs(share - 1) <= tolerance;
    const ranges = node.ranges.filter((r) => r.state === "Active");
    return h(
      "div",
      { class: "node-card", "data-node-id": node.id, "data-draining": node.draining },
      h("h3", {}, node.id),
      h("div", { class: "addr" }, node.address),
      h(
        "div",
        { class: "bar", title: "load per unit of capacity, against the mean (dashed: tolerance band)" },
        h("div", { class: "fill", style: `width:${(100 * (share || 0)) / maxShare}%` }),
        h("div", { class: "band", style: `left:${(100 * (1 - tolerance)) / maxShare}%` }),
        h("div", { class: "band", style: `left:${(100 * (1 + tolerance)) / maxShare}%` }),
      ),
      h(
        "div",
        { "data-field": "load" },
        `${fmt(entry.load)} req/s`,
        entry.capacity ? ` · capacity ${fmt(entry.capacity, 2)}` : "",
        share !== null ? h("span", { class: within ? "ok" : "over" }, ` · ${fmt(share, 2)}× mean`) : "",
      ),
      h("div", { "data-field": "state" }, node.draining ? "draining" : "active", ` · ${ranges.length} range(s)`),
      h(
        "div",
        { class: "chips", "data-field": "ranges" },
        ranges.map((r) => h("a", { class: "chip", href: `#/ranges/${r.id}`, "data-range-id": r.id }, r.id)),
      ),
    );
  });
  const band = `≤ ${fmt(1 + tolerance, 2)}`;
  const balanced = imbalance === null || imbalance <= 1 + tolerance;
  return [
    h("h2", {}, "Nodes"),
    state.nodes.length ? h("div", { class: "cards", id: "nodes" }, cards) : h("p", { id: "nodes", class: "muted" }, "No nodes known."),
    h("h2", {}, "Balance"),
    h(
      "div",
      { class: "panel", id: "balance" },
      h(
        "div",
        {},
        "Imbalance (max over mean): ",
        h("strong", { id: "imbalance", class: balanced ? "ok" : "over" }, imbalance === null ? "idle" : fmt(imbalance, 2)),
        ` · tolerance band ${band}`,
        balance && !balance.has_round ? h("span", { class: "muted" }, " (from range reports: no balancer round yet)") : "",
      ),
      h(
        "div",
        {},
        "Balancer: ",
        h("strong", { id: "balancer-mode" }, balance ? balance.mode : "?"),
        balance && balance.paused_ms > 0 ? h("span", { id: "balancer-paused" }, ` · paused for ${ms(balance.paused_ms)}`) : "",
      ),
      h("div", {}, `${liveRanges().length} active range(s) · ${state.operations.in_flight.length} operation(s) in flight`),
    ),
    h("h2", {}, "Live events"),
    eventLog(),
  ];
}

function eventLog() {
  return h(
    "div",
    { class: "panel events", id: "event-log" },
    state.events.length
      ? state.events.map((e) => h("div", { "data-range-id": e.range || null }, `${e.at.toLocaleTimeString()}  range ${e.range}  ${e.message}`))
      : h("span", { class: "muted" }, "Waiting for controller events…"),
  );
}

function keyspacePage() {
  const ranges = liveRanges();
  const maxLoad = Math.max(0, ...ranges.map((r) => r.load));
  const header = h("tr", {}, h("th", {}, "node \\ range"), ranges.map((r) => h("th", { title: `[${r.start_text}, ${r.end_text})` }, h("a", { href: `#/ranges/${r.id}` }, r.id))));
  const rows = state.nodes.map((node) =>
    h(
      "tr",
      { "data-node-id": node.id },
      h("th", {}, node.id),
      ranges.map((r) => {
        const placement = r.placements.find((p) => p.node === node.id);
        return h(
          "td",
          {
            class: placement ? "cell placed" : "cell",
            "data-range-id": r.id,
            "data-node-id": node.id,
            "data-state": placement ? placement.state : null,
            style: placement ? `background:${heat(maxLoad > 0 ? r.load / maxLoad : 0)}` : null,
            title: placement ? `${placement.state} · ${fmt(r.load)} req/s` : null,
          },
          placement ? (placement.state === "Active" ? fmt(r.load) : placement.state) : "",
        );
      }),
    ),
  );
  const keys = h("tr", {}, h("th", {}, "keys"), ranges.map((r) => h("td", { class: "cell muted" }, `${r.start_text}…`)));
  return [
    h("h2", {}, "Keyspace map"),
    h("p", { class: "muted" }, "Key ranges (columns, in key order) by node (rows), coloured by requests per second."),
    h("table", { class: "map", id: "keyspace-map" }, h("thead", {}, header), h("tbody", {}, rows, keys)),
    h("h2", {}, "Load over time"),
    heatmap(),
  ];
}

// Rows: today's ranges in key order; columns: samples, oldest first. A cell
// is the load of the range that held the row's start key at that moment.
function heatmap() {
  const samples = state.history.samples || [];
  const latest = samples.length ? samples[samples.length - 1].ranges : [];
  if (!samples.length) return h("p", { id: "heatmap", class: "muted" }, "No samples yet.");
  let maxLoad = 0;
  for (const s of samples) for (const r of s.ranges) maxLoad = Math.max(maxLoad, r.load);
  const cellsOf = (row) =>
    samples.map((s) => {
      const holder = s.ranges.find((r) => r.start <= row.start && (r.end === "" || row.start < r.end));
      const load = holder ? holder.load : null;
      return h("div", {
        class: "hcell",
        style: `background:${load === null ? "#fff" : heat(maxLoad > 0 ? load / maxLoad : 0)}`,
        title: holder ? `${new Date(s.at_ms).toLocaleTimeString()} · range ${holder.id} · ${fmt(load)} req/s` : "",
      });
    });
  const grid = h(
    "div",
    {
      class: "heatmap",
      id: "heatmap",
      "data-samples": samples.length,
      style: `grid-template-columns: max-content repeat(${samples.length}, minmax(6px, 1fr))`,
    },
    latest.map((row) => [h("div", { class: "label", "data-range-id": row.id }, `${row.id} [${row.start_text}, ${row.end_text})`), cellsOf(row)]),
  );
  const span = ms(samples[samples.length - 1].at_ms - samples[0].at_ms);
  return [grid, h("div", { class: "legend" }, `${samples.length} samples every ${ms(state.history.interval_ms)} over ${span}; peak ${fmt(maxLoad)} req/s.`)];
}

function rangesPage() {
  const columns = [
    ["id", "Range", (r) => r.id],
    ["start", "Start", (r) => r.start],
    ["end", "End", (r) => r.end],
    ["state", "State", (r) => r.state],
    ["nodes", "Nodes", (r) => activeNodes(r).join(",")],
    ["load", "Load (req/s)", (r) => r.load],
    ["keys", "Keys", (r) => Math.max(0, ...r.placements.map((p) => p.keys || 0))],
  ];
  const column = columns.find((c) => c[0] === state.sort.key) || columns[0];
  const filter = state.filter.trim().toLowerCase();
  const text = (r) => `${r.id} ${r.start_text} ${r.end_text} ${r.state} ${r.placements.map((p) => `${p.node} ${p.state}`).join(" ")}`.toLowerCase();
  const rows = state.ranges
    .filter((r) => !filter || text(r).includes(filter))
    .sort((a, b) => {
      const x = column[2](a);
      const y = column[2](b);
      return (x < y ? -1 : x > y ? 1 : 0) * state.sort.dir;
    });
  const input = h("input", {
    id: "ranges-filter",
    type: "search",
    placeholder: "filter: id, key, node, state",
    value: state.filter,
    oninput: (e) => {
      state.filter = e.target.value;
      const position = e.target.selectionStart;
      render();
      const again = document.getElementById("ranges-filter");
      again.focus();
      again.setSelectionRange(position, position);
    },
  });
  const head = h(
    "tr",
    {},
    columns.map(([key, label]) =>
      h(
        "th",
        {
          "data-sort": key,
          onclick: () => {
            state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
            render();
          },
        },
        label,
        state.sort.key === key ? (state.sort.dir > 0 ? " ▲" : " ▼") : "",
      ),
    ),
  );
  const body = rows.map((r) =>
    h(
      "tr",
      { "data-range-id": r.id, "data-state": r.state },
      h("td", {}, h("a", { href: `#/ranges/${r.id}` }, r.id)),
      h("td", {}, r.start_text),
      h("td", {}, r.end_text),
      h("td", { "data-field": "state" }, r.state, r.unavailable ? h("span", { class: "over" }, " unavailable") : ""),
      h("td", { "data-field": "nodes" }, activeNodes(r).join(",")),
      h("td", { "data-field": "load" }, fmt(r.load)),
      h("td", {}, Math.max(0, ...r.placements.map((p) => p.keys || 0))),
    ),
  );
  return [
    h("h2", {}, `Ranges (${rows.length} of ${state.ranges.length})`),
    input,
    h("table", { id: "ranges-table" }, h("thead", {}, head), h("tbody", {}, body)),
  ];
}

function rangePage(id) {
  const range = state.ranges.find((r) => String(r.id) === String(id));
  if (!range) return [h("h2", {}, `Range ${id}`), h("p", { id: "range-detail", class: "muted" }, "No such range.")];
  const ops = [
    ...state.operations.in_flight.map((o) => ({ ...o, result: o.phase, duration_ms: o.age_ms })),
    ...state.operations.recent,
  ].filter((o) => o.ranges.includes(range.id));
  const nodeOptions = [h("option", { value: "" }, "any node"), ...state.nodes.map((n) => h("option", { value: n.id }, n.id))];
  return [
    h("h2", {}, `Range ${range.id}: [${range.start_text}, ${range.end_text})`),
    h(
      "div",
      { class: "panel", id: "range-detail", "data-range-id": range.id, "data-state": range.state },
      h("div", {}, `State ${range.state} · load ${fmt(range.load)} req/s`),
      range.parents.length ? h("div", {}, "Parents: ", range.parents.map((p) => h("a", { class: "chip", href: `#/ranges/${p}` }, p))) : "",
      range.children.length ? h("div", {}, "Children: ", range.children.map((c) => h("a", { class: "chip", href: `#/ranges/${c}` }, c))) : "",
      range.unavailable ? h("div", { class: "over" }, `Unavailable for ${ms(range.unavailable.for_ms)}: ${range.unavailable.reason}`) : "",
    ),
    h("h2", {}, "Placements"),
    h(
      "table",
      { id: "range-placements" },
      h("thead", {}, h("tr", {}, ["Node", "State", "Node reports", "Keys", "Bytes", "Reads/s", "Writes/s"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        range.placements.map((p) =>
          h(
            "tr",
            { "data-node-id": p.node, "data-state": p.state },
            h("td", {}, p.node),
            h("td", {}, p.state),
            h("td", {}, p.remote_state || "–"),
            h("td", {}, p.keys ?? "–"),
            h("td", {}, p.bytes ?? "–"),
            h("td", {}, fmt(p.reads_per_second)),
            h("td", {}, fmt(p.writes_per_second)),
          ),
        ),
      ),
    ),
    h("h2", {}, "Move"),
    h(
      "form",
      { class: "action", id: "range-move-form", onsubmit: (e) => act(e, "move", { range: range.id, node: e.target.elements.node.value }) },
      h("label", {}, "to node", h("select", { name: "node", id: "range-move-node" }, nodeOptions)),
      h("button", { class: "primary", id: "range-move-submit", type: "submit" }, "Move"),
    ),
    actionResult(),
    h("h2", {}, "Operations on this range"),
    opsTable("range-ops", ops, false),
    h("h2", {}, "Explain"),
    h("div", { class: "panel" }, h("pre", { class: "explain", id: "range-explain" }, (state.explain[range.id] || ["…"]).join("\n"))),
    h("h2", {}, "State history"),
    h(
      "div",
      { class: "panel" },
      h(
        "pre",
        { class: "explain", id: "range-history" },
        (state.rangeEvents[range.id] && state.rangeEvents[range.id].length
          ? state.rangeEvents[range.id]
          : ["No events logged for this range since this controller started."]
        ).join("\n"),
      ),
    ),
  ];
}

function opsTable(id, ops, cancellable) {
  if (!ops.length) return h("p", { id, class: "muted" }, "None.");
  return h(
    "table",
    { id },
    h("thead", {}, h("tr", {}, ["Op", "What", "By", "Ranges", cancellable ? "Phase" : "Result", cancellable ? "Age" : "Took", ""].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      ops.map((o) =>
        h(
          "tr",
          { "data-op-id": o.id, class: o.result && o.result !== "ok" && !cancellable && o.error ? "failed" : null },
          h("td", {}, o.id),
          h("td", {}, o.description),
          h("td", {}, o.origin),
          h("td", {}, o.ranges.map((r) => h("a", { class: "chip", href: `#/ranges/${r}` }, r))),
          h("td", { "data-field": "result", title: o.error || "" }, cancellable ? o.phase : o.result, o.error ? `: ${o.error}` : ""),
          h("td", {}, ms(cancellable ? o.age_ms : o.duration_ms)),
          h(
            "td",
            {},
            cancellable
              ? h("button", { class: "danger cancel", "data-op-id": o.id, onclick: (e) => act(e, "cancel", { operation: o.id }) }, "Cancel")
              : "",
          ),
        ),
      ),
    ),
  );
}

function operationsPage() {
  return [
    h("h2", {}, "In flight"),
    opsTable("ops-in-flight", state.operations.in_flight, true),
    actionResult(),
    h("h2", {}, "Recent (newest first)"),
    opsTable("ops-recent", state.operations.recent, false),
  ];
}

function field(label, attrs) {
  return h("label", {}, label, h("input", attrs));
}

function adminPage() {
  const nodes = h("datalist", { id: "node-ids" }, state.nodes.map((n) => h("option", { value: n.id })));
  const forms = h(
    "div",
    { class: "panel", id: "admin-forms" },
    nodes,
    h(
      "form",
      { class: "action", id: "move-form", onsubmit: (e) => act(e, "move", values(e.target, ["range", "node"])) },
      h("strong", {}, "Move"),
      field("range", { name: "range", id: "move-range", required: true, size: 6 }),
      field("to node (blank: any)", { name: "node", id: "move-node", list: "node-ids", size: 10 }),
      h("button", { class: "primary", id: "move-submit", type: "submit" }, "Move"),
    ),
    h(
      "form",
      { class: "action", id: "split-form", onsubmit: (e) => act(e, "split", values(e.target, ["range", "key", "node_left", "node_right"])) },
      h("strong", {}, "Split"),
      field("range", { name: "range", id: "split-range", required: true, size: 6 }),
      field("at key (text, hex:…, b64:…)", { name: "key", id: "split-key", required: true, size: 14 }),
      field("left node", { name: "node_left", id: "split-left", list: "node-ids", size: 10 }),
      field("right node", { name: "node_right", id: "split-right", list: "node-ids", size: 10 }),
      h("button", { class: "primary", id: "split-submit", type: "submit" }, "Split"),
    ),
    h(
      "form",
      { class: "action", id: "join-form", onsubmit: (e) => act(e, "join", values(e.target, ["left", "right", "node"])) },
      h("strong", {}, "Join"),
      field("left range", { name: "left", id: "join-left", required: true, size: 6 }),
      field("right range", { name: "right", id: "join-right", required: true, size: 6 }),
      field("onto node", { name: "node", id: "join-node", list: "node-ids", size: 10 }),
      h("button", { class: "primary", id: "join-submit", type: "submit" }, "Join"),
    ),
    h(
      "form",
      { class: "action", id: "drain-form", onsubmit: (e) => act(e, e.submitter && e.submitter.value === "undrain" ? "undrain" : "drain", values(e.target, ["node"])) },
      h("strong", {}, "Drain"),
      field("node", { name: "node", id: "drain-node", list: "node-ids", required: true, size: 10 }),
      h("button", { class: "primary", id: "drain-submit", type: "submit", value: "drain" }, "Drain"),
      h("button", { id: "undrain-submit", type: "submit", value: "undrain" }, "Undrain"),
    ),
    h(
      "form",
      { class: "action", id: "cancel-form", onsubmit: (e) => act(e, "cancel", values(e.target, ["operation"])) },
      h("strong", {}, "Cancel"),
      field("operation", { name: "operation", id: "cancel-operation", required: true, size: 6 }),
      h("button", { class: "danger", id: "cancel-submit", type: "submit" }, "Cancel operation"),
    ),
    h(
      "form",
      { class: "action", id: "pause-form", onsubmit: (e) => act(e, "balance/pause", values(e.target, ["duration"])) },
      h("strong", {}, "Balancer"),
      field("pause for", { name: "duration", id: "pause-duration", value: "10m", required: true, size: 6 }),
      h("button", { id: "pause-submit", type: "submit" }, "Pause"),
      h("button", { id: "resume-submit", type: "button", onclick: (e) => act(e, "balance/resume", {}) }, "Resume"),
    ),
    actionResult(),
  );
  return [h("h2", {}, "Admin actions"), forms, adminLive()];
}

// The part of the admin page that follows the state: where each range is.
function adminLive() {
  const balance = state.balance;
  return h(
    "div",
    { id: "admin-live" },
    h("h2", {}, "Placements"),
    h(
      "p",
      { class: "muted" },
      "Balancer ",
      h("strong", { id: "admin-balancer-mode" }, balance ? balance.mode : "?"),
      balance && balance.paused_ms > 0 ? ` (paused for ${ms(balance.paused_ms)})` : "",
    ),
    h(
      "table",
      { id: "admin-placements" },
      h("thead", {}, h("tr", {}, ["Range", "Keys", "Active on", "Other placements"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        liveRanges().map((r) =>
          h(
            "tr",
            { "data-range-id": r.id },
            h("td", {}, h("a", { href: `#/ranges/${r.id}` }, r.id)),
            h("td", {}, `[${r.start_text}, ${r.end_text})`),
            h("td", { "data-field": "nodes" }, activeNodes(r).join(",")),
            h("td", {}, r.placements.filter((p) => p.state !== "Active").map((p) => `${p.node}:${p.state}`).join(" ")),
          ),
        ),
      ),
    ),
  );
}

function values(form, names) {
  const out = {};
  for (const name of names) {
    const value = form.elements[name].value.trim();
    if (value !== "") out[name] = value;
  }
  return out;
}

// The last action's outcome (kept across re-renders).
function actionResult() {
  const action = state.action;
  return h("div", { id: "action-result", "data-state": action ? action.state : null }, action ? action.text : "");
}

function showAction(actionState, text) {
  state.action = { state: actionState, text };
  const shown = document.getElementById("action-result");
  if (shown) shown.replaceWith(actionResult());
}

// Runs an action: POSTs it, shows "pending" then the answer in #action-result.
async function act(event, path, body) {
  event.preventDefault();
  const what = `${path} ${JSON.stringify(body)}`;
  showAction("pending", `${what}: running…`);
  try {
    await post(path, body);
    showAction("ok", `${what}: done`);
  } catch (e) {
    showAction("error", `${what}: ${e.message}${e.body && e.body.leader ? ` (leader: ${e.body.leader})` : ""}`);
  }
  refresh();
}

window.addEventListener("hashchange", () => {
  document.getElementById("page").replaceChildren();
  refresh();
});
refresh();
connect();
