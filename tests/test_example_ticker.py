"""examples/ticker as its README runs it: the page served over HTTP from its own
origin and open in real headless Chromium (tests/browser.py), the real
publisher script in a child process, and a real broker between them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import trio
from selenium import webdriver

from .browser import BROWSER_SECONDS, in_thread, poll_script, serve_directory
from .browser import chrome as chrome  # the fixture
from .conftest import Broker, make_token, start_broker

TICKER = Path(__file__).resolve().parent.parent / "examples" / "ticker"
PUBLISH = TICKER / "publish.py"
#: A fresh interpreter importing trio, httpx and the client: allow for a slow CI machine.
PROCESS_SECONDS = 30.0
SUBSCRIBER_SECRET = "subscriber-secret-for-the-ticker-test"
PUBLISHER_SECRET = "publisher-secret-for-the-ticker-test!"
#: What the page shows, read from the data-* attributes it sets: connections
#: by topic, the tick log oldest first (the page lists newest first), the
#: last quote per topic and symbol, and the notes.
READ_PAGE_JS = """
const rows = (selector) => Array.from(document.querySelectorAll(selector));
return {
  feeds: Object.fromEntries(rows('#feeds tbody tr').map((tr) => [tr.dataset.topic, {
    state: tr.dataset.state, detail: tr.querySelector('.muted').textContent}])),
  ticks: rows('#ticks li').reverse().map((li) => ({topic: li.dataset.topic, id: li.dataset.id,
    symbol: li.dataset.symbol, price: li.dataset.price, change: li.dataset.change})),
  quotes: Object.fromEntries(rows('#quotes tbody tr').map(
    (tr) => [tr.dataset.topic + '/' + tr.dataset.symbol, tr.dataset.price])),
  notes: rows('#notes li').map((li) => li.textContent),
};
"""
TICK_FIELDS = ("topic", "id", "symbol", "price", "change")


@pytest.fixture(scope="module")
def ticker_origin() -> Iterator[str]:
    with serve_directory(TICKER) as origin:
        yield origin


async def publish(broker: Broker, topic: str, count: int, *args: str) -> list[dict[str, Any]]:
    """Run examples/ticker/publish.py for ``count`` ticks; its JSON lines."""
    with trio.fail_after(PROCESS_SECONDS):
        argv = [topic, "--url", broker.url, "--count", str(count), "--interval", "0", *args]
        done = await trio.run_process(
            [sys.executable, str(PUBLISH), *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    ticks = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [tick["seq"] for tick in ticks] == list(range(1, count + 1))
    return ticks


async def read_page_until(driver: webdriver.Chrome, done: Any, what: str) -> dict[str, Any]:
    page: dict[str, Any] = await poll_script(driver, READ_PAGE_JS, done, what)
    return page


def shown(ticks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Published ticks as the page's log should show them."""
    return [{k: tick[k] for k in TICK_FIELDS} for tick in ticks]


@pytest.mark.slow
async def test_page_shows_every_tick_in_order_per_topic(
    nursery: trio.Nursery, chrome: webdriver.Chrome, ticker_origin: str
) -> None:
    broker = await start_broker(
        nursery,
        cors_origins=(ticker_origin,),
        subscriber_secret=SUBSCRIBER_SECRET,
        publisher_secret=PUBLISHER_SECRET,
    )
    topics = ["tickerprices1", "tickerprices2", "tickerrefused"]
    # One subscriber token per topic, in order; the third is not a token.
    tokens = [make_token(SUBSCRIBER_SECRET, topic) for topic in topics[:2]] + ["not-a-jwt"]
    query = urlencode(
        {"broker": broker.url, "topics": ",".join(topics), "token": ",".join(tokens)}
    )
    with trio.fail_after(BROWSER_SECONDS):
        # `python3 -m http.server` serves index.html for the directory.
        await in_thread(chrome.get, f"{ticker_origin}/?{query}")
        page = await read_page_until(
            chrome,
            lambda page: [page["feeds"][t]["state"] for t in topics] == ["open", "open", "closed"],
            "two open connections and one refused",
        )
        assert "check the topic, the token" in page["feeds"]["tickerrefused"]["detail"]
        published: dict[str, list[dict[str, Any]]] = {}

        async def run_publisher(topic: str, seed: int) -> None:
            token = make_token(PUBLISHER_SECRET, topic)
            published[topic] = await publish(
                broker, topic, 8, "--seed", str(seed), "--token", token
            )

        async with trio.open_nursery() as publishers:
            publishers.start_soon(run_publisher, topics[0], 1)
            publishers.start_soon(run_publisher, topics[1], 2)
        # Every tick reached one subscriber, the page's stream for its topic.
        assert {tick["subscribers"] for ticks in published.values() for tick in ticks} == {1}
        page = await read_page_until(chrome, lambda page: len(page["ticks"]) == 16, "16 ticks")
        # The two publishers interleave; each topic's ticks keep their order.
        for topic in topics[:2]:
            on_page = [tick for tick in page["ticks"] if tick["topic"] == topic]
            assert on_page == shown(published[topic])
        last_prices = {
            f"{topic}/{tick['symbol']}": tick["price"]
            for topic in topics[:2]
            for tick in published[topic]
        }
        assert page["quotes"] == last_prices
        assert page["notes"] == []
        await in_thread(chrome.get, "about:blank")
    await broker.stop()


#: Long enough for the test to restart the broker and publish while the page
#: waits to reconnect, so the missed ticks can only come back by resuming.
RETRY_MS = 4000


@pytest.mark.slow
async def test_page_resumes_with_last_event_id_after_a_broker_restart(
    nursery: trio.Nursery, chrome: webdriver.Chrome, ticker_origin: str, tmp_path: Path
) -> None:
    topic = "tickerresume1"
    settings: dict[str, Any] = {
        "cors_origins": (ticker_origin,),
        "history": f"sqlite:{tmp_path / 'history.db'}",
        "retry_ms": RETRY_MS,
    }
    first = await start_broker(nursery, **settings)
    query = urlencode({"broker": first.url, "topics": topic})
    with trio.fail_after(BROWSER_SECONDS):
        await in_thread(chrome.get, f"{ticker_origin}/index.html?{query}")
        await read_page_until(chrome, lambda page: page["feeds"][topic]["state"] == "open", "open")
        before = await publish(first, topic, 3, "--seed", "3")
        await read_page_until(chrome, lambda page: len(page["ticks"]) == 3, "3 ticks")
        await first.stop()
        page = await read_page_until(
            chrome, lambda page: page["feeds"][topic]["state"] == "reconnecting", "reconnecting"
        )
        last_id = before[-1]["id"]
        assert page["feeds"][topic]["detail"] == f"attempt 1; will resume after #{last_id}"

        second = await start_broker(nursery, **settings, port=first.host_port[1])
        missed = await publish(second, topic, 3, "--seed", "4")
        assert [tick["subscribers"] for tick in missed] == [0, 0, 0], "the page was away"
        page = await read_page_until(chrome, lambda page: len(page["ticks"]) == 6, "6 ticks")
        assert page["feeds"][topic] == {"state": "open", "detail": f"resumed after #{last_id}"}
        live = await publish(second, topic, 1, "--seed", "5")
        assert live[0]["subscribers"] == 1
        page = await read_page_until(chrome, lambda page: len(page["ticks"]) == 7, "7 ticks")
        # Nothing lost, nothing twice, no reset: the browser's Last-Event-ID did it.
        assert page["ticks"] == shown(before + missed + live)
        assert page["notes"] == []
        await in_thread(chrome.get, "about:blank")
    await second.stop()
