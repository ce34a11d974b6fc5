"""Run the broker: listening sockets, the hub, and Hypercorn's HTTP protocol.

We drive Hypercorn's per-connection ``TCPServer`` ourselves rather than calling
``hypercorn.trio.serve``: that lets us bind port 0 and report the address, set
socket options on the listener, and -- the reason that matters -- keep a handle
on every connection, so shutdown can close the sockets of peers that stopped
reading (Hypercorn shields its socket writes from cancellation, so without this
one stalled client would hold shutdown forever).
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from .app import create_app
from .config import Config
from .fastlane import FastLane
from .history import History, parse_history_spec
from .history.memory import MemoryHistory
from .history.sqlite import open_sqlite_history
from .hub import Hub, open_hub
from .rawstream import STATE_KEY, HTTPServerStream, RawConnection

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
    address = listeners[0].socket.getsockname()[:2]
    hyper = HypercornConfig()
    hyper.keep_alive_timeout = config.keep_alive_seconds
    # Publishers keep one connection for millions of requests (Hypercorn: 1000).
    hyper.keep_alive_max_requests = 1 << 62
    context = WorkerContext(None)
    connections = _Connections()

    async with (
        open_history(config) as history,
        open_hub(
            history,
            heartbeat_seconds=config.heartbeat_seconds,
            queue_events=config.queue_events,
        ) as hub,
    ):
        app = wrap_app(create_app(config, hub), hyper.wsgi_max_body_size, "asgi")
        lane = FastLane(config, hub, keep_alive_timeout_seconds=hyper.keep_alive_timeout)

        async def handle(stream: trio.SocketStream) -> None:
            connections.add(stream)
            raw: RawConnection | None = None
            try:
                unread = await lane.serve(stream) if config.fast_lane else b""
                if unread is None:
                    await stream.aclose()
                    return
                server_stream = HTTPServerStream(stream, unread)
                raw = RawConnection(stream, server_stream, partial(connections.discard, stream))
                # Every request's ASGI scope gets a shallow copy of this dict.
                state: dict[str, object] = {STATE_KEY: raw}
                connection = TCPServer(app, hyper, context, ConnectionState(state), server_stream)  # type: ignore[arg-type]
                await connection
            finally:
                if raw is None or not raw.detached:
                    await trio.aclose_forcefully(stream)
                    connections.discard(stream)

        async with trio.open_nursery() as connection_nursery:
            async with trio.open_nursery() as listen_nursery:
                for listener in listeners:
                    listen_nursery.start_soon(_accept, listener, handle, connection_nursery)
                listen_nursery.start_soon(lane.reap)
                log.info("listening on http://%s:%d", *address)
                task_status.started((str(address[0]), int(address[1])))
                await (trio.Event() if shutdown is None else shutdown).wait()
                listen_nursery.cancel_scope.cancel()
            lane.close()
            await _shut_down(hub, context, connections, config.shutdown_grace_seconds)


#: accept() errors that mean "out of file descriptors or memory for now".
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How long to wait before accepting again after one of them.
ACCEPT_RETRY_SECONDS = 0.1


async def _accept(
    listener: trio.SocketListener,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """Accept connections forever, each handled in ``nursery``.

    Unlike ``trio.serve_listeners``, which closes a connection when its
    handler returns, the handler owns its stream: a subscriber's connection
    outlives its handler once detached to the topic's task (rawstream.py).
    """
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.warning("accept failed (%s); retrying in %g s", exc, ACCEPT_RETRY_SECONDS)
                await trio.sleep(ACCEPT_RETRY_SECONDS)
            else:
                nursery.start_soon(handle, stream)


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
        yield MemoryHistory(
            max_events_per_topic=config.history_events, max_bytes=config.history_max_bytes
        )


async def _shut_down(
    hub: Hub,
    context: WorkerContext,
    connections: _Connections,
    grace_seconds: float,
) -> None:
    log.info("shutting down: %d connections open", len(connections.streams))
    hub.close()
    # Hypercorn closes a connection after its current response once
    # `terminated` is set, and wakes idle keep-alive ones.
    await context.terminated.set()
    with trio.move_on_after(grace_seconds):
        await connections.wait_empty()
    for stream in list(connections.streams):
        # Closing the socket wakes a write blocked on a peer that stopped
        # reading (trio.lowlevel.notify_closing), even a shielded one.
        stream.socket.close()
    if connections.streams:
        log.warning(
            "closed %d connections still open after the grace period", len(connections.streams)
        )


class _Connections:
    """The open connections, and a way to wait until there are none."""

    def __init__(self) -> None:
        self.streams: set[trio.SocketStream] = set()
        self._empty = trio.Event()

    def add(self, stream: trio.SocketStream) -> None:
        self.streams.add(stream)

    def discard(self, stream: trio.SocketStream) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self._empty.set()

    async def wait_empty(self) -> None:
        if self.streams:
            self._empty = trio.Event()
            await self._empty.wait()


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
