"use strict";
// The broker's live dashboard. It holds one EventSource on the broker's own
// /stats/stream, whose `stats` events each carry one JSON snapshot (totals,
// the busiest topics); rates are derived here from consecutive snapshots.
// Every element it writes is replaced, never appended: the page costs the
// same with 10 topics or 10,000.
(() => {
  const STREAM_PATH = "/stats/stream";
  /** Asked why the stream was refused: same auth, and its body says why. */
  const PROBE_PATH = "/stats";
  const TOKEN_KEY = "trio_esper.dashboard.token";
  /** Chart points kept: two minutes at the server's one snapshot a second. */
  const CHART_SAMPLES = 120;
  /** The server sends at most this many busiest topics; never show more. */
  const BUSIEST_ROWS = 20;
  /** Wait before reopening a stream the broker refused for a reason other than auth. */
  const RETRY_MS = 2000;
  /** No snapshot for this long (the server sends one a second): the stream is dead. */
  const STALE_MS = 5000;
  const STATUS_TEXT = {
    connecting: "connecting",
    live: "live",
    reconnecting: "reconnecting",
    "needs-token": "needs token",
    error: "error",
  };

  const $ = (id) => document.getElementById(id);
  const statusEl = $("status");
  const messageEl = $("message");
  const form = $("token-form");
  const tokenInput = $("token-input");
  const tokenReason = $("token-reason");
  const tbody = document.querySelector("#busiest tbody");
  const canvas = $("chart");

  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const oneDecimal = new Intl.NumberFormat(undefined, {
    minimumFractionDigits: 1,
    maximumFractionDigits: 1,
  });

  let token = new URLSearchParams(window.location.search).get("access_token") || readStoredToken();
  let source = null;
  /** Bumped by every (re)connect, so a late answer about an old stream is ignored. */
  let generation = 0;
  let retryTimer = 0;
  let staleTimer = 0;
  let previous = null;
  const samples = [];

  function readStoredToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return ""; // storage disabled: the form still works for this page
    }
  }

  function storeToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // storage disabled: keep the token in memory only
    }
  }

  function setStatus(state, message = "") {
    statusEl.dataset.state = state;
    statusEl.textContent = STATUS_TEXT[state];
    messageEl.textContent = message;
  }

  function close() {
    clearTimeout(retryTimer);
    clearTimeout(staleTimer);
    if (source) {
      source.close();
      source = null;
    }
  }

  function connect() {
    close();
    const mine = ++generation;
    // EventSource cannot send an Authorization header: the token goes in the query.
    const query = token ? "?access_token=" + encodeURIComponent(token) : "";
    const es = new EventSource(STREAM_PATH + query);
    source = es;
    es.addEventListener("stats", (event) => {
      if (mine === generation) onSnapshot(event.data);
    });
    es.addEventListener("error", () => {
      if (mine !== generation) return;
      if (es.readyState === EventSource.CONNECTING) {
        // A dropped connection: the browser reconnects by itself.
        setStatus("reconnecting", "lost the stream; retrying");
      } else {
        // An HTTP refusal: EventSource gives up without saying why; ask /stats.
        close();
        diagnose(mine);
      }
    });
  }

  async function diagnose(mine) {
    let response = null;
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      response = await fetch(PROBE_PATH, { headers, cache: "no-store" });
    } catch {
      // a network error: reported below as unreachable
    }
    if (mine !== generation) return;
    if (response && (response.status === 401 || response.status === 403)) {
      const body = await response.text().catch(() => "");
      if (mine !== generation) return;
      askForToken(body.split("\n", 1)[0].trim() || `HTTP ${response.status}`);
      return;
    }
    let why = "broker unreachable";
    if (response) {
      why = response.ok
        ? "the broker refused the statistics stream"
        : `the broker answered HTTP ${response.status}`;
    }
    setStatus("error", why + ", retrying");
    retryTimer = setTimeout(connect, RETRY_MS);
  }

  function askForToken(reason) {
    if (token) storeToken(""); // refused: do not offer it again on reload
    setStatus("needs-token");
    tokenReason.textContent = reason;
    form.hidden = false;
    tokenInput.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = tokenInput.value.trim();
    if (!value) return;
    token = value;
    storeToken(token);
    tokenInput.value = "";
    form.hidden = true;
    setStatus("connecting");
    connect();
  });

  function onSnapshot(data) {
    let snapshot;
    try {
      snapshot = JSON.parse(data);
    } catch {
      setStatus("error", "the broker sent statistics that are not JSON");
      return;
    }
    if (snapshot === null || typeof snapshot !== "object") return;
    clearTimeout(staleTimer);
    staleTimer = setTimeout(() => {
      setStatus("reconnecting", `no statistics for ${STALE_MS / 1000} s`);
      connect();
    }, STALE_MS);
    setStatus("live");
    showTotals(snapshot);
    showRates(ratesBetween(previous, snapshot));
    showBusiest(snapshot.busiest);
    showMeta(snapshot);
    previous = snapshot;
  }

  function show(id, value, formatter = integer) {
    $(id).textContent = format(value, formatter);
  }

  function showTotals(s) {
    show("stat-topics", s.topics);
    show("stat-known-topics", s.known_topics);
    show("stat-clients", s.clients);
    show("stat-mercure-clients", s.mercure.clients);
    show("stat-mercure-published", s.mercure.published);
    show("stat-connections", s.connections);
    show("stat-published", s.published);
    show("stat-delivered", s.delivered);
    show("stat-dropped", s.dropped);
  }

  /** Events per second between two snapshots, or null when they cannot be
   * compared: the first one, a clock that did not advance, or counters that
   * went down (the broker restarted). */
  function ratesBetween(before, after) {
    if (!before) return null;
    const seconds = after.time - before.time;
    if (!(seconds > 0)) return null;
    const rates = {};
    for (const key of ["published", "delivered", "dropped"]) {
      const delta = after[key] - before[key];
      if (!(delta >= 0)) return null;
      rates[key] = delta / seconds;
    }
    return rates;
  }

  function showRates(rates) {
    show("rate-published", rates?.published, oneDecimal);
    show("rate-delivered", rates?.delivered, oneDecimal);
    show("rate-dropped", rates?.dropped, oneDecimal);
    if (!rates) return;
    samples.push({ published: rates.published, delivered: rates.delivered });
    if (samples.length > CHART_SAMPLES) samples.splice(0, samples.length - CHART_SAMPLES);
    drawChart();
  }

  function cell(text, className = "") {
    const td = document.createElement("td");
    td.textContent = text; // never innerHTML: ids come from clients
    if (className) td.className = className;
    return td;
  }

  function showBusiest(busiest, empty = "no topics yet") {
    const topics = Array.isArray(busiest) ? busiest.slice(0, BUSIEST_ROWS) : [];
    const rows = topics.map((topic) => {
      const tr = document.createElement("tr");
      tr.dataset.topic = String(topic.id);
      tr.append(
        cell(String(topic.id)),
        cell(format(topic.subscribers, integer), "number"),
        cell(format(topic.published, integer), "number"),
        cell(format(topic.rate, oneDecimal), "number"),
      );
      tr.firstChild.title = String(topic.id);
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell(empty);
      td.colSpan = 4;
      tr.append(td);
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
  }

  function format(value, formatter) {
    return Number.isFinite(value) ? formatter.format(value) : "–";
  }

  function showMeta(s) {
    $("version").textContent = s.version == null ? "–" : String(s.version);
    if (Number.isFinite(s.time)) {
      const at = new Date(s.time * 1000);
      const updated = $("updated");
      updated.dateTime = at.toISOString();
      updated.textContent = at.toLocaleTimeString();
    }
    const h = s.history;
    $("history").textContent =
      h && typeof h === "object"
        ? `history (${h.backend}): ${format(h.events, integer)} events in ` +
          `${format(h.topics, integer)} topics, ${bytes(h.bytes)}`
        : "";
  }

  function bytes(n) {
    if (!Number.isFinite(n)) return "–";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) {
      n /= 1000;
      i += 1;
    }
    return (i === 0 ? integer : oneDecimal).format(n) + " " + units[i];
  }

  /** The smallest 1, 2 or 5 times a power of ten at or above `value`. */
  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) {
      if (step * power >= value) return step * power;
    }
    return 10 * power;
  }

  function drawChart() {
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const style = getComputedStyle(document.documentElement);
    const color = (name) => style.getPropertyValue(name).trim();
    let peak = 0;
    for (const s of samples) peak = Math.max(peak, s.published, s.delivered);
    const top = niceCeiling(Math.max(peak, 1));
    const label = format(top, integer) + "/s";

    ctx.font = `12px ${getComputedStyle(document.body).fontFamily}`;
    const left = Math.ceil(ctx.measureText(label).width) + 8;
    const plot = { x: left, y: 8, w: width - left - 4, h: height - 8 - 20 };

    ctx.strokeStyle = color("--line");
    ctx.fillStyle = color("--muted");
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (const [fraction, text] of [[0, "0"], [0.5, ""], [1, label]]) {
      const y = Math.round(plot.y + plot.h * (1 - fraction)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(plot.x, y);
      ctx.lineTo(plot.x + plot.w, y);
      ctx.stroke();
      if (text) ctx.fillText(text, plot.x - 6, y);
    }
    ctx.textBaseline = "bottom";
    ctx.textAlign = "left";
    ctx.fillText("−2 min", plot.x, height);
    ctx.textAlign = "right";
    ctx.fillText("now", plot.x + plot.w, height);

    // The newest sample sits at the right edge; older ones move left.
    const step = plot.w / (CHART_SAMPLES - 1);
    const offset = CHART_SAMPLES - samples.length;
    for (const key of ["published", "delivered"]) {
      ctx.strokeStyle = color("--" + key);
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.beginPath();
      samples.forEach((s, i) => {
        const x = plot.x + (offset + i) * step;
        const y = plot.y + plot.h * (1 - s[key] / top);
        if (i === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    const last = samples[samples.length - 1];
    canvas.setAttribute(
      "aria-label",
      `events per second, last 2 minutes, scale 0 to ${label}; now ` +
        `${format(last?.published, oneDecimal)} published, ` +
        `${format(last?.delivered, oneDecimal)} delivered`,
    );
  }

  new ResizeObserver(drawChart).observe(canvas);

  // A page left for another may sit in the back/forward cache with its stream
  // open, holding a connection nobody reads: close it, reopen on return.
  window.addEventListener("pagehide", () => {
    generation += 1;
    close();
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) connect();
  });

  showBusiest([], "waiting for statistics");
  connect();
})();
