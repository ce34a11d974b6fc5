"""Run the broker: listening sockets, the history, the hub, and the edge
that serves every connection (:mod:`.edge`)."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from quart_trio import QuartTrio

from . import logs
from .accepting import ConnectionSource, SocketAcceptor, open_listeners
from .app import create_app
from .catalog import BUDGET_SHARE as CATALOG_BUDGET_SHARE
from .catalog import Catalog
from .config import Config
from .edge import Edge, load_tls_context, require_private_names, wrap_asgi
from .edge.tls import ChooseContext
from .history import History, parse_history_spec
from .history.memory import MemoryHistory
from .history.split import SplitHistory
from .history.sqlite import open_sqlite_history
from .hub import Hub, Limits, open_hub
from .metrics import Metrics

log = logging.getLogger("trio_esper")


@dataclass(frozen=True, slots=True)
class Broker:
    """An open broker, whatever serves it (:func:`serve`'s edge, or an ASGI
    server through :mod:`.asgi`): publish in-process through :attr:`hub`."""

    config: Config
    hub: Hub
    metrics: Metrics
    app: QuartTrio
    """The Quart-Trio application serving every route."""


@dataclass(frozen=True, slots=True)
class Listening:
    """What :func:`serve` reports once it listens."""

    host: str
    port: int
    hub: Hub
    """For publishing in-process (``await hub.publish(topic, events)``)."""


@asynccontextmanager
async def open_broker(config: Config) -> AsyncIterator[Broker]:
    """Open the history store, the hub and the application ``config``
    describes, for the block; on exit every open stream is ended and the
    store is closed (queued writes committed).

    Raises:
        HistoryError: the history store cannot be opened.
    """
    async with open_history(config) as stored:
        durable = stored.statistics().backend != "memory"
        # The catalog takes a share of the memory budget, and what it holds
        # is charged to the memory history's (catalog.py says why).
        catalog = Catalog(
            config.max_topics,
            durable=durable,
            max_bytes=config.history_max_bytes // CATALOG_BUDGET_SHARE,
        )
        history: History = stored
        memory = stored if isinstance(stored, MemoryHistory) else None
        # Topics created with persist: false keep their history in memory,
        # except with a backplane: other nodes see a topic through Redis only.
        if durable and config.backplane is None:
            memory = _memory_history(config)
            history = SplitHistory(stored, memory, catalog.ephemeral)
        if memory is not None:
            catalog.count_in(memory.charge)
        async with open_hub(
            history,
            heartbeat_seconds=config.heartbeat_seconds,
            queue_events=config.queue_events,
            queue_bytes=config.queue_bytes,
            queue_total_bytes=config.queue_total_bytes,
            limits=Limits(
                topics=config.max_topics,
                subscribers=config.max_subscribers,
                subscribers_per_topic=config.max_subscribers_per_topic,
                subscriptions_per_client=config.max_subscriptions_per_address,
            ),
            catalog=catalog,
        ) as hub:
            metrics = Metrics(hub)
            yield Broker(config, hub, metrics, create_app(config, hub, metrics))


async def serve(
    config: Config,
    *,
    shutdown: trio.Event | None = None,
    listeners: Sequence[ConnectionSource] | None = None,
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the broker until ``shutdown`` is set (forever if ``None``).

    Reports :class:`Listening` (the bound host and port, and the hub)
    through ``task_status`` once listening, so ``await nursery.start(serve,
    config)`` works with ``port=0`` and gives the caller the hub to publish to.
    ``listeners``: where connections come from, listening already (else it
    binds ``config``'s address with :func:`~trio_esper.accepting.open_listeners`).

    Shutdown: new subscriptions are refused, every open stream ends cleanly
    (its terminating chunk is written), idle keep-alive connections close;
    after ``config.shutdown_grace_seconds`` any connection still open (a peer
    that stopped reading) has its socket closed. Returns once all are gone.

    Raises:
        ConfigError: the installed Hypercorn or quart-trio is not the one the
            edge is written for; the TLS certificate or key cannot be loaded (first).
        HistoryError: the history store cannot be opened (before listening).
        OSError: the address cannot be bound.
    """
    require_private_names()
    tls = load_tls_context(config)
    if listeners is None:  # else listening already (a worker of --threads: workers.py)
        sockets = await open_listeners(
            config.bind, config.port, write_timeout_seconds=config.write_timeout_seconds
        )
        listeners = [SocketAcceptor(sock) for sock in sockets]
    host, port = listeners[0].socket.getsockname()[:2]
    async with open_broker(config) as broker, _open_acme(config, broker, int(port)) as acme:
        chosen = tls if acme is None else acme  # ACME: the certificate's, per connection
        edge = Edge(config, broker.hub, wrap_asgi(broker.app), broker.metrics, tls=chosen)
        broker.metrics.connections = lambda: edge.open_connections
        async with trio.open_nursery() as nursery:
            await nursery.start(
                edge.serve, listeners, trio.Event() if shutdown is None else shutdown
            )
            logs.started(config, logs.url(str(host), int(port), tls=chosen is not None))
            task_status.started(Listening(str(host), int(port), broker.hub))


@asynccontextmanager
async def _open_acme(
    config: Config, broker: Broker, port: int
) -> AsyncIterator[ChooseContext | None]:
    """With ``--acme-domain``: the certificate kept valid for the block
    (:mod:`.acme`), as the edge's choice of TLS context per connection."""
    if not config.acme_domains:
        yield None
        return
    from .acme import open_certificates  # the acme library loads only when used

    async with open_certificates(config, broker.metrics, port) as certificates:
        yield certificates.context_for


@asynccontextmanager
async def open_history(config: Config) -> AsyncIterator[History]:
    """The history backend ``config.history`` names, open for the block."""
    if config.backplane is not None:
        from .history.redis import open_redis_history  # coredis loads only when used

        async with open_redis_history(
            config.backplane,
            max_events_per_topic=config.history_events,
            eviction=config.backplane_eviction,
        ) as shared:
            yield shared
        return
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
