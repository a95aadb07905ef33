// CoreC console: draws the snapshots /api/events pushes (one a second). Vanilla JS, no
// dependencies, no build step. Everything from the node is set as text, never as HTML:
// member names, tags and alert messages come from peers and plugins.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
  const OWNER_COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                         "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
  const SPARK_POINTS = 120;  // two minutes of snapshots
  const STALE_MS = 5000;     // no snapshot for this long: the link says so

  const METRICS = ["count", "mean", "fitness", "error_rate", "forecast_error", "owner"];
  const hash = new URLSearchParams(location.hash.slice(1));  // #channel=1&metric=mean: a view to link to
  const state = {
    channel: /^\d+$/.test(hash.get("channel") || "") ? Number(hash.get("channel")) : null,
    metric: METRICS.includes(hash.get("metric")) ? hash.get("metric") : "count",
    snap: null, spark: [], source: null, lastAt: 0,
  };

  function saveView() {
    const params = new URLSearchParams();
    if (state.channel !== null) params.set("channel", state.channel);
    if (state.metric !== "count") params.set("metric", state.metric);
    history.replaceState(null, "", "#" + params.toString());
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "style") Object.assign(node.style, v);  // CSSOM: allowed by the page's CSP
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(tbody, rows, columns, empty) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colSpan: columns, text: empty }))]));
  }

  const num = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"));
  const dec = (n, d = 3) => (n === null || n === undefined ? "-" : Number(n).toFixed(d));
  const rate = (n) => (n === null || n === undefined ? "-" : n >= 1e6 ? (n / 1e6).toFixed(2) + " M" : n >= 1e4 ? (n / 1e3).toFixed(1) + " k" : Math.round(n).toLocaleString("en-US"));
  const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
  const counts = (o) => Object.entries(o || {}).map(([k, v]) => `${k} ${num(v)}`).join(", ");
  const blockName = (b) => `${Math.floor(b / 2 ** 32)}:${b % 2 ** 32}`;

  function when(ts) {
    const d = new Date(ts * 1000);
    const pad = (x) => String(x).padStart(2, "0");
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return d.toDateString() === new Date().toDateString() ? time : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
  }

  // -- the link -------------------------------------------------------------------------

  function setLink(linkState, text) {
    const link = $("link");
    link.dataset.state = linkState;
    link.textContent = text || linkState;
  }

  function connect() {
    if (state.source) state.source.close();
    const query = state.channel === null ? "" : `?channel=${state.channel}`;
    const source = new EventSource(`/api/events${query}`);
    source.addEventListener("snapshot", (ev) => {
      state.lastAt = Date.now();
      setLink("live");
      render(JSON.parse(ev.data));
    });
    source.onerror = () => setLink("lost", source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting");
    state.source = source;
  }

  setInterval(() => {
    if (state.lastAt && Date.now() - state.lastAt > STALE_MS && $("link").dataset.state === "live") setLink("lost", "stale");
  }, 1000);

  // -- the parts ------------------------------------------------------------------------

  function render(snap) {
    state.snap = snap;
    renderSummary(snap);
    renderErrors(snap.errors || {});
    renderMembers(snap.members || []);
    renderIngest(snap);
    renderChannels(snap);
    renderHeatmap();
    renderPlacement(snap);
    renderAlerts(snap);
    renderAudit(snap.audit || []);
  }

  function renderSummary(snap) {
    const s = snap.status || {};
    const leader = snap.leader || { leader: s.leader, term: s.term };
    const parts = [
      ["cluster ", s.cluster], [" · served by ", s.name], [" v", s.version],
      [" · leader ", leader.leader || "(none)"], [" term ", leader.term],
      [" · ", num(s.cluster_blocks)], [" blocks", null],
      [" · updated ", when(snap.at)],
    ];
    $("summary").replaceChildren(...parts.flatMap(([label, value]) =>
      value === null || value === undefined ? [label] : [label, el("b", { text: String(value) })]));
    document.title = `CoreC · ${s.cluster || ""} · ${s.name || ""}`;
  }

  function renderErrors(errors) {
    const box = $("errors");
    const items = Object.entries(errors);
    box.hidden = items.length === 0;
    box.replaceChildren(...items.map(([part, text]) => el("div", {}, el("b", { text: part + ": " }), text)));
  }

  function renderMembers(members) {
    const sorted = [...members].sort((a, b) => a.name.localeCompare(b.name));
    const alive = members.filter((m) => m.status === "alive").length;
    $("members-count").textContent = `${alive} alive of ${members.length}`;
    fill($("members").tBodies[0], sorted.map((m) => el("tr", { "data-member": m.name, "data-status": m.status, "data-role": m.role },
      el("td", {}, m.name, m.self ? el("span", { class: "self", text: "  (this node)" }) : null),
      el("td", {}, el("span", { class: `pill ${m.status}`, text: m.status })),
      el("td", {}, el("span", { class: `role ${m.role}`, text: m.role })),
      el("td", { text: m.version || "?" }),
      el("td", { text: m.protocol || "?" }),
      el("td", {}, ...Object.entries(m.tags || {}).sort().map(([k, v]) => el("span", { class: "tag", text: v ? `${k}=${v}` : k }))),
      el("td", { text: m.addr }),
      el("td", { text: String(m.incarnation) }),
    )), 8, "no members known");
  }

  function renderIngest(snap) {
    const s = snap.status || {};
    const r = snap.rates || {};
    const flow = s.flow || {};
    $("ingest-node").textContent = s.name ? `on ${s.name}` : "";
    const figure = (value, label) => el("div", { class: "figure" }, el("b", { text: value }), el("span", { text: label }));
    $("ingest").replaceChildren(
      figure(rate(r.ingested), "records/s stored"),
      figure(rate(r.received), "records/s from producers"),
      figure(num(flow.holds), "flow holds"),
      figure(num(sum(s.dropped_records) + sum(s.dropped)), "dropped"),
    );
    if (r.ingested !== undefined) {
      state.spark.push(r.ingested);
      if (state.spark.length > SPARK_POINTS) state.spark.shift();
    }
    drawSpark();
    const producers = s.producers || {};
    const facts = [
      ["entities", `${num(s.entities)} owned, ${num(s.held_entities)} held`],
      ["ingested", `${num(s.ingested)} records, ${num(s.ingest_queue_bytes)} bytes queued`],
      ["producers", `${num(producers.accepted)} accepted, ${num(sum(producers.rejected))} rejected${producers.rejected && sum(producers.rejected) ? " (" + counts(producers.rejected) + ")" : ""}`],
      ["flow", `${num(flow.holds)} batches held (${dec(flow.held_seconds, 1)} s), ${num(flow.requests)} pauses asked, paused by ${num(flow.paused_by)}`],
      ["records lost", sum(s.dropped_records) ? `${num(sum(s.dropped_records))} (${counts(s.dropped_records)})` : "none"],
      ["batches shed", num(s.ingest_dropped)],
      ["messages dropped", sum(s.dropped) ? `${num(sum(s.dropped))} (${counts(s.dropped)})` : "none"],
      ["link dropped", sum(s.link_dropped) ? `${num(sum(s.link_dropped))} (${counts(s.link_dropped)})` : "none"],
      ["frames rejected", sum(s.rejected) ? `${num(sum(s.rejected))} (${counts(s.rejected)})` : "none"],
    ];
    $("drops").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  }

  function drawSpark() {
    const svg = $("spark");
    const points = state.spark;
    const top = Math.max(1, ...points);
    const slots = Math.max(points.length, 30);  // a young page's few points are not squeezed into a corner
    const step = 300 / (slots - 1);
    const offset = (slots - points.length) * step;
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.map((v, i) => `${(offset + i * step).toFixed(1)},${(46 - (v / top) * 42).toFixed(1)}`).join(" "));
    svg.replaceChildren(line);
    $("spark-note").textContent = points.length ? `records/s stored, last ${points.length} s; peak ${rate(Math.max(...points))}/s` : "";
  }

  function renderChannels(snap) {
    const select = $("channel");
    const chans = snap.channels || [];
    const options = chans.map((c) => el("option", { value: String(c.channel), text: `${c.channel} (${num(c.blocks)} blocks, ${num(c.entities)} entities)` }));
    if (!chans.length && snap.channel === null) options.push(el("option", { value: "", text: "no blocks yet" }));
    if (snap.channel !== null && snap.channel !== undefined && !chans.some((c) => c.channel === snap.channel)) {
      options.push(el("option", { value: String(snap.channel), text: `${snap.channel} (no blocks)` }));  // asked for by the link
    }
    const key = options.map((o) => o.value + o.textContent).join("|");
    if (select.dataset.key !== key) {
      select.replaceChildren(...options);
      select.dataset.key = key;
    }
    select.value = snap.channel === null || snap.channel === undefined ? "" : String(snap.channel);
    const hasForecast = (snap.blocks || []).some((b) => b.forecast_error !== undefined && b.forecast_error !== null);
    const option = $("metric").querySelector('option[value="forecast_error"]');
    option.disabled = !hasForecast;
    option.textContent = hasForecast ? "forecast error" : "forecast error (no forecasts yet)";
    if (!hasForecast && state.metric === "forecast_error") state.metric = "count";
  }

  function owners(snap) {
    const names = new Set((snap.members || []).map((m) => m.name));
    (snap.blocks || []).forEach((b) => names.add(b.owner));
    const colour = {};
    [...names].sort().forEach((n, i) => { colour[n] = OWNER_COLOURS[i % OWNER_COLOURS.length]; });
    return colour;
  }

  function scale(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const mix = (a, b, f) => Math.round(a + (b - a) * f);
    const c = (hex) => [1, 3, 5].map((p) => parseInt(hex.slice(p, p + 2), 16));
    const [a, b] = [c(VIRIDIS[i]), c(VIRIDIS[i + 1])];
    return `rgb(${mix(a[0], b[0], x - i)},${mix(a[1], b[1], x - i)},${mix(a[2], b[2], x - i)})`;
  }

  function describe(b) {
    return `block ${blockName(b.block)} · owner ${b.owner}` + (b.replicas && b.replicas.length ? ` · replicas ${b.replicas.join(", ")}` : "") +
      ` · count ${num(b.count)} (${num(b.active)} active) · mean ${dec(b.mean)} · min ${dec(b.min)} · max ${dec(b.max)}` +
      ` · fitness ${dec(b.fitness)} · error rate ${dec(b.error_rate)}` +
      (b.forecast_error !== undefined ? ` · forecast error ${dec(b.forecast_error)}` : "") + ` · tick ${b.tick}`;
  }

  function renderHeatmap() {
    const snap = state.snap;
    if (!snap) return;
    const blocks = snap.blocks || [];
    const metric = state.metric;
    $("metric").value = metric;
    const colour = owners(snap);
    let paint;
    const legend = $("legend");
    if (metric === "owner") {
      paint = (b) => colour[b.owner] || "#999";
      const used = [...new Set(blocks.map((b) => b.owner))].sort();
      legend.replaceChildren(...used.flatMap((n) => [el("span", { class: "swatch", style: { background: colour[n] } }), n]));
    } else {
      const values = blocks.map((b) => b[metric]).filter((v) => v !== null && v !== undefined);
      const fixed = metric === "fitness" || metric === "error_rate";
      const lo = fixed ? 0 : Math.min(...values), hi = fixed ? 1 : Math.max(...values);
      const span = hi - lo || 1;
      paint = (b) => (b[metric] === null || b[metric] === undefined ? null : scale((b[metric] - lo) / span));
      const bar = el("i");
      bar.style.background = `linear-gradient(to right, ${VIRIDIS.join(",")})`;
      legend.replaceChildren(values.length ? (metric === "count" ? num(lo) : dec(lo, 2)) : "-", bar,
                             values.length ? (metric === "count" ? num(hi) : dec(hi, 2)) : "-");
    }
    const map = $("heatmap");
    map.style.setProperty("--cell", blocks.length <= 256 ? "26px" : blocks.length <= 1024 ? "18px" : "12px");
    while (map.children.length > blocks.length) map.lastChild.remove();
    while (map.children.length < blocks.length) {
      const cell = el("div");
      cell.addEventListener("mouseenter", () => { $("cell-info").textContent = cell.title; });
      map.append(cell);
    }
    blocks.forEach((b, i) => {
      const cell = map.children[i];
      const fillColour = paint(b);
      cell.className = fillColour ? "" : "none";
      cell.style.background = fillColour || "";
      cell.style.outline = metric === "owner" ? "" : `2px solid ${colour[b.owner] || "transparent"}`;
      cell.style.outlineOffset = "-2px";
      cell.title = describe(b);
      cell.dataset.block = blockName(b.block);
      cell.dataset.owner = b.owner;
    });
    const total = snap.blocks_total || 0;
    $("blocks-note").textContent = total > blocks.length ? `showing ${num(blocks.length)} of ${num(total)} blocks` :
      total ? `${num(total)} blocks of channel ${snap.channel}; outline: owner` : "no blocks in this channel yet";
  }

  function renderPlacement(snap) {
    const rows = snap.placement || [];
    const colour = owners(snap);
    $("placement-channel").textContent = snap.channel === null || snap.channel === undefined ? "" : `channel ${snap.channel}`;
    const top = Math.max(1, ...rows.map((r) => r.blocks + r.replicas));
    fill($("placement").tBodies[0], rows.map((r) => {
      const bar = el("div", { class: "bar" });
      bar.style.width = `${(100 * (r.blocks + r.replicas)) / top}%`;
      bar.style.background = colour[r.name] || "";
      return el("tr", { "data-member": r.name },
        el("td", {}, el("span", { class: "swatch", style: { background: colour[r.name] || "#999", marginRight: "6px" } }), r.name),
        el("td", { text: num(r.blocks) }), el("td", { text: num(r.entities) }), el("td", { text: num(r.replicas) }),
        el("td", { style: { width: "30%" } }, bar));
    }), 5, "no blocks placed yet");
  }

  function renderAlerts(snap) {
    const alerts = snap.alerts || [];
    $("alerts-note").textContent = "raised anywhere in the cluster, newest first";
    fill($("alerts").tBodies[0], alerts.map((a) => el("tr", { "data-kind": a.kind },
      el("td", { class: "nowrap", text: when(a.ts) }),
      el("td", { class: "nowrap", text: a.node || "" }),
      el("td", {}, el("span", { class: `sev ${a.severity}`, text: a.severity })),
      el("td", { class: "nowrap", text: a.kind }),
      el("td", { text: a.block === null || a.block === undefined ? "-" : blockName(a.block) }),
      el("td", { text: a.message }),
    )), 5, "no alerts");
  }

  function renderAudit(rows) {
    fill($("audit").tBodies[0], rows.map((r) => el("tr", { "data-kind": r.kind },
      el("td", { class: "nowrap", text: when(r.ts) }),
      el("td", { class: "nowrap", text: r.kind }),
      el("td", { text: r.subject.replaceAll(",", ", ") }),  // voter lists wrap between names
      el("td", { text: r.reason }),
      el("td", { text: r.term === null || r.term === undefined ? "-" : String(r.term) }),
    )), 5, "nothing recorded yet");
  }

  // -- controls -------------------------------------------------------------------------

  $("metric").addEventListener("change", (ev) => { state.metric = ev.target.value; saveView(); renderHeatmap(); });
  $("channel").addEventListener("change", (ev) => {
    state.channel = ev.target.value === "" ? null : Number(ev.target.value);
    saveView();
    connect();
  });

  connect();
})();
