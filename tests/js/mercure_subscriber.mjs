// A Mercure subscriber written with a third-party JavaScript library, for
// tests/test_mercure_clients.py: the library's own API, as an application would use it.
//
//   node mercure_subscriber.mjs '{"library": "eventsource", "hub": "http://127.0.0.1:PORT/.well-known/mercure",
//                                "topics": ["https://example.com/books/{id}"], "count": 2,
//                                "token": "JWT (optional)", "lastEventId": "id (optional)", "types": ["t"]}'
//
// Prints one JSON line per step on stdout: {"open": status} once the stream is open, then
// {"id", "type", "data"} for each update received; exits 0 after `count` updates, 1 on an
// error the library reports, 2 when `seconds` (default 20) pass first.
//
// library "eventsource" (npm eventsource, a WHATWG EventSource for Node): the Mercure URL
// with its repeated topic parameters; the token in an Authorization header through the
// library's `fetch` option; a resume point as Mercure's lastEventID query parameter (an
// EventSource cannot set Last-Event-ID on its first request).
// library "fetch-event-source" (npm @microsoft/fetch-event-source, the library Mercure's
// documentation recommends for subscribers that send a token): the token as
// `Authorization: Bearer`, a resume point as the Last-Event-ID header.
import { EventSource } from "eventsource";
import { fetchEventSource } from "@microsoft/fetch-event-source";

const options = JSON.parse(process.argv[2]);
const url = new URL(options.hub);
for (const topic of options.topics) url.searchParams.append("topic", topic);
let received = 0;
const controller = new AbortController();
let eventSource = null;

function say(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

function finish(status) {
  controller.abort();
  if (eventSource !== null) eventSource.close();
  process.exit(status);
}

function update(event) {
  say({ id: event.lastEventId ?? event.id, type: event.type ?? event.event, data: event.data });
  received += 1;
  if (received >= options.count) finish(0);
}

setTimeout(() => {
  say({ timeout: options.seconds ?? 20 });
  finish(2);
}, 1000 * (options.seconds ?? 20));

const authorization = options.token ? { Authorization: `Bearer ${options.token}` } : {};

if (options.library === "eventsource") {
  if (options.lastEventId) url.searchParams.set("lastEventID", options.lastEventId);
  eventSource = new EventSource(url, {
    fetch: (input, init) =>
      fetch(input, { ...init, headers: { ...init.headers, ...authorization } }),
  });
  eventSource.onopen = () => say({ open: 200 });
  eventSource.onmessage = update;
  for (const type of options.types ?? []) eventSource.addEventListener(type, update);
  eventSource.onerror = (error) => {
    say({ error: `${error.code ?? ""} ${error.message ?? ""}`.trim() });
    finish(1);
  };
} else if (options.library === "fetch-event-source") {
  // Written for browsers: it takes fetch and the timers from `window` and watches
  // `document` for visibility changes, which Node has no use for (openWhenHidden).
  globalThis.window = globalThis;
  globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };
  const headers = { ...authorization };
  if (options.lastEventId) headers["Last-Event-ID"] = options.lastEventId;
  fetchEventSource(url.toString(), {
    headers,
    signal: controller.signal,
    openWhenHidden: true,
    async onopen(response) {
      say({ open: response.status });
      if (!response.ok) throw new Error(`status ${response.status}`);
    },
    onmessage(message) {
      // The library calls onmessage for a block of comments alone too (the hub's opening
      // comment, as dunglas/mercure's own ":"), with no id and no data: not an update.
      if (message.id === "" && message.data === "" && message.event === "") return;
      update({ id: message.id, type: message.event || "message", data: message.data });
    },
    onerror(error) {
      say({ error: String(error) });
      throw error; // no retry: the test wants to see it
    },
  }).catch(() => finish(1));
} else {
  say({ error: `unknown library ${options.library}` });
  finish(1);
}
