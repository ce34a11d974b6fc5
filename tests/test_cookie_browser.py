"""The cross-site publish a cookie would allow (issue 22, point 15), made by
a real headless Chromium (tests/browser.py): a page of another origin sends
the broker a "simple" ``fetch`` (``no-cors``, ``text/plain``, credentials),
which needs no CORS preflight, so the browser sends it with the user's
cookie whatever the broker's CORS answer. Without ``--cookie-publish`` the
broker publishes nothing; with it, the same request publishes (which shows
the browser did send the cookie)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from selenium import webdriver

from .browser import BROWSER_SECONDS, in_thread, poll_script, serve_directory
from .browser import chrome as chrome  # the fixture
from .conftest import STEP_SECONDS, make_token, start_broker

SUBSCRIBER_SECRET = "subscriber-secret-for-the-csrf-test"
PUBLISHER_SECRET = "publisher-secret-for-the-csrf-test"
COOKIE = "esperToken"
TOPIC = "csrftopic01"
#: The attacker's page: it sets the cookie itself here (the user's login would
#: have), then posts with it.
POST_WITH_COOKIE_JS = """
const [url, cookie] = arguments;
document.cookie = cookie;
window.__posted = null;
fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include',
            headers: {'Content-Type': 'text/plain'}, body: 'forged by a page'})
  .then((r) => { window.__posted = r.type; }, (e) => { window.__posted = String(e); });
"""


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An origin other than the broker's, serving one empty page."""
    folder: Path = tmp_path_factory.mktemp("attacker")
    (folder / "index.html").write_text("<!doctype html><title>elsewhere</title>\n")
    with serve_directory(folder) as origin:
        yield origin


@pytest.mark.slow
@pytest.mark.parametrize("cookie_publish", [False, True], ids=["default", "cookie-publish"])
async def test_a_cross_site_page_cannot_publish_with_the_cookie(
    nursery: trio.Nursery, chrome: webdriver.Chrome, attacker: str, cookie_publish: bool
) -> None:
    broker = await start_broker(
        nursery,
        subscriber_secret=SUBSCRIBER_SECRET,
        publisher_secret=PUBLISHER_SECRET,
        auth_cookie=COOKIE,
        cors_origins=("https://app.example",),  # not the attacker's origin
        # (Only if set: the test also runs against a broker without the setting.)
        **({"cookie_publish": True} if cookie_publish else {}),
    )
    token = make_token(PUBLISHER_SECRET, TOPIC, exp_in=300)
    with trio.fail_after(BROWSER_SECONDS):
        await in_thread(chrome.get, f"{attacker}/index.html")
        await in_thread(
            chrome.execute_script,
            POST_WITH_COOKIE_JS,
            f"{broker.url}/publish/{TOPIC}",
            f"{COOKIE}={token}; path=/; SameSite=Lax",
        )
        posted = await poll_script(
            chrome,
            "return window.__posted;",
            lambda result: result is not None,
            "the fetch to settle",
        )
        assert posted == "opaque"  # sent; a no-cors answer is unreadable to the page
        await in_thread(chrome.get, "about:blank")
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        reply = await client.get(
            f"{broker.url}/history/{TOPIC}",
            headers={"Authorization": f"Bearer {make_token(SUBSCRIBER_SECRET, TOPIC)}"},
        )
    assert reply.status_code == 200
    published = [line for line in reply.text.splitlines() if "forged by a page" in line]
    assert len(published) == (1 if cookie_publish else 0), reply.text
    await broker.stop()
