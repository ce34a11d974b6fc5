"""Routes for operators: statistics (``/stats`` and its live stream), the
dashboard, Prometheus metrics, liveness and readiness, and the OpenAPI
document. Quart-Trio routes.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from importlib.resources.abc import Traversable
from typing import Any

import trio
from quart import Response, request
from werkzeug.datastructures import Headers

from . import endpoints, openapi, web
from .config import Config
from .errors import NotFound
from .hub import Hub
from .metrics import CONTENT_TYPE, Metrics
from .sse import SUBSCRIBED_FRAME, Event, encode
from .version import __version__

#: How often the statistics stream sends a snapshot.
STATS_INTERVAL_SECONDS = 1.0
#: Topics listed in a snapshot's ``busiest``.
BUSIEST_TOPICS = 20
#: A history probe that takes longer than this counts as failed.
READY_PROBE_SECONDS = 2.0
#: The dashboard loads nothing but its own files and the broker's stream.
DASHBOARD_HEADERS = [
    ("cache-control", "no-cache"),
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
]


def register(app: Any, config: Config, hub: Hub, route: web.Route, metrics: Metrics) -> None:
    """Add the operators' routes to ``app``."""
    feed = _StatsFeed(hub, metrics)
    readiness = _Readiness(hub, metrics)
    dashboard_files = _dashboard_files()

    def authorise_monitoring() -> None:
        endpoints.authorise_management(config, metrics=True, **web.credentials(config))

    @route("/stats", "GET")
    async def stats() -> Response:
        authorise_monitoring()
        return web.json_response(config, _statistics(hub, metrics))

    @route("/stats/stream", "GET")
    async def stats_stream() -> Response:
        authorise_monitoring()
        headers = [*endpoints.STREAM_HEADERS, *web.cors_headers(config)]
        if request.method == "HEAD":  # RFC 9110, section 9.3.2: the head alone
            return Response(b"", headers=Headers(headers))

        async def stream() -> AsyncIterator[bytes]:
            yield SUBSCRIBED_FRAME
            while not hub.closing:
                yield encode(Event(json.dumps(feed.snapshot()), event="stats"))
                with trio.move_on_after(STATS_INTERVAL_SECONDS):
                    await hub.wait_closing()

        return web.endless(Response(stream(), status=200, headers=Headers(headers)))

    @route("/metrics", "GET")
    async def prometheus() -> Response:
        authorise_monitoring()
        headers = [("content-type", CONTENT_TYPE), *web.cors_headers(config)]
        return web.response(endpoints.Answer(200, headers, metrics.exposition()))

    @route("/health", "GET")
    async def health() -> Response:
        return web.json_response(config, {"status": "ok", "version": __version__})

    @route("/ready", "GET")
    async def ready() -> Response:
        reason = await readiness.check()
        if reason is None:
            return web.json_response(config, {"status": "ready"})
        return web.json_response(config, {"status": "not ready", "reason": reason}, 503)

    @route("/openapi.json", "GET")
    async def openapi_document() -> Response:
        return web.json_response(config, openapi.document())

    @route("/dashboard", "GET")
    async def dashboard() -> Response:
        return _dashboard_file(dashboard_files, "index.html")

    @route("/dashboard/<name>", "GET")
    async def dashboard_asset(name: str) -> Response:
        return _dashboard_file(dashboard_files, name)


def _statistics(hub: Hub, metrics: Metrics) -> dict[str, Any]:
    """What ``/stats`` answers."""
    figures = asdict(hub.statistics())
    # The Mercure hub's share (its subscriptions and updates are the hub's
    # routed log), counted in the totals too.
    mercure = {
        "clients": figures.pop("routed_clients"),
        "published": figures.pop("routed_published"),
    }
    return {
        "version": __version__,
        "pid": os.getpid(),
        **figures,
        "mercure": mercure,
        "history": asdict(hub.history.statistics()),
        **{name: section() for name, section in metrics.sections.items()},
    }


class _StatsFeed:
    """Snapshots for the statistics stream: taken at most once an interval,
    shared by every open stream (the busiest topics are counted per interval)."""

    def __init__(self, hub: Hub, metrics: Metrics) -> None:
        self._hub = hub
        self._metrics = metrics
        #: Rates in the first snapshot are over the time since start.
        self._taken = time.monotonic()
        self._snapshot: dict[str, Any] = {}

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        elapsed = now - self._taken
        if self._snapshot and elapsed < STATS_INTERVAL_SECONDS * 0.9:
            return self._snapshot
        self._taken = now
        busiest = self._hub.busiest(BUSIEST_TOPICS)
        seconds = max(elapsed, 0.001)
        self._snapshot = {
            "time": time.time(),
            **_statistics(self._hub, self._metrics),
            "connections": self._metrics.connections(),
            "busiest": [
                {
                    "id": info.id,
                    "subscribers": info.subscribers,
                    "published": info.published,
                    "rate": round(recent / seconds, 3),
                }
                for info, recent in busiest
            ],
        }
        return self._snapshot


class _Readiness:
    """Whether the broker can do its job: it accepts subscriptions and its
    history store takes a write. Probed at most once a second."""

    def __init__(self, hub: Hub, metrics: Metrics) -> None:
        self._hub = hub
        self._metrics = metrics
        self._lock = trio.Lock()
        self._checked = -float("inf")
        self._reason: str | None = None

    async def check(self) -> str | None:
        """``None`` if ready, else why not."""
        if self._hub.closing:
            return "the broker is shutting down"
        for check in self._metrics.readiness:
            if (reason := check()) is not None:
                return reason
        async with self._lock:  # one probe at a time; the others reuse it
            if trio.current_time() - self._checked >= endpoints.READY_CACHE_SECONDS:
                self._reason = f"history store did not answer in {READY_PROBE_SECONDS:g} s"
                with trio.move_on_after(READY_PROBE_SECONDS):
                    problem = await self._hub.history.check()
                    self._reason = None if problem is None else f"history store: {problem}"
                self._checked = trio.current_time()
            return self._reason


def _dashboard_files() -> dict[str, Traversable]:
    """The dashboard's files by name, listed once: a name from a request is
    looked up here and never reaches the file system, so no name, however
    long or odd, can raise there (ENAMETOOLONG, an embedded NUL)."""
    folder = importlib.resources.files(__package__).joinpath("dashboard")
    return {
        entry.name: entry
        for entry in folder.iterdir()
        if entry.is_file()
        and not entry.name.startswith(".")
        and _suffix(entry.name) in endpoints.DASHBOARD_TYPES
    }


def _suffix(name: str) -> str:
    return name[name.rfind(".") :] if "." in name else ""


def _dashboard_file(files: dict[str, Traversable], name: str) -> Response:
    """A file of the dashboard, from the package.

    Raises :class:`NotFound` for a name it does not have, or a file it cannot
    read (removed or unreadable since the broker started)."""
    resource = files.get(name)
    try:
        if resource is None:
            raise FileNotFoundError(name)
        body = resource.read_bytes()
    except OSError:
        raise NotFound(f"the dashboard has no file {name[:64]!r}") from None
    headers = [("content-type", endpoints.DASHBOARD_TYPES[_suffix(name)]), *DASHBOARD_HEADERS]
    return Response(body, status=200, headers=Headers(headers))
