"""The Mercure hub in real headless Chromium (tests/browser.py): pages on
another origin subscribe with plain ``EventSource`` and publish with
``fetch``, as a web framework's front end does. Each numbered point of the
protocol is seen by the browser: subscribe (several topics, templates,
``lastEventID``), publish (the form, its id, 401 and 403), authorization (by
cookie, by the ``authorization`` query parameter, anonymous), private
updates, the stream closed at the token's ``exp``, the subscriptions API and
its events, and discovery through an application's ``Link`` header."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import jwt
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Response
from quart_trio import QuartTrio
from selenium import webdriver

from trio_esper.mercure.discovery import with_mercure_link

from .browser import BROWSER_SECONDS, in_thread, poll_script, serve_directory
from .browser import chrome as chrome  # the fixture
from .conftest import Broker, start_broker

KEY = "a-mercure-key-long-enough-for-hs256-0123456789"
BOOK = "https://example.com/books/1"
AUTHORS = "https://example.com/authors/{id}"
SUBSCRIPTIONS = "/.well-known/mercure/subscriptions{/topic}{/subscriber}"
BLANK = "<!doctype html><title>a page</title>"

#: Opens an EventSource named ``name`` and records what it sees in ``window.__s``.
OPEN_JS = """
const [name, url, credentials] = arguments;
window.__s = window.__s || {};
const seen = {events: [], errors: 0, opened: 0};
const source = new EventSource(url, {withCredentials: credentials});
const record = (e) => seen.events.push({id: e.lastEventId, type: e.type, data: e.data});
source.onopen = () => { seen.opened += 1; };
source.onmessage = record;
source.addEventListener('note', record);
source.onerror = () => { seen.errors += 1; };
seen.source = source;
window.__s[name] = seen;
"""
READ_JS = """
const seen = window.__s[arguments[0]];
return {events: seen.events, errors: seen.errors, opened: seen.opened,
        state: seen.source.readyState};
"""
CLOSE_JS = "window.__s[arguments[0]].source.close();"
#: A request from the page: resolves to its status and text.
FETCH_JS = """
const [url, init, done] = arguments;
fetch(url, init).then(async (r) => done({status: r.status, text: await r.text(),
                                         link: r.headers.get('Link')}))
               .catch((e) => done({status: 0, text: String(e), link: null}));
"""


def token(exp_in: float | None = 60, **mercure: Any) -> str:
    claims: dict[str, Any] = {"mercure": mercure}
    if exp_in is not None:
        claims["exp"] = int(time.time() + exp_in)
    return jwt.encode(claims, KEY, algorithm="HS256")


def hub_url(broker: Broker, *topics: str, **args: str) -> str:
    query = [("topic", topic) for topic in topics] + list(args.items())
    return f"{broker.url}/.well-known/mercure?{urlencode(query, quote_via=quote)}"


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A blank page on an origin of its own (the broker is another)."""
    directory: Path = tmp_path_factory.mktemp("mercure-page")
    (directory / "index.html").write_text(BLANK)
    with serve_directory(directory) as origin:
        yield origin


