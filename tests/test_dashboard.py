"""The broker's own dashboard (``GET /dashboard``) in a real headless Chromium
(tests/browser.py), fed by the broker's real ``/stats/stream``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from selenium import webdriver
from selenium.webdriver.common.by import By

from .browser import BROWSER_SECONDS, in_thread
from .browser import chrome as chrome  # the fixture
from .conftest import STEP_SECONDS, Broker, make_token, start_broker, wait_for_stats

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PUBLISHER_SECRET = "publisher-secret-for-the-dashboard-test"
TOKEN_KEY = "trio_esper.dashboard.token"
#: The server sends at most this many busiest topics; the page never shows more.
BUSIEST_ROWS = 20
#: Laptop and desktop screens the page must fit without a horizontal scrollbar.
SCREENS = ((1366, 768), (1920, 1080))
#: Everything a user reads on the page, in one script run (one thread hop a poll).
READ_VIEW_JS = """
const text = (id) => document.getElementById(id).textContent;
const ids = ['stat-topics', 'stat-known-topics', 'stat-clients', 'stat-connections',
  'stat-published', 'stat-delivered', 'stat-dropped', 'rate-published', 'rate-delivered',
  'rate-dropped', 'version', 'updated', 'token-reason'];
return {
  texts: Object.fromEntries(ids.map((id) => [id, text(id)])),
  status: document.getElementById('status').dataset.state,
  token_form: !document.getElementById('token-form').hidden,
  rows: Array.from(document.querySelectorAll('#busiest tbody tr')).map((tr) => ({
    topic: tr.dataset.topic || null,
    cells: Array.from(tr.cells).map((td) => td.textContent),
  })),
  chart: document.getElementById('chart').getAttribute('aria-label'),
};
"""


def _integer(text: str) -> int | None:
    """A count as the page shows it, whatever the locale's thousands separator."""
    digits = re.sub(r"\D", "", text)
    return int(digits) if digits else None


def _rate(text: str) -> float | None:
    """A rate as the page shows it: always one decimal, whatever the separators."""
    digits = re.sub(r"\D", "", text)
    return int(digits) / 10 if digits else None


@dataclass
class View:
    """What the dashboard shows at one moment."""

    texts: dict[str, str]
    status: str
    token_form: bool
    rows: list[dict[str, Any]]
    chart: str

    def count(self, name: str) -> int | None:
        return _integer(self.texts[f"stat-{name}"])

    def rate(self, name: str) -> float | None:
        return _rate(self.texts[f"rate-{name}"])

    def topic(self, topic: str) -> dict[str, int | float | None] | None:
        for row in self.rows:
            if row["topic"] == topic:
                name, subscribers, published, rate = row["cells"]
                assert name == topic
                return {
                    "subscribers": _integer(subscribers),
                    "published": _integer(published),
                    "rate": _rate(rate),
                }
        return None


class Dashboard:
    """/dashboard open in ``driver``; every method keeps the Trio loop free."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def open(self, broker: Broker, query: str = "") -> None:
        await in_thread(self.driver.get, f"{broker.url}/dashboard{query}")

    async def close(self) -> None:
        # Leaving the page closes its stream before the broker stops.
        await in_thread(self.driver.get, "about:blank")

    async def script(self, source: str, *args: Any) -> Any:
        return await in_thread(self.driver.execute_script, source, *args)

    async def view(self) -> View:
        return View(**await self.script(READ_VIEW_JS))

    async def wait_until(self, check: Callable[[View], bool], what: str) -> View:
        view = None
        with trio.move_on_after(STEP_SECONDS):
            while not check(view := await self.view()):
                await trio.sleep(0.05)
            return view
        pytest.fail(f"the dashboard never showed {what}: {view}")

    async def wait_for_status(self, status: str) -> View:
        return await self.wait_until(lambda v: v.status == status, f"status {status!r}")

    async def set_viewport(self, width: int, height: int) -> None:
        """Show the page at exactly ``width`` x ``height`` CSS pixels (a window's
        size would include the browser's frame)."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        await in_thread(self.driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride", metrics)

    async def reset_viewport(self) -> None:
        await in_thread(self.driver.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})

    async def submit_token(self, token: str) -> None:
        field = await in_thread(self.driver.find_element, By.ID, "token-input")
        await in_thread(field.clear)
        await in_thread(field.send_keys, token)
        button = await in_thread(self.driver.find_element, By.CSS_SELECTOR, "#token-form button")
        await in_thread(button.click)


