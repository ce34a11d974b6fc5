"""trio_esper.client against a real broker on loopback: round trips under Trio
and asyncio, restarts (memory history: a reset; SQLite: every event exactly
once across two restarts), a slow-subscriber drop, ``retry:``, ``Retry-After``
and the errors that end a subscription.

Each test asserts order and presence of events; timings only as loose bounds
that a client ignoring the setting under test could not meet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import httpx
import pytest
import trio

from trio_esper.client import (
    RESET_EVENT,
    BrokerError,
    Client,
    PublishAnswer,
    ReceivedEvent,
    Subscription,
    _reconnect_delay,
)

from .conftest import (
    STEP_SECONDS,
    TOPIC,
    BrokerProcess,
    broker_process,
    make_token,
    start_broker,
    wait_for_stats,
)

SECRET = "subscriber-secret-of-at-least-32-bytes"
RESET_DATA = {"reason": "unknown-last-event-id"}
#: A restarted broker may find its port briefly held; it is tried this often.
BIND_ATTEMPTS = 10
BIND_RETRY_SECONDS = 0.2
#: A slow reader: this receive buffer (a few 1 KB events) and a pause per event,
#: against publishes as fast as the broker answers; a queue of 5 then fills.
SLOW_RECEIVE_BUFFER = 8192
SLOW_PAUSE_SECONDS = 0.005


async def _consume(
    subscription: Subscription, into: list[ReceivedEvent], pause: float = 0
) -> None:
    async for event in subscription:
        into.append(event)
        if pause:
            await trio.sleep(pause)


async def _until(condition: Callable[[], bool], timeout: float = STEP_SECONDS) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def _publish_some(client: Client, prefix: str, count: int) -> list[str]:
    ids = []
    for n in range(count):
        answer = await client.publish(TOPIC, data=f"{prefix}{n}")
        assert answer["events"] == 1
        ids.append(answer["id"])
    return ids


@asynccontextmanager
async def _broker_on(port: int, *args: str) -> AsyncIterator[BrokerProcess]:
    """A broker process on ``port`` (a restart), retrying while the port is held."""
    for attempt in range(1, BIND_ATTEMPTS + 1):
        stack = AsyncExitStack()
        try:
            running = await stack.enter_async_context(broker_process("--port", str(port), *args))
        except pytest.fail.Exception:
            if attempt == BIND_ATTEMPTS:
                raise
            await trio.sleep(BIND_RETRY_SECONDS)
            continue
        async with stack:
            yield running
        return


async def _stop(running: BrokerProcess, signum: signal.Signals) -> None:
    running.process.send_signal(signum)
    with trio.fail_after(STEP_SECONDS):
        await running.process.wait()


def _port(url: str) -> int:
    return int(url.rpartition(":")[2])


async def test_publish_and_subscribe_round_trip(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(nursery)
    got: list[ReceivedEvent] = []
    async with (
        Client(broker.url) as esper,
        esper.subscribe(TOPIC) as events,
        trio.open_nursery() as consumers,
    ):
        consumers.start_soon(_consume, events, got)
        await wait_for_stats(client, broker, clients=1)
        one = await esper.publish(TOPIC, data="hello\nworld", event="greeting", id="first-1")
        # A body of two events; the second has empty data, which is still an event.
        two = await esper.publish(
            TOPIC.upper(), b"id: b-1\ndata: one\n\nid: b-2\nevent: two\ndata:\n\n"
        )
        await _until(lambda: len(got) == 3)
        consumers.cancel_scope.cancel()
    assert events.last_event_id == "b-2"
    assert events.connections == 1
    assert one == {"id": "first-1", "events": 1, "subscribers": 1}
    assert two == {"id": "b-2", "events": 2, "subscribers": 1}
    assert got == [
        ReceivedEvent("first-1", "greeting", "hello\nworld"),
        ReceivedEvent("b-1", "message", "one"),
        ReceivedEvent("b-2", "two", ""),
    ]
    await broker.stop()


def _asyncio_round_trip(url: str) -> tuple[bool, list[ReceivedEvent], list[PublishAnswer]]:
    """In a thread of its own: subscribe and publish through the client on asyncio."""

    async def run() -> tuple[bool, list[ReceivedEvent], list[PublishAnswer]]:
        on_asyncio = asyncio.current_task() is not None  # raises outside asyncio
        got: list[ReceivedEvent] = []
        answers: list[PublishAnswer] = []
        async with (
            httpx.AsyncClient() as http,
            Client(url) as esper,
            esper.subscribe(TOPIC) as events,
        ):

            async def consume() -> None:
                async for event in events:
                    got.append(event)
                    if len(got) == 2:
                        return

            with anyio.fail_after(STEP_SECONDS):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(consume)
                    while (await http.get(f"{url}/stats")).json()["clients"] != 1:
                        await anyio.sleep(0.01)
                    answers.append(await esper.publish(TOPIC, data="from asyncio", id="aio-1"))
                    answers.append(await esper.publish(TOPIC, b"event: x\ndata: 2\n"))
        return on_asyncio, got, answers

    return anyio.run(run, backend="asyncio")


async def test_round_trip_on_asyncio(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    broker = await start_broker(nursery)
    on_asyncio, got, answers = await trio.to_thread.run_sync(_asyncio_round_trip, broker.url)
    assert on_asyncio
    assert [a["subscribers"] for a in answers] == [1, 1]
    assert got == [
        ReceivedEvent("aio-1", "message", "from asyncio"),
        ReceivedEvent(answers[1]["id"], "x", "2"),
    ]
    stats = await wait_for_stats(client, broker, clients=0)
    assert stats["published"] == 2
    await broker.stop()


async def test_memory_history_restart_gives_a_reset_then_every_new_event(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """Memory history is gone after a restart. Expected, exactly: the events
    delivered before the stop, then one ``reset`` (the new broker does not know
    the last id), then every event published to the new broker, whether it
    arrives from the retained history or live; nothing twice."""
    broker = await start_broker(nursery, retry_ms=50)
    port = broker.host_port[1]
    got: list[ReceivedEvent] = []
    async with (
        Client(broker.url) as esper,
        esper.subscribe(TOPIC) as events,
        trio.open_nursery() as consumers,
    ):
        consumers.start_soon(_consume, events, got)
        await wait_for_stats(client, broker, clients=1)
        before = await _publish_some(esper, "a", 3)
        await _until(lambda: len(got) == 3)
        await broker.stop()
        broker = await start_broker(nursery, retry_ms=50, port=port)
        after = await _publish_some(esper, "b", 3)  # the client may or may not be back
        await wait_for_stats(client, broker, clients=1)
        after += await _publish_some(esper, "c", 1)  # live, surely
        await _until(lambda: len(got) == 8)
        consumers.cancel_scope.cancel()
    assert events.last_event_id == after[-1]
    assert [e.id for e in got] == [*before, None, *after]
    assert [e.data for e in got[:3]] == ["a0", "a1", "a2"]
    reset = got[3]
    assert reset.is_reset
    assert reset.event == RESET_EVENT
    assert json.loads(reset.data) == RESET_DATA
    assert [e.data for e in got[4:]] == ["b0", "b1", "b2", "c0"]
    await broker.stop()


@pytest.mark.slow
async def test_sqlite_history_two_restarts_every_event_exactly_once(
    tmp_path, client: httpx.AsyncClient
) -> None:
    """The httpx-sse pitfall. After the first restart the client reconnects
    and the new stream carries ``retry:`` and no event; httpx-sse yields that
    block as an event with id ``""``, and its reconnect recipe stores it. The
    second outage then has nothing to resume from, and the events published
    while the client is away are lost. Here they must all arrive, once."""
    store = ("--history", f"sqlite:{tmp_path / 'history.db'}")
    got: list[ReceivedEvent] = []
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(broker_process(*store, "--retry", "50"))
        port = _port(first.url)
        esper = await stack.enter_async_context(Client(first.url))
        events = await stack.enter_async_context(esper.subscribe(TOPIC))
        consumers = await stack.enter_async_context(trio.open_nursery())
        consumers.start_soon(_consume, events, got)
        await wait_for_stats(client, first, clients=1)
        before = await _publish_some(esper, "a", 3)
        await _until(lambda: len(got) == 3)

        # Outage 1: a clean end (SIGTERM). The client resumes after a2: nothing
        # new, and a0-a2 must not come again although the file still has them.
        await _stop(first, signal.SIGTERM)
        # The second broker asks for 3 s before a reconnection, so that after
        # outage 2 the client is surely away while the test publishes.
        second = await stack.enter_async_context(_broker_on(port, *store, "--retry", "3000"))
        await wait_for_stats(client, second, clients=1)
        await _until(lambda: events.reconnection_seconds == 3.0)
        assert len(got) == 3

        # Outage 2: the stream breaks (SIGKILL). Publish while the client waits.
        await _stop(second, signal.SIGKILL)
        third = await stack.enter_async_context(_broker_on(port, *store, "--retry", "50"))
        away = await _publish_some(esper, "c", 3)
        stats = (await client.get(f"{third.url}/stats")).json()
        assert stats["clients"] == 0, "the client came back before the publishes"
        await _until(lambda: len(got) == 6, timeout=3 * STEP_SECONDS)
        live = await _publish_some(esper, "d", 2)
        await _until(lambda: len(got) == 8)
        consumers.cancel_scope.cancel()
    assert [e.id for e in got] == [*before, *away, *live]
    assert [e.data for e in got] == ["a0", "a1", "a2", "c0", "c1", "c2", "d0", "d1"]
    assert events.connections == 3


async def test_slow_subscriber_is_dropped_and_resumes_without_gap_or_duplicate(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """A queue of 5 and a reader with a small receive buffer that takes its
    time over 200 events of 1 KB: the broker drops it (its stream ends), the
    client reconnects with Last-Event-ID and gets the rest from history."""
    broker = await start_broker(nursery, queue_events=5)
    small_window = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RECEIVE_BUFFER)]
    )
    pad = "x" * 1000
    got: list[ReceivedEvent] = []
    async with (
        httpx.AsyncClient(transport=small_window, timeout=STEP_SECONDS) as http,
        Client(broker.url, http=http) as slow,
        Client(broker.url) as publisher,
        slow.subscribe(TOPIC, initial_delay_seconds=0.05) as events,
        trio.open_nursery() as consumers,
    ):
        consumers.start_soon(_consume, events, got, SLOW_PAUSE_SECONDS)
        await wait_for_stats(client, broker, clients=1)
        ids = [(await publisher.publish(TOPIC, data=f"{n} {pad}"))["id"] for n in range(200)]
        await _until(lambda: len(got) == 200, timeout=3 * STEP_SECONDS)
        consumers.cancel_scope.cancel()
    connections = events.connections
    stats = (await client.get(f"{broker.url}/stats")).json()
    assert stats["dropped"] >= 1, "the reader was never dropped: the test proves nothing"
    assert connections >= 2
    assert [e.id for e in got] == ids
    assert [e.data.partition(" ")[0] for e in got] == [str(n) for n in range(200)]
    await broker.stop()


async def _reconnect_after_restart(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    retry_ms: int | None,
    initial_delay_seconds: float,
) -> tuple[float, float]:
    """Restart an in-process broker under a subscriber; return how long after
    asking the broker to stop, and after it had stopped, the client was back
    (its ``reset`` arrived)."""
    broker = await start_broker(nursery, retry_ms=retry_ms)
    port = broker.host_port[1]
    got: list[ReceivedEvent] = []
    async with (
        Client(broker.url) as esper,
        esper.subscribe(TOPIC, initial_delay_seconds=initial_delay_seconds) as events,
        trio.open_nursery() as consumers,
    ):
        consumers.start_soon(_consume, events, got)
        await wait_for_stats(client, broker, clients=1)
        await _publish_some(esper, "a", 1)
        await _until(lambda: len(got) == 1)
        asked = trio.current_time()
        await broker.stop()
        stopped = trio.current_time()
        broker = await start_broker(nursery, retry_ms=retry_ms, port=port)
        await _until(lambda: len(got) == 2, timeout=2 * STEP_SECONDS)
        back = trio.current_time()
        consumers.cancel_scope.cancel()
    assert got[1].is_reset
    await broker.stop()
    return back - asked, back - stopped


async def test_retry_from_the_broker_sets_the_reconnection_delay(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    # The client's own delay is 30 s; the broker's retry: 100 ms must win.
    _, after_stop = await _reconnect_after_restart(nursery, client, 100, 30.0)
    assert after_stop < 5.0


async def test_without_retry_the_clients_own_delay_applies(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    # The stream ended after the stop was asked for, and the client then waited.
    after_asking, _ = await _reconnect_after_restart(nursery, client, None, 1.0)
    assert after_asking >= 1.0


async def test_503_is_retried_after_retry_after(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_esper.client")
    broker = await start_broker(nursery, max_subscribers=1)
    holder = await subscribe(f"{broker.url}/subscribe/{TOPIC}")
    got: list[ReceivedEvent] = []

    def refusals() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "503" in r.getMessage()]

    async with (
        Client(broker.url) as esper,
        esper.subscribe(TOPIC, initial_delay_seconds=0.05) as events,
        trio.open_nursery() as consumers,
    ):
        consumers.start_soon(_consume, events, got)
        await _until(lambda: bool(refusals()))
        await holder.aclose()
        await _until(lambda: events.connections == 1, timeout=2 * STEP_SECONDS)
        connected = time.time()
        await wait_for_stats(client, broker, clients=1)
        await _publish_some(esper, "a", 1)
        await _until(lambda: len(got) == 1)
        consumers.cancel_scope.cancel()
    # The backoff alone would have tried again after 0.05-0.1 s; Retry-After says 1 s.
    assert connected - refusals()[0].created >= 1.0
    assert [e.data for e in got] == ["a0"]
    await broker.stop()


@pytest.mark.parametrize(
    ("topic", "signed", "status"),
    [
        pytest.param(TOPIC, None, 401, id="no-token"),
        pytest.param(TOPIC, (SECRET, "othertopic01"), 403, id="other-topic"),
        pytest.param(TOPIC, ("wrong-secret-also-32-bytes-long!!", TOPIC), 403, id="bad-sig"),
        pytest.param("ab", (SECRET, TOPIC), 400, id="bad-topic"),
    ],
)
async def test_permanent_refusals_end_the_subscription(
    nursery: trio.Nursery, topic: str, signed: tuple[str, str] | None, status: int
) -> None:
    """4xx but 408 and 429: raised at once, and the subscription is over."""
    broker = await start_broker(nursery, subscriber_secret=SECRET)
    token = None if signed is None else make_token(*signed)
    async with Client(broker.url) as esper, esper.subscribe(topic, token=token) as events:
        with trio.fail_after(STEP_SECONDS), pytest.raises(BrokerError) as info:
            await events.__anext__()
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()
        assert events.connections == 0
    assert info.value.status == status
    assert info.value.reason
    assert "\n" not in info.value.reason
    assert str(info.value) == f"{status} {info.value.reason}"
    await broker.stop()


async def test_a_valid_token_subscribes(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    broker = await start_broker(nursery, subscriber_secret=SECRET)
    got: list[ReceivedEvent] = []
    async with (
        Client(broker.url) as esper,
        esper.subscribe(TOPIC, token=make_token(SECRET)) as events,
        trio.open_nursery() as consumers,
    ):
        consumers.start_soon(_consume, events, got)
        await wait_for_stats(client, broker, clients=1)
        await _publish_some(esper, "a", 1)
        await _until(lambda: len(got) == 1)
        consumers.cancel_scope.cancel()
    assert [e.data for e in got] == ["a0"]
    await broker.stop()


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        pytest.param(b"nonsense: 1\n", 400, "unknown field", id="unknown-field"),
        pytest.param(b"id: dup\ndata: 1\n\nid: dup\ndata: 2\n", 409, "", id="duplicate-id"),
    ],
)
async def test_publish_errors_carry_status_and_reason(
    nursery: trio.Nursery, body: bytes, status: int, reason: str
) -> None:
    broker = await start_broker(nursery)
    async with Client(broker.url) as esper:
        with pytest.raises(BrokerError) as info:
            await esper.publish(TOPIC, body)
    assert info.value.status == status
    assert reason in info.value.reason
    assert info.value.reason
    assert "\n" not in info.value.reason
    await broker.stop()


async def test_publish_needs_a_publisher_token_when_auth_is_on(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery, publisher_secret=SECRET)
    async with Client(broker.url) as esper:
        with pytest.raises(BrokerError) as info:
            await esper.publish(TOPIC, data="x")
        answer = await esper.publish(TOPIC, data="x", token=make_token(SECRET))
    assert info.value.status == 401
    assert answer["events"] == 1
    await broker.stop()


async def test_resume_from_a_given_id_in_any_script(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """``last_event_id`` (say, stored from an earlier run) goes out as UTF-8."""
    broker = await start_broker(nursery)
    got: list[ReceivedEvent] = []
    async with Client(broker.url) as esper:
        for n in range(3):
            await esper.publish(TOPIC, data=f"e{n}", id=f"事件-{n}")
        async with (
            esper.subscribe(TOPIC, last_event_id="事件-0") as events,
            trio.open_nursery() as consumers,
        ):
            consumers.start_soon(_consume, events, got)
            await _until(lambda: len(got) == 2)
            consumers.cancel_scope.cancel()
    assert [(e.id, e.data) for e in got] == [("事件-1", "e1"), ("事件-2", "e2")]
    await broker.stop()


async def test_since_earliest_gets_everything_retained(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery)
    got: list[ReceivedEvent] = []
    async with Client(broker.url) as esper:
        ids = await _publish_some(esper, "old", 2)
        async with (
            esper.subscribe(TOPIC, since_earliest=True) as events,
            trio.open_nursery() as consumers,
        ):
            consumers.start_soon(_consume, events, got)
            await _until(lambda: len(got) == 2)
            consumers.cancel_scope.cancel()
    assert [e.id for e in got] == ids
    await broker.stop()


async def test_a_cancelled_wait_loses_no_event(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """Giving up on one ``__anext__`` (a timeout) closes the stream but keeps
    the subscription usable: the next call reconnects at once and resumes, and
    nothing published meanwhile is lost."""
    broker = await start_broker(nursery)
    first: list[str] = []

    async def publish_when_subscribed() -> None:
        await wait_for_stats(client, broker, clients=1)
        first.extend(await _publish_some(esper, "a", 1))

    async with Client(broker.url) as esper, esper.subscribe(TOPIC) as events:
        with trio.move_on_after(0.3):
            await events.__anext__()  # connects, then waits for an event
        await wait_for_stats(client, broker, clients=0)  # the cancelled wait closed it
        async with trio.open_nursery() as publishers:
            publishers.start_soon(publish_when_subscribed)
            with trio.fail_after(STEP_SECONDS):
                received = [await events.__anext__()]
        with trio.move_on_after(0.1):
            await events.__anext__()
        await wait_for_stats(client, broker, clients=0)
        later = await _publish_some(esper, "b", 2)  # while it is away
        with trio.fail_after(STEP_SECONDS):
            received += [await events.__anext__(), await events.__anext__()]
        assert events.connections == 3
    assert [e.id for e in received] == [*first, *later]
    await broker.stop()


@pytest.mark.parametrize(
    ("base", "failures", "cap", "low", "high"),
    [
        (1.0, 0, 30.0, 1.0, 1.0),  # a stream ended: the reconnection time, exactly
        (1.0, 1, 30.0, 1.0, 2.0),
        (1.0, 3, 30.0, 4.0, 8.0),
        (1.0, 10, 30.0, 15.0, 30.0),  # capped
        (1.0, 10_000, 30.0, 15.0, 30.0),  # no overflow
        (0.0, 0, 30.0, 0.0, 0.0),  # retry: 0 after a stream ends
        (0.0, 1, 30.0, 0.1, 0.2),  # but a failing broker is not hammered
        (60.0, 5, 30.0, 60.0, 60.0),  # the server's retry: above the cap is honoured
    ],
)
def test_reconnect_delay_bounds(
    base: float, failures: int, cap: float, low: float, high: float
) -> None:
    for _ in range(200):
        assert low <= _reconnect_delay(base, failures, cap) <= high
