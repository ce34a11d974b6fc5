"""``--threads N`` worker processes on one port with the Redis backplane, and
the rolling restart (SIGHUP) that no subscriber notices: a real redis-server,
real processes, the project's own reconnecting client."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_esper.client import Client
from trio_esper.workers import HANDOFF_TIMEOUT_SECONDS

from .conftest import STEP_SECONDS, BrokerProcess, RedisServer, broker_process

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


async def test_the_per_address_subscription_limit_holds_per_worker(
    redis_server: RedisServer, subscribe: Any
) -> None:
    # docs/scaling.md, "Limits, with a backplane": with --threads N, each
    # worker counts an address's subscriptions itself. Connections are
    # handed to the workers in turn: four subscriptions take two each, and
    # the next one on either worker is refused.
    args = ("--threads", "2", "--backplane", redis_server.url)
    async with broker_process(*args, "--max-subscriptions-per-address", "2") as running:
        url = f"{running.url}/subscribe/perworker01"
        streams = [await subscribe(url) for _ in range(4)]
        assert len(streams) == 4
        for _ in range(2):
            refused = await subscribe(url, expect_live=False)
            assert refused.response.status_code == 503


def worker_pids(running: BrokerProcess) -> list[int]:
    """The supervisor's child processes: its workers (started from trio's
    worker threads, so listed under any of its tasks)."""
    tasks = Path(f"/proc/{running.process.pid}/task")
    return sorted(
        int(child) for task in tasks.iterdir() for child in (task / "children").read_text().split()
    )


async def wait_for_workers(running: BrokerProcess, count: int, without: int = 0) -> list[int]:
    """Wait until the supervisor runs ``count`` workers, ``without`` not one of them."""
    with trio.fail_after(STEP_SECONDS * 3):
        while True:
            pids = worker_pids(running)
            if len(pids) == count and without not in pids:
                return pids
            await trio.sleep(0.05)


async def answered(url: str, requests: int) -> None:
    """``requests`` requests at once, each on a connection of its own, all answered 200."""

    async def one() -> None:
        async with httpx.AsyncClient(timeout=STEP_SECONDS * 2) as client:
            assert (await client.get(f"{url}/health")).status_code == 200

    async with trio.open_nursery() as nursery:
        for _ in range(requests):
            nursery.start_soon(one)


async def test_a_stopped_worker_is_skipped_and_replaced(redis_server: RedisServer) -> None:
    # A worker that stops taking its connections (SIGSTOP: the hand-off
    # socket still takes them, nothing reads them) must not stall the
    # connections handed to it, nor the supervisor: they go to the other
    # worker, and the stalled one is killed and replaced.
    async with broker_process("--threads", "2", "--backplane", redis_server.url) as running:
        with trio.fail_after(STEP_SECONDS * 3):
            while not running.log_lines("with 2 workers"):
                await trio.sleep(0.05)
        stopped = worker_pids(running)[0]
        os.kill(stopped, signal.SIGSTOP)
        try:
            with trio.fail_after(STEP_SECONDS * 2):
                await answered(running.url, 20)
            assert running.log_lines(rf"worker {stopped} took no connection"), running.stderr
            await wait_for_workers(running, 2, without=stopped)
            await answered(running.url, 4)  # the replacement serves too
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)


async def test_a_worker_killed_loses_no_connection_not_yet_taken(
    redis_server: RedisServer,
) -> None:
    # kill -9 of a worker: connections accepted after it, and those handed to
    # it that it had not taken, are served by the other worker.
    async with broker_process("--threads", "2", "--backplane", redis_server.url) as running:
        with trio.fail_after(STEP_SECONDS * 3):
            while not running.log_lines("with 2 workers"):
                await trio.sleep(0.05)
        killed = worker_pids(running)[0]
        os.kill(killed, signal.SIGSTOP)  # connections pile up, untaken, in its socket
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answered, running.url, 20)
            await trio.sleep(0.3)
            os.kill(killed, signal.SIGKILL)
        assert running.log_lines(rf"worker {killed} exited with status -9"), running.stderr
        await wait_for_workers(running, 2, without=killed)


#: What each process of the broker below may hold (soft and hard, as
#: ``ulimit -n`` sets it): a few dozen connections fill a worker.
DESCRIPTOR_LIMIT = 64
#: Subscribers enough to fill both workers at DESCRIPTOR_LIMIT, and more.
OVERLOAD_CONNECTIONS = 2 * DESCRIPTOR_LIMIT + 20
#: How many of them leave to make room for others.
LEAVING = 10
#: ``python -m trio_esper`` with that limit (its workers inherit it).
LIMITED_COMMAND = (
    sys.executable,
    "-c",
    "import resource, runpy; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({DESCRIPTOR_LIMIT}, {DESCRIPTOR_LIMIT})); "
    "runpy.run_module('trio_esper', run_name='__main__', alter_sys=True)",
)


async def test_a_worker_out_of_descriptors_keeps_its_clients(redis_server: RedisServer) -> None:
    # The kernel drops a descriptor handed to a process whose table is full:
    # the worker must say so rather than be taken for stalled and killed with
    # every client it serves. As one process out of descriptors does, the
    # broker lets new connections wait (it sheds them, never the ones it
    # serves), and serves them as room comes back.
    args = ("--threads", "2", "--backplane", redis_server.url)
    async with broker_process(*args, command=LIMITED_COMMAND) as running:
        with trio.fail_after(STEP_SECONDS * 3):
            while not running.log_lines("with 2 workers"):
                await trio.sleep(0.05)
        workers_before = worker_pids(running)
        host, port = running.url.removeprefix("http://").rsplit(":", 1)
        request = b"GET /subscribe/fulltopic1 HTTP/1.1\r\nHost: x\r\n\r\n"
        #: Each subscriber's state: "waiting" for its answer's head, "served"
        #: (streaming), "left" (closed here), or what ended it.
        state: dict[int, str] = {}
        connections: dict[int, trio.SocketStream] = {}

        async def subscriber(number: int) -> None:
            state[number] = "waiting"
            connection = connections[number] = await trio.open_tcp_stream(host, int(port))
            try:
                await connection.send_all(request)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = await connection.receive_some(4096)
                    if not chunk:
                        state[number] = f"closed after {head!r}"
                        return
                    head += chunk
                if not head.startswith(b"HTTP/1.1 200"):
                    state[number] = f"answered {head!r}"
                    return
                state[number] = "served"
                while await connection.receive_some(4096):
                    pass
                state[number] = "stream ended"
            except trio.ClosedResourceError:
                state[number] = "left"

        def counts() -> Counter[str]:
            return Counter(state.values())

        async with trio.open_nursery() as nursery:
            for number in range(OVERLOAD_CONNECTIONS):
                nursery.start_soon(subscriber, number)
                await trio.sleep(0.005)
            # Long enough for a worker that answers no hand-off to be taken
            # for stalled and killed (workers.HANDOFF_TIMEOUT_SECONDS).
            await trio.sleep(HANDOFF_TIMEOUT_SECONDS * 2)
            assert set(counts()) == {"served", "waiting"}, (counts(), running.stderr)
            assert counts()["waiting"] >= OVERLOAD_CONNECTIONS - 2 * DESCRIPTOR_LIMIT
            assert running.log_lines("out of file descriptors"), running.stderr
            assert not running.log_lines(r"took no connection|exited with"), running.stderr
            assert worker_pids(running) == workers_before
            # Room made by some leaving goes to the ones waiting.
            served = counts()["served"]
            leaving = [n for n, now in state.items() if now == "served"][:LEAVING]
            for number in leaving:
                await connections[number].aclose()
            with trio.fail_after(STEP_SECONDS * 2):
                while counts()["served"] < served:
                    await trio.sleep(0.05)
            assert set(counts()) <= {"served", "waiting", "left"}, counts()
            nursery.cancel_scope.cancel()
        for connection in connections.values():
            await connection.aclose()
