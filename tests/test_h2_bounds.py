"""HTTP/2 bounds (issue 22, points 1 and 12): a subscriber stream that cannot
be written counts against the subscriber's ``--queue`` bound and is reset,
a connection's unwritten bytes are bounded, and a stream over the
connection's ``--h2-max-streams`` is refused with REFUSED_STREAM (which
clients retry) instead of waiting for a slot.

The client is the ``h2`` state machine (:mod:`.h2client`) over h2c with prior
knowledge: it can do what a browser never does on purpose, keep its
flow-control windows shut.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h2.errors
import h2.settings
import httpx
import pytest
import trio

from trio_esper.edge import bridge

from .conftest import STEP_SECONDS, Broker, start_broker, wait_for_stats
from .h2client import SUBSCRIBED, H2Client

CANCEL = h2.errors.ErrorCodes.CANCEL
REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM


@asynccontextmanager
async def open_client(
    broker: Broker,
    nursery: trio.Nursery,
    *,
    settings: dict[int, int] | None = None,
    acknowledge: bool = True,
) -> AsyncIterator[H2Client]:
    """An h2c connection, its reader in ``nursery``; closed on the way out."""
    stream = await trio.open_tcp_stream(*broker.host_port)
    client = H2Client(stream, settings=settings, acknowledge=acknowledge)
    try:
        await client.start(nursery)
        yield client
    finally:
        client.close_now()


async def publish_many(broker: Broker, topic: str, count: int, size: int) -> None:
    data = "x" * size
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        for n in range(count):
            reply = await client.post(
                f"{broker.url}/publish/{topic}", content=f"data: {n} {data}\n"
            )
            assert reply.status_code == 200, reply.text


async def clients(broker: Broker, count: int) -> None:
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        await wait_for_stats(client, broker, timeout=STEP_SECONDS, clients=count)


async def open_streams(client: H2Client, topic: str, count: int) -> list[int]:
    """``count`` subscriber streams whose answer head (200) has arrived."""
    ids = [client.request(f"/subscribe/{topic}") for _ in range(count)]
    await client.flush()
    await client.wait_for(
        lambda: all(client.streams[i].status is not None for i in ids), what="the heads"
    )
    assert [client.streams[i].status for i in ids] == [200] * count
    return ids


async def test_a_stream_with_a_shut_window_is_reset_at_the_queue_bound(
    nursery: trio.Nursery,
) -> None:
    """Initial window 0: nothing can be written to the streams. Past
    ``--queue`` events each stream is reset (as an HTTP/1.1 subscriber that
    stops reading is dropped), its subscription ends, and the broker serves on."""
    topic = "h2shutwindow1"
    broker = await start_broker(nursery, queue_events=5)
    shut = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
    async with open_client(broker, nursery, settings=shut) as client:
        ids = await open_streams(client, topic, 3)
        await clients(broker, 3)
        await publish_many(broker, topic, 20, 100)
        await client.wait_for(
            lambda: all(client.streams[i].reset_by_server is not None for i in ids),
            what="every stream reset",
        )
        assert {client.streams[i].reset_by_server for i in ids} == {CANCEL}
        assert not any(client.streams[i].data for i in ids)  # nothing could be written
        await clients(broker, 0)
        assert broker.hub.statistics().dropped == 3  # /stats counts them as dropped
        assert not client.closing  # the connection itself is kept
        # A stream that reads keeps receiving on the same connection.
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        await client.flush()
        [reader] = await open_streams(client, topic, 1)
        await client.wait_for(
            lambda: client.streams[reader].data.startswith(SUBSCRIBED), what="data"
        )
    await broker.stop()


async def test_a_stream_with_a_shut_window_is_reset_at_the_queue_bytes_bound(
    nursery: trio.Nursery,
) -> None:
    """Far below ``--queue`` in events, a shut stream's unwritten bytes reach
    ``--queue-bytes``: it is reset."""
    topic = "h2shutbytes01"
    size = 16 * 1024
    broker = await start_broker(nursery, queue_events=1000, queue_bytes=64 * 1024)
    shut = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
    async with open_client(broker, nursery, settings=shut) as client:
        [stream_id] = await open_streams(client, topic, 1)
        await clients(broker, 1)
        await publish_many(broker, topic, 6, size)  # 96 KiB
        await client.wait_for(
            lambda: client.streams[stream_id].reset_by_server is not None, what="the reset"
        )
        assert client.streams[stream_id].reset_by_server == CANCEL
        await clients(broker, 0)
    await broker.stop()


async def test_a_connection_that_never_reopens_its_window_is_bounded_in_bytes(
    nursery: trio.Nursery,
) -> None:
    """Default windows, but no WINDOW_UPDATE ever: after 64 KiB the connection
    is stalled. Far below the queue bound in events, its unwritten bytes
    reach the connection's bound, and its streams are reset."""
    topic = "h2nowindow001"
    size = 16 * 1024
    streams = 10
    broker = await start_broker(
        nursery, max_body_bytes=64 * 1024, queue_events=1000, queue_bytes=64 * 1024 * 1024
    )
    bound = bridge.connection_unsent_max_bytes(broker.config)
    # Twice the bound, in events that each reach every stream.
    events = 2 * bound // (size * streams) + 1
    assert events < broker.config.queue_events
    async with open_client(broker, nursery, acknowledge=False) as client:
        ids = await open_streams(client, topic, streams)
        await clients(broker, streams)
        await publish_many(broker, topic, events, size)
        await client.wait_for(
            lambda: all(client.streams[i].reset_by_server is not None for i in ids),
            what="every stream reset",
        )
        assert {client.streams[i].reset_by_server for i in ids} == {CANCEL}
        received = sum(len(client.streams[i].data) for i in ids)
        assert received <= 65535  # the connection's window, never reopened
        await clients(broker, 0)
    await broker.stop()