@pytest.fixture
def dashboard(chrome: webdriver.Chrome) -> Dashboard:
    return Dashboard(chrome)


async def _publish(client: httpx.AsyncClient, broker: Broker, topic: str, data: str) -> None:
    response = await client.post(f"{broker.url}/publish/{topic}", content=f"data: {data}\n")
    assert response.status_code == 200, response.text


@pytest.mark.slow
async def test_dashboard_shows_live_totals_rates_and_busiest_topics(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    subscribe: Any,
    dashboard: Dashboard,
) -> None:
    busy, quiet = "dashbusy01", "dashquiet01"
    busy_events, quiet_events = 10, 5
    broker = await start_broker(nursery)
    with trio.fail_after(BROWSER_SECONDS):
        await dashboard.open(broker)
        view = await dashboard.wait_for_status("live")
        stats = (await client.get(f"{broker.url}/stats")).json()
        assert view.texts["version"] == stats["version"]
        assert view.count("published") == view.count("dropped") == 0
        assert not view.token_form

        for _ in range(2):
            await subscribe(f"{broker.url}/subscribe/{busy}")
        await subscribe(f"{broker.url}/subscribe/{quiet}")
        view = await dashboard.wait_until(
            lambda v: v.count("clients") == 3 and v.count("topics") == 2,
            "3 subscribers on 2 topics",
        )
        # Connections: the three subscribers' and the page's own stream at least.
        assert (view.count("connections") or 0) >= 4
        assert view.count("known-topics") == 2  # both topics, used just now

        # Spread over three snapshots, so the page sees the rates while they last.
        async with trio.open_nursery() as publishers:

            async def publish_all() -> None:
                for n in range(busy_events):
                    await _publish(client, broker, busy, f"busy {n}")
                    if n < quiet_events:
                        await _publish(client, broker, quiet, f"quiet {n}")
                    await trio.sleep(0.3)

            publishers.start_soon(publish_all)
            await dashboard.wait_until(
                lambda v: (
                    (v.rate("published") or 0) > 0
                    and (v.rate("delivered") or 0) > 0
                    and ((v.topic(busy) or {}).get("rate") or 0) > 0
                ),
                f"published/s, delivered/s and {busy}'s events/s above 0",
            )
        published = busy_events + quiet_events
        delivered = 2 * busy_events + quiet_events
        view = await dashboard.wait_until(
            lambda v: v.count("published") == published and v.count("delivered") == delivered,
            f"{published} published and {delivered} delivered",
        )
        assert view.count("dropped") == 0
        # Rates are deltas between snapshots, not totals: back to 0 once publishing stops.
        view = await dashboard.wait_until(
            lambda v: (
                v.rate("published") == v.rate("delivered") == 0
                and (v.topic(busy) or {}).get("rate") == 0
            ),
            "published/s, delivered/s and events/s back to 0.0",
        )
        assert view.count("published") == published
        assert view.rate("dropped") == 0
        assert view.topic(busy) == {"subscribers": 2, "published": busy_events, "rate": 0}
        assert view.topic(quiet) == {"subscribers": 1, "published": quiet_events, "rate": 0}
        assert "scale 0 to" in view.chart

        for width, height in SCREENS:
            await dashboard.set_viewport(width, height)
            overflow = await dashboard.script(
                "return document.documentElement.scrollWidth - window.innerWidth;"
            )
            assert overflow <= 0, f"{overflow} px wider than a {width}x{height} screen"
        ARTIFACTS.mkdir(exist_ok=True)
        await dashboard.set_viewport(*SCREENS[0])
        assert await in_thread(dashboard.driver.save_screenshot, str(ARTIFACTS / "dashboard.png"))
        await dashboard.reset_viewport()
        await dashboard.close()
    await broker.stop()


