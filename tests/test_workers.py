"""``--threads N`` worker processes on one port with the Redis backplane, and
the rolling restart (SIGHUP) that no subscriber notices: a real redis-server,
real processes, the project's own reconnecting client."""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
import pytest
import trio

from trio_esper.client import Client

from .conftest import STEP_SECONDS, RedisServer, broker_process

pytestmark = pytest.mark.slow

SUBSCRIBERS = 16


async def test_threads_2_spreads_subscribers_and_all_get_everything(
    redis_server: RedisServer, client: httpx.AsyncClient, subscribe: Any
) -> None:
    async with broker_process("--threads", "2", "--backplane", redis_server.url) as running:
        url = running.url
        streams = [await subscribe(f"{url}/subscribe/workerstopic1") for _ in range(SUBSCRIBERS)]
        # Each worker answers /stats for itself (with its pid): between them
        # they hold every subscriber, and each holds some.
        per_worker: dict[int, int] = {}
        with trio.fail_after(STEP_SECONDS):
            while len(per_worker) < 2:
                async with httpx.AsyncClient() as fresh:  # a new connection: the next worker
                    stats = (await fresh.get(f"{url}/stats")).json()
                per_worker[stats["pid"]] = stats["clients"]
        assert sum(per_worker.values()) == SUBSCRIBERS, per_worker
        assert all(per_worker.values()), per_worker
        for n in range(5):
            reply = await client.post(f"{url}/publish/workerstopic1", content=b"data: %d\n" % n)
            assert reply.status_code == 200
        history = await client.get(f"{url}/history/workerstopic1")
        ids = [json.loads(line)["id"] for line in history.text.splitlines()]
        expected = [f"id: {event_id}\ndata: {n}\n\n".encode() for n, event_id in enumerate(ids)]
        for stream in streams:
            assert [await stream.next_event() for _ in range(5)] == expected


async def test_rolling_restart_refuses_nothing_and_loses_nothing(
    redis_server: RedisServer,
) -> None:
    topic = "rollingtopic1"
    args = ("--threads", "2", "--backplane", redis_server.url, "--shutdown-grace", "2")
    async with broker_process(*args) as running, Client(running.url) as broker:
        acknowledged: list[str] = []
        received: list[str] = []
        subscription = broker.subscribe(
            topic, since_earliest=True, initial_delay_seconds=0.05, max_delay_seconds=0.5
        )

        async def subscriber() -> None:
            async with subscription:
                async for event in subscription:
                    received.append(event.id or "")

        async def publisher() -> None:
            for n in range(60):
                answer = await broker.publish(topic, data=f"tick {n}")  # raises on non-2xx
                acknowledged.append(str(answer["id"]))
                if n == 20:
                    running.process.send_signal(signal.SIGHUP)
                    with trio.fail_after(STEP_SECONDS * 3):
                        while not running.log_lines("fresh workers serve; stopping"):
                            await trio.sleep(0.05)
                await trio.sleep(0.03)

        with trio.fail_after(STEP_SECONDS * 6):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber)
                await publisher()
                while len(received) < len(acknowledged):
                    await trio.sleep(0.05)
                await trio.sleep(0.3)  # time for a duplicate to show
                nursery.cancel_scope.cancel()
        assert received == acknowledged  # every event once, in order, through the restart
        assert subscription.connections >= 2  # it did move to a fresh worker
        assert running.log_lines("rolling restart: starting 2 fresh workers")
        assert not running.log_lines(r"exited with status|Traceback")


async def test_sigterm_while_the_workers_start_stops_them_cleanly(
    redis_server: RedisServer,
) -> None:
    # broker_process returns at the first start line: a worker's, while the
    # supervisor still waits for the second one. A SIGTERM then must stop
    # both workers and exit 0, not end the supervisor by the default action.
    async with broker_process("--threads", "2", "--backplane", redis_server.url) as running:
        status = await running.stop()
    assert status == 0, running.stderr.decode(errors="replace")
    assert running.log_lines("SIGTERM received, stopping the workers"), running.stderr
