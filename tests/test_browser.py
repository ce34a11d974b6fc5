"""examples/index.html in a real headless Chromium (tests/browser.py), subscribed
to a real broker."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import trio
from selenium import webdriver
from selenium.webdriver.common.by import By

from .browser import BROWSER_SECONDS, in_thread, serve_directory
from .browser import chrome as chrome  # the fixture
from .conftest import STEP_SECONDS, Broker, make_token, start_broker, wait_for_stats

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PAGE = EXAMPLES / "index.html"
SUBSCRIBER_SECRET = "subscriber-secret-for-the-browser-test"
#: Every item in the page's event list, as the page shows it.
READ_EVENTS_JS = """
return Array.from(document.querySelectorAll('#events li')).map((li) => ({
  event: li.dataset.event,
  id: li.dataset.id || null,
  data: li.querySelector('.data').textContent,
}));
"""


@pytest.fixture(scope="module")
def page_server() -> Iterator[str]:
    """Serve examples/ over HTTP from its own port: an origin other than the broker's."""
    with serve_directory(EXAMPLES) as origin:
        yield origin


class Page:
    """index.html open in ``driver``; every method keeps the Trio loop free."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def open(self, url: str) -> None:
        await in_thread(self.driver.get, url)

    async def close(self) -> None:
        # Leaving the page must close its EventSource, even if the page stays
        # in the back/forward cache, so the broker sees the subscriber go.
        await in_thread(self.driver.get, "about:blank")

    async def back(self) -> None:
        await in_thread(self.driver.back)

    async def state(self) -> str:
        element = await in_thread(self.driver.find_element, By.ID, "state")
        return await in_thread(element.get_attribute, "data-state")

    async def events(self) -> list[dict[str, Any]]:
        return await in_thread(self.driver.execute_script, READ_EVENTS_JS)

    async def wait_for_state(self, expected: str) -> None:
        with trio.move_on_after(STEP_SECONDS):
            while (state := await self.state()) != expected:
                await trio.sleep(0.05)
            return
        pytest.fail(f"page state stayed {state!r}, expected {expected!r}")

    async def wait_for_events(self, count: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        with trio.move_on_after(STEP_SECONDS):
            while len(events := await self.events()) < count:
                await trio.sleep(0.05)
            return events
        pytest.fail(f"page shows {len(events)} events, expected {count}: {events}")


@pytest.fixture
def page(chrome: webdriver.Chrome) -> Page:
    return Page(chrome)


def page_url(base: str, broker: Broker, topic: str, **extra: str) -> str:
    return f"{base}?{urlencode({'broker': broker.url, 'topic': topic, **extra})}"


async def publish_two_and_check(
    page: Page, client: httpx.AsyncClient, broker: Broker, topic: str
) -> None:
    await wait_for_stats(client, broker, clients=1)
    await page.wait_for_state("open")
    first = await client.post(f"{broker.url}/publish/{topic}", content=b"data: hello <b>\n")
    second = await client.post(
        f"{broker.url}/publish/{topic}",
        content=b"event: greeting\nid: 42\ndata: hi\ndata: there\n",
    )
    assert first.json()["subscribers"] == second.json()["subscribers"] == 1
    first_id = first.json()["id"]
    assert re.fullmatch(r"[0-9]{16}", first_id), first_id  # assigned by the broker
    assert second.json()["id"] == "42"
    assert await page.wait_for_events(2) == [
        {"event": "message", "id": first_id, "data": "hello <b>"},
        {"event": "greeting", "id": "42", "data": "hi\nthere"},
    ]
    await page.close()
    await wait_for_stats(client, broker, clients=0)


@pytest.mark.slow
async def test_page_opened_from_file_receives_events(
    nursery: trio.Nursery, client: httpx.AsyncClient, page: Page
) -> None:
    # A file:// page has the opaque origin "null": only '*' lets it in.
    broker = await start_broker(nursery, cors_origins=("*",))
    with trio.fail_after(BROWSER_SECONDS):
        await page.open(page_url(PAGE.as_uri(), broker, "browsertopic1"))
        await publish_two_and_check(page, client, broker, "browsertopic1")
    await broker.stop()


@pytest.mark.slow
async def test_page_from_another_origin_with_subscriber_token(
    nursery: trio.Nursery, client: httpx.AsyncClient, page: Page, page_server: str
) -> None:
    broker = await start_broker(
        nursery, cors_origins=(page_server,), subscriber_secret=SUBSCRIBER_SECRET
    )
    token = make_token(SUBSCRIBER_SECRET, sub="browsertopic2")
    with trio.fail_after(BROWSER_SECONDS):
        await page.open(
            page_url(f"{page_server}/index.html", broker, "browsertopic2", token=token)
        )
        await publish_two_and_check(page, client, broker, "browsertopic2")
        await page.back()  # restored from the back/forward cache or reloaded: either way, live
        await wait_for_stats(client, broker, clients=1)
        await page.wait_for_state("open")
        await page.close()
        await wait_for_stats(client, broker, clients=0)
    await broker.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cors_origins", "token"),
    [
        pytest.param(("http://elsewhere.example",), None, id="origin-not-allowed"),
        pytest.param(("*",), "not-a-jwt", id="bad-token"),
    ],
)
async def test_page_shows_a_refused_subscription(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    page: Page,
    page_server: str,
    cors_origins: tuple[str, ...],
    token: str | None,
) -> None:
    broker = await start_broker(
        nursery, cors_origins=cors_origins, subscriber_secret=SUBSCRIBER_SECRET
    )
    extra = (
        {"token": token} if token else {"token": make_token(SUBSCRIBER_SECRET, "browsertopic3")}
    )
    with trio.fail_after(BROWSER_SECONDS):
        await page.open(page_url(f"{page_server}/index.html", broker, "browsertopic3", **extra))
        await page.wait_for_state("closed")
        await client.post(f"{broker.url}/publish/browsertopic3", content=b"data: unseen\n")
        assert await page.events() == []
        await page.close()
        # EventSource needs no preflight, so the broker did serve the stream; for a
        # refused CORS check Chromium keeps draining the body for about 5 s (seen
        # here; its response-body drainer's timeout) before dropping the socket.
        await wait_for_stats(client, broker, clients=0)
    await broker.stop()


@pytest.mark.slow
@pytest.mark.parametrize("last_id", ["événement-1", "事件-2", "with inner space"])
async def test_page_resumes_after_a_restart_without_loss_or_duplicate(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    page: Page,
    tmp_path: Path,
    last_id: str,
) -> None:
    # Chromium sends the last event id back as UTF-8 in Last-Event-ID when it
    # reconnects; the restarted broker (same port, same SQLite history) must
    # resume after it: no `reset`, no duplicate, nothing lost.
    topic = "browserresume1"
    history = f"sqlite:{tmp_path / 'history.db'}"
    first = await start_broker(nursery, cors_origins=("*",), history=history, retry_ms=100)
    with trio.fail_after(BROWSER_SECONDS):
        await page.open(page_url(PAGE.as_uri(), first, topic, events="greeting,reset"))
        await wait_for_stats(client, first, clients=1)
        await page.wait_for_state("open")
        body = f"event: greeting\nid: {last_id}\ndata: before\n".encode()
        assert (await client.post(f"{first.url}/publish/{topic}", content=body)).status_code == 200
        await page.wait_for_events(1)
        await first.stop()
        second = await start_broker(
            nursery,
            cors_origins=("*",),
            history=history,
            retry_ms=100,
            port=first.host_port[1],
        )
        missed = b"event: greeting\nid: after-1\ndata: missed\n"
        assert (
            await client.post(f"{second.url}/publish/{topic}", content=missed)
        ).status_code == 200
        await wait_for_stats(client, second, clients=1)
        live = b"event: greeting\nid: after-2\ndata: live\n"
        assert (
            await client.post(f"{second.url}/publish/{topic}", content=live)
        ).status_code == 200
        events = await page.wait_for_events(3)
        await trio.sleep(0.3)  # nothing more may arrive (a duplicate, a reset)
        assert (
            await page.events()
            == events
            == [
                {"event": "greeting", "id": last_id, "data": "before"},
                {"event": "greeting", "id": "after-1", "data": "missed"},
                {"event": "greeting", "id": "after-2", "data": "live"},
            ]
        )
        await page.close()
    await second.stop()


COOKIE_NAME = "esperToken"
COOKIE_TOPIC = "cookietopic1"
OPEN_WITH_CREDENTIALS_JS = """
const [url, cookie] = arguments;
document.cookie = cookie;
window.__events = [];
window.__errors = 0;
const source = new EventSource(url, {withCredentials: true});
source.onmessage = (e) => window.__events.push(e.data);
source.onerror = () => { window.__errors += 1; };
window.__source = source;
"""


@pytest.mark.slow
async def test_browser_eventsource_with_credentials(
    nursery: trio.Nursery, client: httpx.AsyncClient, page: Page, page_server: str
) -> None:
    # The page is served from another port of the same host: cross-origin,
    # same-site, so the cookie it sets is sent to the broker.
    broker = await start_broker(
        nursery,
        subscriber_secret=SUBSCRIBER_SECRET,
        auth_cookie=COOKIE_NAME,
        cors_origins=(page_server,),
    )
    with trio.fail_after(BROWSER_SECONDS):
        await page.open(page_url(f"{page_server}/index.html", broker, "cookiepage01"))
        cookie = (
            f"{COOKIE_NAME}={make_token(SUBSCRIBER_SECRET, COOKIE_TOPIC)}; path=/; SameSite=Lax"
        )
        await in_thread(
            page.driver.execute_script,
            OPEN_WITH_CREDENTIALS_JS,
            f"{broker.url}/subscribe/{COOKIE_TOPIC}",
            cookie,
        )
        await wait_for_stats(client, broker, clients=1)
        await client.post(f"{broker.url}/publish/{COOKIE_TOPIC}", content=b"data: with a cookie\n")
        events: list[str] = []
        while not events:
            await trio.sleep(0.05)
            events = await in_thread(page.driver.execute_script, "return window.__events;")
        assert events == ["with a cookie"]
        assert await in_thread(page.driver.execute_script, "return window.__errors;") == 0
        await page.close()
    await broker.stop()