@pytest.mark.slow
async def test_dashboard_asks_for_the_token_and_keeps_it_for_the_session(
    nursery: trio.Nursery, dashboard: Dashboard
) -> None:
    broker = await start_broker(nursery, publisher_secret=PUBLISHER_SECRET)
    token = make_token(PUBLISHER_SECRET, sub="dashboard")
    with trio.fail_after(BROWSER_SECONDS):
        await dashboard.open(broker)
        view = await dashboard.wait_until(
            lambda v: v.status == "needs-token" and v.token_form, "the token form"
        )
        no_token = view.texts["token-reason"]
        assert no_token, "the form shows why the broker refused"

        await dashboard.submit_token("not-a-jwt")
        view = await dashboard.wait_until(
            lambda v: (
                v.status == "needs-token"
                and v.token_form
                and v.texts["token-reason"] not in ("", no_token)
            ),
            "the token form again, with the broker's reason for refusing a bad token",
        )
        assert await dashboard.script(f"return sessionStorage.getItem('{TOKEN_KEY}');") is None

        await dashboard.submit_token(token)
        view = await dashboard.wait_for_status("live")
        assert not view.token_form
        assert view.count("clients") == 0
        assert await dashboard.script(f"return sessionStorage.getItem('{TOKEN_KEY}');") == token

        # A reload in the same tab: the stored token, no form.
        await in_thread(dashboard.driver.refresh)
        view = await dashboard.wait_for_status("live")
        assert not view.token_form

        # A token in the page's own URL is used too.
        await dashboard.script("sessionStorage.clear();")
        await dashboard.open(broker, f"?access_token={token}")
        view = await dashboard.wait_for_status("live")
        assert not view.token_form
        await dashboard.close()
    await broker.stop()


@pytest.mark.slow
async def test_dashboard_loads_everything_from_the_broker(
    nursery: trio.Nursery, dashboard: Dashboard
) -> None:
    broker = await start_broker(nursery)
    with trio.fail_after(BROWSER_SECONDS):
        await dashboard.open(broker)
        await dashboard.wait_for_status("live")
        loaded = await dashboard.script(
            "return [location.href,"
            " ...performance.getEntriesByType('resource').map((e) => e.name)];"
        )
        await dashboard.close()
    await broker.stop()
    assert loaded[0] == f"{broker.url}/dashboard"
    assert {f"{broker.url}/dashboard/dashboard.js", f"{broker.url}/dashboard/dashboard.css"} <= {
        *loaded
    }
    elsewhere = [url for url in loaded if not url.startswith(f"{broker.url}/")]
    assert elsewhere == [], "the page loads nothing from another origin (no CDN, no fonts)"


@pytest.mark.slow
async def test_dashboard_table_stays_bounded(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    subscribe: Any,
    dashboard: Dashboard,
) -> None:
    topics = [f"dashmany{n:03d}" for n in range(BUSIEST_ROWS + 5)]
    broker = await start_broker(nursery)
    with trio.fail_after(BROWSER_SECONDS):
        for topic in topics:
            await subscribe(f"{broker.url}/subscribe/{topic}")
        await wait_for_stats(client, broker, clients=len(topics))
        await dashboard.open(broker)
        view = await dashboard.wait_until(
            lambda v: v.count("topics") == len(topics), f"{len(topics)} topics"
        )
        # Later snapshots replace the rows; they never add to them.
        for _ in range(3):
            updated = view.texts["updated"]
            view = await dashboard.wait_until(
                lambda v, before=updated: v.texts["updated"] != before, "a newer snapshot"
            )
            shown = [row["topic"] for row in view.rows]
            assert len(shown) == BUSIEST_ROWS, shown
            assert len(set(shown)) == BUSIEST_ROWS, shown
            assert set(shown) <= set(topics), shown
        await dashboard.close()
    await broker.stop()