class Browser:
    """Scripts run in ``driver``'s page, off the Trio loop."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def open_page(self, url: str) -> None:
        await in_thread(self.driver.get, url)

    async def subscribe(self, name: str, url: str, *, credentials: bool = False) -> None:
        await in_thread(self.driver.execute_script, OPEN_JS, name, url, credentials)
        await poll_script(
            self.driver, f"return window.__s[{name!r}].opened;", bool, f"{name} to open"
        )

    async def seen(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await in_thread(self.driver.execute_script, READ_JS, name)
        return result

    async def events(self, name: str, count: int) -> list[dict[str, str]]:
        found: dict[str, Any] = await poll_script(
            self.driver,
            READ_JS.replace("arguments[0]", repr(name)),
            lambda seen: seen is not None and len(seen["events"]) >= count,
            f"{count} events on {name}",
        )
        events: list[dict[str, str]] = found["events"]
        return events

    async def fetch(self, url: str, **init: Any) -> dict[str, Any]:
        result: dict[str, Any] = await in_thread(
            self.driver.execute_async_script, FETCH_JS, url, init
        )
        return result

    async def publish(self, broker: Broker, bearer: str | None, **form: Any) -> dict[str, Any]:
        """POST a Mercure form from the page (a CORS preflight first: Authorization)."""
        pairs = [(k, v) for k, values in form.items() for v in _values(values)]
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return await self.fetch(
            f"{broker.url}/.well-known/mercure",
            method="POST",
            headers=headers,
            body=urlencode(pairs),
        )


def _values(value: Any) -> list[str]:
    return list(value) if isinstance(value, list | tuple) else [str(value)]


@pytest.fixture
def browser(chrome: webdriver.Chrome) -> Iterator[Browser]:
    yield Browser(chrome)
    chrome.get("about:blank")  # closes the page's streams


async def mercure_broker(nursery: trio.Nursery, origin: str, **config: Any) -> Broker:
    return await start_broker(
        nursery,
        publisher_secret=KEY,
        subscriber_secret=KEY,
        mercure_anonymous=True,
        cors_origins=(origin,),
        **config,
    )


@pytest.mark.slow
async def test_subscribe_publish_private_updates_and_resume_in_chromium(
    nursery: trio.Nursery, browser: Browser, page_server: str
) -> None:
    broker = await mercure_broker(nursery, page_server)
    with trio.fail_after(BROWSER_SECONDS):
        await browser.open_page(f"{page_server}/index.html")
        # Same host, another port: the cookie goes to the broker with credentials.
        cookie = f"mercureAuthorization={token(subscribe=[BOOK])}; path=/; SameSite=Lax"
        await in_thread(browser.driver.execute_script, f"document.cookie = {cookie!r};")
        await browser.subscribe("anonymous", hub_url(broker, BOOK, AUTHORS))
        await browser.subscribe("cookie", hub_url(broker, BOOK), credentials=True)
        await browser.subscribe(
            "query", hub_url(broker, "*", authorization=token(subscribe=["*"]))
        )
        publisher = token(publish=["*"])
        first = await browser.publish(broker, publisher, topic=BOOK, data="public")
        assert first["status"] == 200, first
        assert first["text"].startswith("urn:uuid:")
        private = await browser.publish(
            broker, publisher, topic=BOOK, data="secret", private="on", id="u2", type="note"
        )
        assert (private["status"], private["text"]) == (200, "u2")
        author = await browser.publish(
            broker, publisher, topic="https://example.com/authors/7", data="author", id="u3"
        )
        assert author["status"] == 200, author
        # Refusals the page can read (CORS headers on errors too).
        unsigned = await browser.publish(broker, None, topic=BOOK, data="x")
        assert unsigned["status"] == 401, unsigned
        outside = await browser.publish(broker, token(publish=[AUTHORS]), topic=BOOK, data="x")
        assert outside["status"] == 403, outside

        public = {"id": first["text"], "type": "message", "data": "public"}
        secret = {"id": "u2", "type": "note", "data": "secret"}
        by_author = {"id": "u3", "type": "message", "data": "author"}
        assert await browser.events("anonymous", 2) == [public, by_author]
        assert await browser.events("cookie", 2) == [public, secret]
        assert await browser.events("query", 3) == [public, secret, by_author]

        # One resume point: from the first update on, with the cookie's claims.
        await browser.subscribe(
            "resumed", hub_url(broker, BOOK, lastEventID=first["text"]), credentials=True
        )
        assert await browser.events("resumed", 1) == [secret]
        # Nothing more came to the anonymous page (the private update is not its).
        await browser.publish(broker, publisher, topic=BOOK, data="last", id="u4")
        last = {"id": "u4", "type": "message", "data": "last"}
        assert (await browser.events("anonymous", 3))[2:] == [last]
    await broker.stop()


@pytest.mark.slow
async def test_the_stream_closes_when_the_token_expires_in_chromium(
    nursery: trio.Nursery, browser: Browser, page_server: str
) -> None:
    # --mercure-anonymous off: the EventSource's reconnect with its expired
    # token is refused (401), so the browser gives up: readyState CLOSED.
    broker = await start_broker(
        nursery, publisher_secret=KEY, subscriber_secret=KEY, cors_origins=(page_server,)
    )
    with trio.fail_after(BROWSER_SECONDS):
        await browser.open_page(f"{page_server}/index.html")
        expiring = token(2, subscribe=["*"])
        await browser.subscribe("expiring", hub_url(broker, BOOK, authorization=expiring))
        await browser.subscribe("lasting", hub_url(broker, BOOK, authorization=token()))
        closed = await poll_script(
            browser.driver,
            READ_JS.replace("arguments[0]", "'expiring'"),
            lambda seen: seen["state"] == 2,
            "the expired stream to close",
        )
        assert closed["opened"] == 1, closed
        assert closed["errors"] >= 1, closed
        lasting = await browser.seen("lasting")
        assert (lasting["state"], lasting["errors"]) == (1, 0), lasting
    await broker.stop()


@pytest.mark.slow
async def test_subscriptions_and_discovery_in_chromium(
    nursery: trio.Nursery, browser: Browser, client: httpx.AsyncClient
) -> None:
    # Discovery: the application serves the page and names the hub in Link.
    app = QuartTrio("bookshop")

    @app.route("/")
    async def index() -> Response:
        return Response(BLANK, content_type="text/html")

    @app.route("/books/1")
    async def book() -> dict[str, str]:
        return {"title": "Dune"}

    # The broker must allow the application's origin: a port chosen first.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    origin = f"http://127.0.0.1:{port}"
    broker = await mercure_broker(nursery, origin, mercure_subscriptions=True)
    hub = f"{broker.url}/.well-known/mercure"
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    stopped = trio.Event()
    await nursery.start(
        lambda task_status: serve(
            with_mercure_link(app, hub),  # type: ignore[arg-type]
            config,
            shutdown_trigger=stopped.wait,
            task_status=task_status,
        )
    )
    with trio.fail_after(BROWSER_SECONDS):
        await browser.open_page(f"{origin}/")
        found = await browser.fetch("/books/1")
        assert found["status"] == 200
        assert json.loads(found["text"]) == {"title": "Dune"}
        discovered = await in_thread(
            browser.driver.execute_script,
            'return arguments[0].match(/<([^>]+)>;\\s*rel="mercure"/)[1];',
            found["link"],
        )
        assert discovered == hub
        cookie = (
            f"mercureAuthorization={token(subscribe=[SUBSCRIPTIONS, BOOK], payload={'u': 1})}"
            "; path=/; SameSite=Lax"
        )
        await in_thread(browser.driver.execute_script, f"document.cookie = {cookie!r};")
        await browser.subscribe(
            "watcher", f"{discovered}?topic={quote(SUBSCRIPTIONS, safe='')}", credentials=True
        )
        await browser.subscribe("reader", f"{discovered}?topic={quote(BOOK, safe='')}")
        opened = json.loads((await browser.events("watcher", 1))[0]["data"])
        assert (opened["type"], opened["topic"], opened["active"]) == ("Subscription", BOOK, True)
        listed = await browser.fetch(f"{discovered}/subscriptions", credentials="include")
        assert listed["status"] == 200, listed
        subscribers = [s["subscriber"] for s in json.loads(listed["text"])["subscriptions"]]
        assert opened["subscriber"] in subscribers
        # The application's backend publishes; the page that discovered the hub receives.
        published = await client.post(
            hub,
            content=urlencode({"topic": BOOK, "data": "in stock"}),
            headers={
                "Authorization": f"Bearer {token(publish=['*'])}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert published.status_code == 200
        assert [e["data"] for e in await browser.events("reader", 1)] == ["in stock"]
        await in_thread(browser.driver.execute_script, CLOSE_JS, "reader")
        closed = json.loads((await browser.events("watcher", 2))[1]["data"])
        assert (closed["subscriber"], closed["active"]) == (opened["subscriber"], False)
    stopped.set()
    await broker.stop()


@pytest.mark.slow
async def test_the_dashboard_shows_the_mercure_hub(
    nursery: trio.Nursery, browser: Browser, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(nursery)  # monitoring open: the page asks for no token
    with trio.fail_after(BROWSER_SECONDS):
        async with client.stream("GET", hub_url(broker, BOOK)) as stream:
            assert stream.status_code == 200
            await client.post(
                f"{broker.url}/.well-known/mercure", data={"topic": BOOK, "data": "x"}
            )
            await client.post(f"{broker.url}/publish/plaintopic1", content=b"data: y\n")
            stats = (await client.get(f"{broker.url}/stats")).json()
            assert stats["mercure"] == {"clients": 1, "published": 1}
            assert (stats["clients"], stats["published"], stats["topics"]) == (1, 2, 0)
            metrics = (await client.get(f"{broker.url}/metrics")).text
            assert "trio_esper_mercure_subscriptions 1.0" in metrics
            assert "trio_esper_mercure_updates_published_total 1.0" in metrics
            await browser.open_page(f"{broker.url}/dashboard")
            shown = await poll_script(
                browser.driver,
                "return [document.getElementById('stat-mercure-clients').textContent,"
                " document.getElementById('stat-mercure-published').textContent];",
                lambda texts: texts == ["1", "1"],
                "the Mercure card",
            )
            assert shown == ["1", "1"]
    await broker.stop()
