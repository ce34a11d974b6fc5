"""The EventSource over ``--h2-max-streams`` on one HTTP/2 connection (issue 22,
point 12), in headless Chromium over TLS: it is answered (REFUSED_STREAM;
Chromium retries the request, then reports a network error, and the
EventSource reconnects), where it used to wait for a slot without end, and it
is served once a slot frees."""

from __future__ import annotations

from typing import Any

import trio
from selenium import webdriver

from .browser import BROWSER_SECONDS, in_thread, poll_script
from .browser import chrome as chrome  # the fixture
from .tlspki import PKI, https, publish, start_tls_broker, tls_client
from .tlspki import pki as pki  # the fixture

#: Streams the broker serves on one connection in this test.
MAX_STREAMS = 3
#: EventSources the page opens: two over the limit.
SOURCES = 5

OPEN_SOURCES_JS = """
const [topic, count] = arguments;
window.received = [];
window.errors = [];
window.sources = [];
for (let i = 0; i < count; i++) {
  window.received.push([]);
  window.errors.push(0);
  const source = new EventSource(`/subscribe/${topic}`);
  source.onmessage = (e) => window.received[i].push(e.data);
  source.onerror = () => { window.errors[i] += 1; };
  window.sources.push(source);
}
"""
STATE_JS = """
return {
  open: window.sources.map((s) => s.readyState === EventSource.OPEN),
  closed: window.sources.map((s) => s.readyState === EventSource.CLOSED),
  errors: window.errors,
  received: window.received,
  protocol: performance.getEntriesByType('navigation')[0].nextHopProtocol,
};
"""
CLOSE_JS = "for (const i of arguments[0]) window.sources[i].close();"


async def test_an_eventsource_over_the_stream_limit_retries_and_is_served(
    nursery: trio.Nursery, pki: PKI, chrome: webdriver.Chrome
) -> None:
    await in_thread(
        chrome.execute_cdp_cmd, "Security.setIgnoreCertificateErrors", {"ignore": True}
    )
    broker = await start_tls_broker(nursery, pki, h2_max_streams=MAX_STREAMS, retry_ms=200)
    topic = "h2browserlimit"
    try:
        with trio.fail_after(BROWSER_SECONDS):
            await in_thread(chrome.get, f"{https(broker)}/health")
            await in_thread(chrome.execute_script, OPEN_SOURCES_JS, topic, SOURCES)

            def limited(state: Any) -> bool:
                # The limit's worth open, and every other one answered (an
                # error event: it reconnects), none given up.
                return (
                    state is not None
                    and sum(state["open"]) == MAX_STREAMS
                    and all(
                        errors > 0
                        for is_open, errors in zip(state["open"], state["errors"], strict=True)
                        if not is_open
                    )
                )

            state = await poll_script(chrome, STATE_JS, limited, "the sources over the limit")
            assert state["protocol"] == "h2", state
            assert not any(state["closed"]), state
            waiting = [i for i, is_open in enumerate(state["open"]) if not is_open]
            served = [i for i, is_open in enumerate(state["open"]) if is_open]
            # Two slots free: the waiting sources' next retry is served.
            await in_thread(chrome.execute_script, CLOSE_JS, served[:2])
            live = [*served[2:], *waiting]
            state = await poll_script(
                chrome,
                STATE_JS,
                lambda s: all(s["open"][i] for i in live),
                "the waiting sources open",
            )
            async with tls_client(pki) as client:
                assert await publish(client, broker, topic, "after the retry") == len(live)
            state = await poll_script(
                chrome,
                STATE_JS,
                lambda s: all(s["received"][i] == ["after the retry"] for i in live),
                "the event on every live source",
            )
    finally:
        with trio.CancelScope(shield=True):
            await in_thread(chrome.get, "about:blank")
    await broker.stop()