async def test_a_stream_over_the_limit_is_refused_and_a_retry_after_a_close_is_served(
    nursery: trio.Nursery,
) -> None:
    """``--h2-max-streams 5``: the 6th and 7th streams at once are refused
    with REFUSED_STREAM (a browser retries those), not left waiting; once a
    stream ends, a retry is served."""
    topic = "h2maxstreams1"
    broker = await start_broker(nursery, h2_max_streams=5)
    async with open_client(broker, nursery) as client:
        # The connection allows more streams than it serves, so that the
        # ones over the limit reach the broker and are answered.
        assert client.conn.remote_settings.max_concurrent_streams > 5
        ids = [client.request(f"/subscribe/{topic}") for _ in range(7)]
        await client.flush()
        await client.wait_for(
            lambda: all(
                client.streams[i].data.startswith(SUBSCRIBED)
                or client.streams[i].reset_by_server is not None
                for i in ids
            ),
            what="each stream served or refused",
        )
        served = [i for i in ids if client.streams[i].reset_by_server is None]
        refused = [i for i in ids if client.streams[i].reset_by_server is not None]
        assert served == ids[:5]
        assert {client.streams[i].reset_by_server for i in refused} == {REFUSED_STREAM}
        await clients(broker, 5)
        client.reset(served[0])
        await client.flush()
        await clients(broker, 4)
        [retry] = await open_streams(client, topic, 1)
        await client.wait_for(
            lambda: client.streams[retry].data.startswith(SUBSCRIBED), what="data"
        )
        assert client.streams[retry].reset_by_server is None
        await clients(broker, 5)
    await broker.stop()


async def test_a_burst_over_the_per_address_limit_is_refused_at_once_and_counted(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """``--max-subscriptions-per-address 20`` and 60 streams at once on one
    connection: 20 are served and 40 answered 503 (admission and subscription
    are one step: no 200 that ends at once), counted in /metrics, and not
    logged one line each."""
    topic = "h2burstlimit1"
    broker = await start_broker(nursery, max_subscriptions_per_address=20)
    caplog.set_level(logging.INFO, logger="trio_esper")
    async with open_client(broker, nursery) as client:
        ids = [client.request(f"/subscribe/{topic}") for _ in range(60)]
        await client.flush()
        await client.wait_for(
            lambda: all(
                client.streams[i].data.startswith(SUBSCRIBED) or client.streams[i].ended
                for i in ids
            ),
            what="each stream served or answered",
        )
        statuses = [client.streams[i].status for i in ids]
        assert statuses.count(200) == 20, statuses
        assert statuses.count(503) == 40, statuses
        served = [i for i in ids if client.streams[i].status == 200]
        assert not any(client.streams[i].ended for i in served)
        await clients(broker, 20)
        async with httpx.AsyncClient(timeout=STEP_SECONDS) as http:
            metrics = (await http.get(f"{broker.url}/metrics")).text
        assert re.search(r'^trio_esper_http_errors_total\{status="503"\} 40\.0$', metrics, re.M)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, [r.getMessage() for r in warnings]
    await broker.stop()
