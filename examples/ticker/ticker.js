"use strict";
// A live ticker on trio_esper: one EventSource per topic, `tick` events as
// quotes. No library, no build step: serve this directory with
// `python3 -m http.server` and start the broker with that page's origin in
// `--cors-origin` (see ../README.md).
//
// Query string: broker=URL, topics=a,b (8 to 64 letters or digits each),
// token=JWT (one for every topic) or token=JWT1,JWT2 (one per topic, in order).
// EventSource cannot send headers, so tokens go in the URL as ?token=.
(function () {
  const DEFAULT_BROKER = "http://127.0.0.1:3000";
  const DEFAULT_TOPICS = "tickerDemo1";
  // The page runs for hours: keep only the newest rows, and remember only
  // recent ids (enough to skip what a reset replays).
  const MAX_TICKS = 100;
  const MAX_NOTES = 50;
  const SEEN_IDS = 500;
  const FLASH_MS = 600;

  const params = new URLSearchParams(window.location.search);
  const broker = (params.get("broker") || DEFAULT_BROKER).replace(/\/+$/, "");
  const topics = splitList(params.get("topics") || DEFAULT_TOPICS);
  const tokens = splitList(params.get("token") || "");

  document.getElementById("broker").value = broker;
  document.getElementById("topics").value = topics.join(",");
  document.getElementById("token").value = tokens.join(",");

  const feedsBody = document.querySelector("#feeds tbody");
  const quotesBody = document.querySelector("#quotes tbody");
  const ticksList = document.getElementById("ticks");
  const notesList = document.getElementById("notes");
  const quoteRows = new Map();

  function splitList(text) {
    return text.split(",").map((s) => s.trim()).filter(Boolean);
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text; // textContent, never innerHTML: event data is untrusted
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function prependBounded(list, item, max) {
    list.insertBefore(item, list.firstChild);
    while (list.children.length > max) list.removeChild(list.lastChild);
  }

  function note(topic, text) {
    const li = document.createElement("li");
    li.dataset.topic = topic;
    li.textContent = new Date().toLocaleTimeString() + "  " + topic + "  " + text;
    prependBounded(notesList, li, MAX_NOTES);
  }

  function isTick(value) {
    return value !== null && typeof value === "object" &&
      typeof value.symbol === "string" && typeof value.price === "string" &&
      typeof value.change === "string";
  }

  function direction(change) {
    return change.startsWith("-") ? "down" : "up";
  }

  function showQuote(topic, tick) {
    const key = topic + "\u0000" + tick.symbol;
    let quote = quoteRows.get(key);
    if (!quote) {
      const row = document.createElement("tr");
      row.dataset.topic = topic;
      row.dataset.symbol = tick.symbol;
      cell(row, tick.symbol);
      const price = cell(row, "", "num");
      const change = cell(row, "", "num");
      cell(row, topic);
      quote = {row, price, change, at: cell(row, ""), flash: 0};
      quotesBody.appendChild(row);
      quoteRows.set(key, quote);
    }
    quote.row.dataset.price = tick.price;
    quote.price.textContent = tick.price;
    quote.change.textContent = tick.change;
    quote.change.className = "num " + direction(tick.change);
    quote.at.textContent = new Date().toLocaleTimeString();
    quote.row.classList.add("fresh");
    clearTimeout(quote.flash);
    quote.flash = setTimeout(() => quote.row.classList.remove("fresh"), FLASH_MS);
  }

  function showTick(topic, id, tick) {
    const li = document.createElement("li");
    Object.assign(li.dataset, {topic, id, symbol: tick.symbol, price: tick.price,
      change: tick.change});
    li.className = direction(tick.change);
    li.textContent = [new Date().toLocaleTimeString(), topic, "#" + id, tick.symbol,
      tick.price, tick.change].join("  ");
    prependBounded(ticksList, li, MAX_TICKS);
  }

  class Feed {
    constructor(topic, token) {
      this.topic = topic;
      this.url = broker + "/subscribe/" + encodeURIComponent(topic) +
        (token ? "?token=" + encodeURIComponent(token) : "");
      // What the browser will send as Last-Event-ID when it reconnects: the
      // id of the last event received (an event without id: keeps it).
      this.lastId = "";
      this.attempts = 0;   // failed reconnection attempts since the last open
      this.lost = false;   // the stream was lost at least once
      this.seen = [];
      this.seenSet = new Set();
      this.source = null;
      this.row = document.createElement("tr");
      this.row.dataset.topic = topic;
      cell(this.row, topic);
      this.stateCell = cell(this.row, "", "state");
      this.idCell = cell(this.row, "none yet", "num");
      this.detailCell = cell(this.row, "", "muted");
      feedsBody.appendChild(this.row);
    }

    setState(state, detail) {
      this.row.dataset.state = state;
      this.stateCell.textContent = state;
      this.detailCell.textContent = detail || "";
    }

    track(event) {
      if (event.lastEventId === this.lastId) return;
      this.lastId = event.lastEventId;
      this.row.dataset.lastId = this.lastId;
      this.idCell.textContent = this.lastId ? "#" + this.lastId : "none";
    }

    // After a reset the broker replays everything it retains, which may
    // repeat ticks this page already shows.
    firstTime(id) {
      if (!id) return true;
      if (this.seenSet.has(id)) return false;
      this.seenSet.add(id);
      this.seen.push(id);
      if (this.seen.length > SEEN_IDS) this.seenSet.delete(this.seen.shift());
      return true;
    }

    connect() {
      this.setState("connecting", "to " + broker);
      const es = new EventSource(this.url);
      es.addEventListener("open", () => {
        this.attempts = 0;
        const since = this.lastId ? "after #" + this.lastId : "from now (no id yet)";
        this.setState("open", this.lost ? "resumed " + since : "live");
      });
      es.addEventListener("error", () => {
        if (es.readyState === EventSource.CONNECTING) {
          // The browser retries by itself, sending Last-Event-ID.
          this.lost = true;
          this.attempts += 1;
          const from = this.lastId ? "; will resume after #" + this.lastId : "";
          this.setState("reconnecting", "attempt " + this.attempts + from);
        } else {
          // Not a 200 text/event-stream (bad topic or token), or the CORS
          // check failed: EventSource gives up and does not say which.
          this.setState("closed", "refused: check the topic, the token and --cors-origin");
        }
      });
      es.addEventListener("tick", (event) => {
        this.track(event);
        if (!this.firstTime(event.lastEventId)) return;
        let tick = null;
        try {
          tick = JSON.parse(event.data);
        } catch (_) { /* shown as a note below */ }
        if (!isTick(tick)) {
          note(this.topic, "malformed tick: " + event.data);
          return;
        }
        showQuote(this.topic, tick);
        showTick(this.topic, event.lastEventId, tick);
      });
      es.addEventListener("reset", (event) => {
        this.track(event);
        note(this.topic, "the broker could not resume after #" + this.lastId +
          " (history lost or expired): ticks may be missing; it replays what it still holds");
      });
      // Events published without `event:` (e.g. with curl) arrive as "message".
      es.addEventListener("message", (event) => {
        this.track(event);
        note(this.topic, event.data);
      });
      this.source = es;
    }

    close() {
      if (this.source) {
        this.source.close();
        this.source = null;
      }
    }
  }

  const feeds = topics.map(
    (topic, i) => new Feed(topic, tokens.length === 1 ? tokens[0] : (tokens[i] || "")));

  // A page left for another may sit in the back/forward cache with its
  // streams open, holding subscriptions nobody reads: close them, and open
  // new ones (resuming) if the user comes back.
  window.addEventListener("pagehide", () => feeds.forEach((feed) => feed.close()));
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) feeds.forEach((feed) => feed.source || feed.connect());
  });

  feeds.forEach((feed) => feed.connect());
})();
