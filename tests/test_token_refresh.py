"""A page that stays subscribed past its token's lifetime, in real headless
Chromium: the broker ends the stream at the token's ``exp`` with ``event:
expired``, and the code docs/tokens.md gives (run here as written, with the
broker's URL for its placeholder) fetches a fresh token and resumes with
``?lastEventId=``, missing nothing and receiving nothing twice."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from selenium import webdriver

from .browser import BROWSER_SECONDS, in_thread, poll_script, serve_directory
from .browser import chrome as chrome  # the fixture
from .conftest import Broker, make_token, start_broker, wait_for_stats

ROOT = Path(__file__).resolve().parent.parent
SECRET = "subscriber-secret-for-the-refresh-test"
TOPIC = "myTopic123"
#: Records what the page's code does, without changing it: every EventSource
#: it opens (its URL) and every event and ``expired`` it sees.
WATCH_JS = """
window.__urls = []; window.__got = []; window.__expired = 0;
const Original = window.EventSource;
window.EventSource = class extends Original {
  constructor(url, init) {
    super(url, init);
    window.__urls.push(String(url));
    this.addEventListener('message', (e) => window.__got.push([e.lastEventId, e.data]));
    this.addEventListener('expired', () => { window.__expired += 1; });
  }
};
"""


def docs_block() -> str:
    """The ``?token=`` renewal code of docs/tokens.md."""
    text = (ROOT / "docs" / "tokens.md").read_text()
    blocks = re.findall(r"^ *```js\n(.*?)^ *```", text, re.MULTILINE | re.DOTALL)
    found = [b for b in blocks if 'addEventListener("expired", renew)' in b]
    assert len(found) == 1, "docs/tokens.md has no renewal block"
    return found[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The page's origin: a blank page and "your backend"'s token URL (a file)."""
    directory = tmp_path_factory.mktemp("refresh-site")
    (directory / "index.html").write_text("<!doctype html><title>events</title>")
    (directory / "my-app").mkdir()
    with serve_directory(directory) as origin:
        yield directory, origin


@pytest.mark.slow
async def test_a_page_renews_its_token_when_the_stream_expires_and_misses_nothing(
    nursery: trio.Nursery,
    chrome: webdriver.Chrome,
    client: httpx.AsyncClient,
    site: tuple[Path, str],
) -> None:
    directory, origin = site
    broker: Broker = await start_broker(nursery, subscriber_secret=SECRET, cors_origins=(origin,))
    fresh = make_token(SECRET, TOPIC, exp_in=600)
    (directory / "my-app" / "event-token").write_text(fresh)
    code = docs_block().replace("https://events.example.com", broker.url)
    with trio.fail_after(BROWSER_SECONDS):
        await in_thread(chrome.get, f"{origin}/index.html")
        await in_thread(
            chrome.execute_script,
            WATCH_JS + code + "\nopen(arguments[0]);",
            make_token(SECRET, TOPIC, exp_in=2),
        )
        await wait_for_stats(client, broker, clients=1)
        ids = []
        for n in range(2):
            answer = await client.post(f"{broker.url}/publish/{TOPIC}", content=b"data: e%d\n" % n)
            ids.append(answer.json()["id"])
        await poll_script(chrome, "return window.__expired;", lambda n: n == 1, "event: expired")
        # The page opened again, with the fresh token, after the last id it had.
        urls = await poll_script(
            chrome, "return window.__urls;", lambda urls: len(urls) == 2, "a second EventSource"
        )
        assert f"token={fresh}" in urls[1]
        assert f"lastEventId={ids[1]}" in urls[1]
        await wait_for_stats(client, broker, clients=1)
        answer = await client.post(f"{broker.url}/publish/{TOPIC}", content=b"data: e2\n")
        ids.append(answer.json()["id"])
        got = await poll_script(
            chrome, "return window.__got;", lambda got: len(got) >= 3, "the third event"
        )
        assert got == [[ids[0], "e0"], [ids[1], "e1"], [ids[2], "e2"]]
        await in_thread(chrome.get, "about:blank")
    await broker.stop()
