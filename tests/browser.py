"""Real headless Chromium for the browser tests, driven by selenium.

Needs Chromium and its chromedriver installed system-wide (Debian/Ubuntu:
``apt-get install chromium chromium-driver``) and the ``selenium`` package; no
browser is downloaded. Set ``CHROMIUM_BINARY`` / ``CHROMEDRIVER`` to use other
paths. A missing browser fails these tests: CI installs it, so a skip would
only hide a broken setup.

Selenium's calls block, so each runs in a worker thread (:func:`in_thread`)
while the broker keeps serving in the test's own Trio loop. Pages are served
over HTTP by :func:`serve_directory`, as ``python3 -m http.server`` serves them.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from .conftest import STEP_SECONDS

#: Chromium's first start in a fresh profile is slow on a loaded CI machine.
BROWSER_SECONDS = 60.0
#: Flags for a container running as root: no sandbox (needs user namespaces),
#: no GPU, and none of the background traffic a test must not depend on.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
)

T = TypeVar("T")


def _find(env: str, *names: str) -> str:
    override = os.environ.get(env)
    if override:
        if not Path(override).is_file():
            pytest.fail(f"{env}={override} does not exist", pytrace=False)
        return override
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"{names[0]} is not installed (looked for {', '.join(names)} on PATH; set {env} "
        "to its path). On Debian/Ubuntu: apt-get install -y chromium chromium-driver",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def chrome() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module, with a throw-away profile."""
    binary = _find("CHROMIUM_BINARY", "chromium", "chromium-browser", "google-chrome")
    driver_path = _find("CHROMEDRIVER", "chromedriver")
    with tempfile.TemporaryDirectory(prefix="trio-esper-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        # A Service with a path: selenium uses it and never runs Selenium Manager,
        # which would otherwise try to download a driver.
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            driver.set_page_load_timeout(STEP_SECONDS)
            driver.set_script_timeout(STEP_SECONDS)
            yield driver
        finally:
            driver.quit()


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking selenium call without blocking the Trio loop."""
    return await trio.to_thread.run_sync(fn, *args)


async def poll_script(
    driver: webdriver.Chrome,
    script: str,
    done: Callable[[Any], bool],
    what: str,
    timeout: float = STEP_SECONDS,
) -> Any:
    """Run ``script`` in the page until ``done(result)``; return that result.
    Fails after ``timeout`` with ``what`` was awaited and the last result."""
    result: Any = None
    with trio.move_on_after(timeout):
        while not done(result := await in_thread(driver.execute_script, script)):
            await trio.sleep(0.05)
        return result
    pytest.fail(f"waited {timeout:g} s for {what}; the page shows {result!r}")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 from a thread, as
    ``python3 -m http.server`` does, and yield its origin: another origin than
    the broker's, so the browser applies CORS. Stopped on exit."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            host, port = server.server_address[:2]
            yield f"http://{host}:{port}"
        finally:
            server.shutdown()
            thread.join()
