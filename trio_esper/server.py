"""Run the broker: listening sockets, the history, the hub, and the edge
that serves every connection (:mod:`.edge`)."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import wrap_app

from .app import create_app
from .catalog import Catalog
from .config import Config
from .edge import Edge
from .history import History, parse_history_spec
from .history.memory import MemoryHistory
from .history.split import SplitHistory
from .history.sqlite import open_sqlite_history
from .hub import Limits, open_hub
from .metrics import Metrics

log = logging.getLogger("trio_esper")

#: Linux's TCP_USER_TIMEOUT option number (the socket module lacks it before 3.12).
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
#: Listen backlog: 10k subscribers may connect in a burst.
LISTEN_BACKLOG = 4096


async def serve(
    config: Config,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the broker until ``shutdown`` is set (forever if ``None``).

    Reports the bound ``(host, port)`` through ``task_status`` once listening,
    so ``await nursery.start(serve, config)`` works with ``port=0``.

    Shutdown: new subscriptions are refused, every open stream ends cleanly
    (its terminating chunk is written), idle keep-alive connections close;
    after ``config.shutdown_grace_seconds`` any connection still open (a peer
    that stopped reading) has its socket closed. Returns once all are gone.

    Raises:
        HistoryError: the history store cannot be opened (before listening).
        OSError: the address cannot be bound.
    """
    listeners = await trio.open_tcp_listeners(
        config.port, host=config.bind, backlog=LISTEN_BACKLOG
    )
    for listener in listeners:
        _tune_listener(listener.socket, config)

    async with open_history(config) as stored:
        durable = stored.statistics().backend != "memory"
        catalog = Catalog(config.max_topics, durable=durable)
        history: History = stored
        if durable:
            # Topics created with persist: false keep their history in memory.
            history = SplitHistory(stored, _memory_history(config), catalog.ephemeral)
        await _serve(config, history, catalog, listeners, shutdown, task_status)


async def _serve(
    config: Config,
    history: History,
    catalog: Catalog,
    listeners: list[trio.SocketListener],
    shutdown: trio.Event | None,
    task_status: trio.TaskStatus[tuple[str, int]],
) -> None:
    address = listeners[0].socket.getsockname()[:2]
    async with (
        open_hub(
            history,
            heartbeat_seconds=config.heartbeat_seconds,
            queue_events=config.queue_events,
            limits=Limits(
                topics=config.max_topics,
                subscribers=config.max_subscribers,
                subscribers_per_topic=config.max_subscribers_per_topic,
                subscriptions_per_client=config.max_subscriptions_per_address,
            ),
            catalog=catalog,
        ) as hub,
    ):
        metrics = Metrics(hub)
        app = wrap_app(
            create_app(config, hub, metrics), HypercornConfig.wsgi_max_body_size, "asgi"
        )
        edge = Edge(config, hub, app, metrics)
        metrics.connections = lambda: edge.open_connections
        async with trio.open_nursery() as nursery:
            await nursery.start(
                edge.serve, listeners, trio.Event() if shutdown is None else shutdown
            )
            log.info("listening on http://%s:%d", *address)
            task_status.started((str(address[0]), int(address[1])))


@asynccontextmanager
async def open_history(config: Config) -> AsyncIterator[History]:
    """The history backend ``config.history`` names, open for the block."""
    kind, path = parse_history_spec(config.history)
    max_age = config.history_max_age_seconds or math.inf
    if kind == "sqlite":
        assert path is not None
        async with open_sqlite_history(
            path,
            max_events_per_topic=config.history_events,
            max_age_seconds=max_age,
            sync=config.history_sync,
        ) as history:
            yield history
    else:
        yield _memory_history(config)


def _memory_history(config: Config) -> MemoryHistory:
    return MemoryHistory(
        max_events_per_topic=config.history_events, max_bytes=config.history_max_bytes
    )


def _tune_listener(sock: trio.socket.SocketType, config: Config) -> None:
    # Accepted sockets inherit these. TCP_NODELAY: an event is one small
    # write and must not wait for Nagle. TCP_USER_TIMEOUT: a write nobody
    # acknowledges for this long aborts the connection (dead peer).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.setsockopt(
            socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(config.write_timeout_seconds * 1000)
        )
    except OSError:  # not Linux
        log.debug("TCP_USER_TIMEOUT is not available here")
