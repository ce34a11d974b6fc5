"""A hostile review of history and resume on one process (memory and SQLite):
what a production client relies on after a 200, through a real broker on
127.0.0.1:0 and a real streaming client."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import STEP_SECONDS, broker_process, start_broker

RESET = b'event: reset\ndata: {"reason": "unknown-last-event-id"}\n\n'


async def publish(client: httpx.AsyncClient, url: str, topic: str, body: str) -> str:
    reply = await client.post(f"{url}/publish/{topic}", content=body.encode())
    assert reply.status_code == 200, reply.text
    event_id: str = reply.json()["id"]
    return event_id


async def history_ids(client: httpx.AsyncClient, url: str, topic: str, **params: str) -> list[str]:
    reply = await client.get(f"{url}/history/{topic}", params=params)
    assert reply.status_code == 200, reply.text
    return [json.loads(line)["id"] for line in reply.text.splitlines()]


async def test_a_publisher_id_used_again_once_aged_out_is_resumed_past(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient, subscribe: Any
) -> None:
    """SQLite with --history-max-age: once the file dropped ``a`` for its
    age, ``a`` may be published again (200); a client resuming from an
    event before it must get it, and one resuming from it must get only
    what came after."""
    broker = await start_broker(
        nursery, history=f"sqlite:{tmp_path / 'h.db'}", history_max_age_seconds=1.0
    )
    topic = "reusedid01"
    await publish(client, broker.url, topic, "id: a\ndata: old a\n")
    await trio.sleep(1.3)
    # A commit after the age is up runs retention: the old `a` leaves the file.
    with trio.fail_after(STEP_SECONDS):
        while "a" in await history_ids(client, broker.url, topic):
            await publish(client, broker.url, "othertopic", "data: tick\n")
            await trio.sleep(0.2)
    await publish(client, broker.url, topic, "id: x1\ndata: x1\n")
    await publish(client, broker.url, topic, "id: a\ndata: new a\n")
    await publish(client, broker.url, topic, "id: y\ndata: y\n")
    assert await history_ids(client, broker.url, topic) == ["x1", "a", "y"]
    assert await history_ids(client, broker.url, topic, after="x1") == ["a", "y"]
    assert await history_ids(client, broker.url, topic, after="a") == ["y"]
    stream = await subscribe(f"{broker.url}/subscribe/{topic}", headers={"Last-Event-ID": "x1"})
    assert await stream.next_event() == b"id: a\ndata: new a\n\n"
    assert await stream.next_event() == b"id: y\ndata: y\n\n"
    await broker.stop()


async def test_events_past_max_age_are_not_served_while_the_broker_is_idle(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient, subscribe: Any
) -> None:
    """--history-max-age bounds what is served even when nothing is published
    after the events expire (retention runs after commits)."""
    broker = await start_broker(
        nursery, history=f"sqlite:{tmp_path / 'h.db'}", history_max_age_seconds=1.0
    )
    topic = "idleage01"
    first = await publish(client, broker.url, topic, "data: 1\n")
    await publish(client, broker.url, topic, "data: 2\n")
    await trio.sleep(1.5)
    assert await history_ids(client, broker.url, topic) == []
    stream = await subscribe(f"{broker.url}/subscribe/{topic}?since=earliest")
    live = await publish(client, broker.url, topic, "data: live\n")
    assert await stream.next_event() == f"id: {live}\ndata: live\n\n".encode()
    resumed = await subscribe(f"{broker.url}/subscribe/{topic}", headers={"Last-Event-ID": first})
    assert await resumed.next_event() == RESET
    await broker.stop()


async def test_events_past_history_events_are_not_served_while_the_broker_is_idle(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """--history-events N: /history never lists more than the last N of a
    topic, however the publishes fell between retention passes."""
    broker = await start_broker(nursery, history=f"sqlite:{tmp_path / 'h.db'}", history_events=3)
    topic = "idlecount01"
    ids = [await publish(client, broker.url, topic, f"data: {n}\n") for n in range(8)]
    assert await history_ids(client, broker.url, topic) == ids[-3:]
    assert await history_ids(client, broker.url, topic, after=ids[-3]) == ids[-2:]
    await broker.stop()


#: ``/history`` query strings a client may send, and the status each gets.
HISTORY_QUERIES = [
    ("limit=0", 400),
    ("limit=-1", 400),
    ("limit=10001", 400),
    ("limit=" + "9" * 5000, 400),
    ("limit=abc", 400),
    ("limit=", 400),
    ("limit=1.5", 400),
    ("limit=%201", 400),
    ("limit=%2B1", 400),
    ("limit=%EF%BC%91", 400),  # a fullwidth digit one
    ("limit=%FF", 400),
    ("after=", 404),
    ("after=" + "x" * 6000, 404),
    ("after=%FF%FE", 400),
    ("after=%00", 404),
    ("after=%ZZ", 404),
]


@pytest.mark.parametrize(("query", "status"), HISTORY_QUERIES)
async def test_history_parameters_at_and_past_their_bounds(
    nursery: trio.Nursery,
    fast_lane: bool,
    tmp_path: Path,
    client: httpx.AsyncClient,
    query: str,
    status: int,
) -> None:
    broker = await start_broker(
        nursery, fast_lane=fast_lane, history=f"sqlite:{tmp_path / 'h.db'}"
    )
    topic = "boundstopic"
    await publish(client, broker.url, topic, "id: e1\ndata: x\n")
    reply = await client.get(f"{broker.url}/history/{topic}?{query}")
    assert reply.status_code == status, reply.text
    assert reply.text.endswith("\n")
    assert reply.text.count("\n") == 1, reply.text
    assert await history_ids(client, broker.url, topic) == ["e1"]
    await broker.stop()


@pytest.fixture(params=["memory", "sqlite"])
def history_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory" if request.param == "memory" else f"sqlite:{tmp_path / 'h.db'}"


async def test_a_topic_deleted_and_created_again_replays_nothing_of_the_old_one(
    nursery: trio.Nursery, history_spec: str, client: httpx.AsyncClient, subscribe: Any
) -> None:
    broker = await start_broker(nursery, history=history_spec)
    old_assigned = await publish(client, broker.url, "DelTopic01", "data: old\n")
    await publish(client, broker.url, "deltopic01", "id: mine-1\ndata: old mine\n")
    # Deleted by another spelling of its id, created again by a third.
    deleted = await client.delete(f"{broker.url}/api/v1/pubsubs/DELTOPIC01")
    assert deleted.status_code == 200, deleted.text
    # Read as subscribing is: 404 until created again (not 200 and no events).
    for spelling in ("deltopic01", "DelTopic01"):
        gone = await client.get(f"{broker.url}/history/{spelling}")
        assert gone.status_code == 404, gone.text
        assert "deleted" in gone.text
        assert gone.text.count("\n") == 1
    created = await client.post(
        f"{broker.url}/api/v1/pubsubs", json={"pubsub": {"id": "delTopic01"}}
    )
    assert created.status_code == 201, created.text
    assert await history_ids(client, broker.url, "deltopic01") == []
    for url, headers in (
        ("/subscribe/deltopic01", {"Last-Event-ID": old_assigned}),
        ("/subscribe/DELTOPIC01", {"Last-Event-ID": "mine-1"}),
        (f"/subscribe/deltopic01?lastEventId={old_assigned}", {}),
    ):
        stream = await subscribe(broker.url + url, headers=headers)
        assert await stream.next_event() == RESET, url
    earliest = await subscribe(f"{broker.url}/subscribe/deltopic01?since=earliest")
    # The old id is free again: the new topic has no such event.
    again = await publish(client, broker.url, "deltopic01", "id: mine-1\ndata: new\n")
    assert again == "mine-1"
    assert await earliest.next_event() == b"id: mine-1\ndata: new\n\n"
    assert await history_ids(client, broker.url, "DELTOPIC01") == ["mine-1"]
    await broker.stop()


async def test_one_topic_s_history_whatever_the_case_of_its_id(
    nursery: trio.Nursery, history_spec: str, client: httpx.AsyncClient, subscribe: Any
) -> None:
    broker = await start_broker(nursery, history=history_spec)
    spellings = ["CaseTopic01", "casetopic01", "CASETOPIC01", "cAsEtOpIc01"]
    ids = [await publish(client, broker.url, s, f"data: {s}\n") for s in spellings]
    assert ids == sorted(ids)
    for spelling in spellings:
        assert await history_ids(client, broker.url, spelling) == ids
        assert await history_ids(client, broker.url, spelling, after=ids[1]) == ids[2:]
    await publish(client, broker.url, "CASETOPIC01", "id: k\ndata: k\n")
    conflict = await client.post(f"{broker.url}/publish/casetopic01", content=b"id: k\ndata: x\n")
    assert conflict.status_code == 409, conflict.text
    stream = await subscribe(
        f"{broker.url}/subscribe/CaseTOPIC01", headers={"Last-Event-ID": ids[2]}
    )
    assert await stream.next_event() == f"id: {ids[3]}\ndata: cAsEtOpIc01\n\n".encode()
    assert await stream.next_event() == b"id: k\ndata: k\n\n"
    await broker.stop()


async def test_a_restart_with_fewer_history_events_serves_no_more_than_those(
    tmp_path: Path, client: httpx.AsyncClient, subscribe: Any
) -> None:
    """The file of a broker restarted with a lower --history-events holds the
    old events of topics not published to since: they are not served."""
    spec = f"sqlite:{tmp_path / 'h.db'}"
    topic = "shrunktopic"
    async with broker_process("--history", spec, "--history-events", "10") as running:
        ids = [await publish(client, running.url, topic, f"data: {n}\n") for n in range(10)]
        assert await running.stop() == 0
    async with broker_process("--history", spec, "--history-events", "3") as running:
        assert await history_ids(client, running.url, topic) == ids[-3:]
        gone = await client.get(f"{running.url}/history/{topic}", params={"after": ids[4]})
        assert gone.status_code == 404, gone.text
        stream = await subscribe(
            f"{running.url}/subscribe/{topic}", headers={"Last-Event-ID": ids[4]}
        )
        assert await stream.next_event() == RESET
        for event_id in ids[-3:]:
            assert (await stream.next_event()).startswith(f"id: {event_id}\n".encode())


async def test_a_publisher_id_the_broker_assigns_next_after_a_restart(
    tmp_path: Path, client: httpx.AsyncClient, subscribe: Any
) -> None:
    """A file whose newest seq is ahead of the clock (written while the clock
    was wrong): restarted on it, the broker assigns seqs one by one from
    there, so a publisher's id can be the very id it assigns next. That one
    is stepped past: every publish is stored once, in order, and a resume
    from any id gets exactly what followed."""
    path = tmp_path / "h.db"
    spec = f"sqlite:{path}"
    topic = "aheadtopic1"
    async with broker_process("--history", spec) as running:
        first = await publish(client, running.url, topic, "data: before\n")
        assert await running.stop() == 0
    future = time.time_ns() // 1000 + 3_600_000_000  # an hour ahead
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute(
                "INSERT INTO events (seq, topic, id, data, time) VALUES (?, ?, ?, ?, ?)",
                (future, "othertopic1", "far", "x", time.time()),
            )
    finally:
        db.close()
    async with broker_process("--history", spec) as running:
        # Stored at seq future+1; the broker's next own id would be future+2.
        chosen = str(future + 2)
        ids = [first, await publish(client, running.url, topic, f"id: {chosen}\ndata: 1\n")]
        ids += [await publish(client, running.url, topic, f"data: {n}\n") for n in (2, 3, 4)]
        assert ids[1] == chosen
        assert len(set(ids)) == len(ids), ids
        assert await history_ids(client, running.url, topic) == ids
        for k in range(len(ids) - 1):
            assert await history_ids(client, running.url, topic, after=ids[k]) == ids[k + 1 :]
        stream = await subscribe(
            f"{running.url}/subscribe/{topic}", headers={"Last-Event-ID": chosen}
        )
        assert await stream.next_event() == f"id: {ids[2]}\ndata: 2\n\n".encode()


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
async def test_a_stop_under_load_loses_nothing_acknowledged_or_seen(
    tmp_path: Path, client: httpx.AsyncClient, stop: signal.Signals
) -> None:
    """SIGKILL or SIGTERM while four publishers publish and a subscriber
    reads: after the restart, each event the subscriber saw and each
    acknowledged one (every 200, even one answered after the signal) is in
    the history, and the subscriber resuming from the last id it saw gets
    the rest in order, then new events with new ids, no duplicate."""
    spec = f"sqlite:{tmp_path / 'h.db'}"
    topic = "killedtopic"
    acked: list[str] = []
    seen: list[str] = []
    async with broker_process("--history", spec, "--history-events", "100000") as running:
        url = running.url
        killed = trio.Event()

        async def publisher(p: int) -> None:
            async with httpx.AsyncClient(timeout=STEP_SECONDS) as own:
                for n in range(100_000):
                    try:
                        reply = await own.post(
                            f"{url}/publish/{topic}", content=f"data: {p}.{n}\n"
                        )
                    except httpx.TransportError:
                        return
                    if reply.status_code == 200:
                        acked.append(reply.json()["id"])
                    else:
                        assert killed.is_set(), reply.text
                        return

        async def reader(task_status: trio.TaskStatus[None]) -> None:
            async with httpx.AsyncClient(timeout=STEP_SECONDS) as own:
                try:
                    async with own.stream("GET", f"{url}/subscribe/{topic}") as response:
                        task_status.started()
                        async for line in response.aiter_lines():
                            if line.startswith("id: "):
                                seen.append(line[4:])
                except httpx.HTTPError:
                    return

        async with trio.open_nursery() as nursery:
            await nursery.start(reader)
            for p in range(4):
                nursery.start_soon(publisher, p)
            with trio.fail_after(STEP_SECONDS):
                while len(acked) < 300:
                    await trio.sleep(0.01)
            killed.set()
            os.killpg(running.process.pid, stop)
            with trio.fail_after(STEP_SECONDS):
                await running.process.wait()
    assert running.process.returncode == (-signal.SIGKILL if stop == signal.SIGKILL else 0)
    assert len(seen) > 0
    async with broker_process("--history", spec, "--history-events", "100000") as running:
        stored = await history_ids(client, running.url, topic, limit="10000")
        assert len(stored) == len(set(stored))
        assert set(acked) <= set(stored)
        assert seen == stored[: len(seen)]
        resumed = await history_ids(client, running.url, topic, after=seen[-1], limit="10000")
        assert resumed == stored[len(seen) :]
        new = await publish(client, running.url, topic, "data: after\n")
        assert new not in stored
        assert int(new) > max(int(i) for i in stored)
        assert await history_ids(client, running.url, topic, after=stored[-1]) == [new]


async def test_an_id_no_longer_retained_may_be_published_again(
    nursery: trio.Nursery, history_spec: str, client: httpx.AsyncClient, subscribe: Any
) -> None:
    """409 means the id is among the topic's retained events: once
    --history-events has let ``a`` go (it is no longer served), ``a`` is
    stored again, not refused (a publisher that reads 409 as "already
    stored" would drop the event)."""
    broker = await start_broker(nursery, history=history_spec, history_events=2)
    topic = "reuseagain1"
    for event_id in ("a", "b", "c"):
        await publish(client, broker.url, topic, f"id: {event_id}\ndata: {event_id}\n")
    assert await history_ids(client, broker.url, topic) == ["b", "c"]
    stream = await subscribe(f"{broker.url}/subscribe/{topic}", headers={"Last-Event-ID": "c"})
    assert await publish(client, broker.url, topic, "id: a\ndata: again\n") == "a"
    assert await stream.next_event() == b"id: a\ndata: again\n\n"
    assert await history_ids(client, broker.url, topic) == ["c", "a"]
    assert await history_ids(client, broker.url, topic, after="c") == ["a"]
    await broker.stop()


async def test_an_id_past_max_age_may_be_published_again(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(
        nursery, history=f"sqlite:{tmp_path / 'h.db'}", history_max_age_seconds=1.0
    )
    topic = "reuseaged01"
    await publish(client, broker.url, topic, "id: a\ndata: old\n")
    await trio.sleep(1.3)
    assert await history_ids(client, broker.url, topic) == []
    assert await publish(client, broker.url, topic, "id: a\ndata: new\n") == "a"
    reply = await client.get(f"{broker.url}/history/{topic}")
    assert [json.loads(line)["data"] for line in reply.text.splitlines()] == ["new"]
    await broker.stop()


async def test_an_id_twice_in_one_body_stays_a_conflict_past_retention(
    nursery: trio.Nursery, history_spec: str, client: httpx.AsyncClient
) -> None:
    """--history-events 1 lets the body's first ``a`` go at once: the body is
    refused all the same, and nothing of it stored."""
    broker = await start_broker(nursery, history=history_spec, history_events=1)
    topic = "twicebody01"
    await publish(client, broker.url, topic, "id: z\ndata: z\n")
    body = b"id: a\ndata: 1\n\nid: b\ndata: 2\n\nid: a\ndata: 3\n\n"
    reply = await client.post(f"{broker.url}/publish/{topic}", content=body)
    assert reply.status_code == 409, reply.text
    assert await history_ids(client, broker.url, topic) == ["z"]
    stats = (await client.get(f"{broker.url}/stats")).json()["history"]
    assert (stats["topics"], stats["events"]) == (1, 1)
    await broker.stop()


async def test_a_resume_past_several_replay_pages_misses_and_repeats_nothing(
    nursery: trio.Nursery, history_spec: str, client: httpx.AsyncClient, subscribe: Any
) -> None:
    """2,500 retained events (replayed 1,000 a page) while a publisher goes
    on publishing: a resume from the first gets every later one once, in
    order, then the live ones."""
    broker = await start_broker(nursery, history=history_spec, history_events=5000)
    topic = "pagedtopic1"
    body = "".join(f"data: {n}\n\n" for n in range(2500))
    reply = await client.post(f"{broker.url}/publish/{topic}", content=body.encode())
    assert reply.status_code == 200, reply.text
    ids = await history_ids(client, broker.url, topic, limit="10000")
    assert len(ids) == 2500

    async def keep_publishing() -> None:
        async with httpx.AsyncClient(timeout=STEP_SECONDS) as own:
            for _ in range(100):
                ids.append(await publish(own, broker.url, topic, f"data: {len(ids)}\n"))

    for headers, url in (
        ({"Last-Event-ID": ids[0]}, f"/subscribe/{topic}"),
        ({}, f"/subscribe/{topic}?since=earliest"),
    ):
        stream = await subscribe(broker.url + url, headers=headers)
        first, last = (1 if headers else 0), len(ids) + 100
        async with trio.open_nursery() as publishing:
            publishing.start_soon(keep_publishing)
            got = [await stream.next_event() for _ in range(first, last)]
        assert got == [f"id: {ids[n]}\ndata: {n}\n\n".encode() for n in range(first, last)]
    await broker.stop()


async def test_the_memory_budget_takes_from_the_least_recently_published_topic(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe: Any
) -> None:
    budget = 128 * 1024
    broker = await start_broker(nursery, history_max_bytes=budget)
    quiet, busy = "quiettopic1", "busytopic01"
    payload = "x" * 500
    quiet_ids = [await publish(client, broker.url, quiet, f"data: {payload}\n") for _ in range(40)]
    busy_ids: list[str] = []
    for _ in range(15):
        busy_ids += [
            await publish(client, broker.url, busy, f"data: {payload}\n") for _ in range(10)
        ]
        kept_quiet = await history_ids(client, broker.url, quiet)
        kept_busy = await history_ids(client, broker.url, busy)
        # Each keeps a newest tail; the busy topic loses nothing while the quiet one has events.
        assert kept_quiet == quiet_ids[len(quiet_ids) - len(kept_quiet) :]
        assert kept_busy == busy_ids[len(busy_ids) - len(kept_busy) :]
        assert not kept_quiet or kept_busy == busy_ids
    assert kept_quiet == []  # 40 quiet events then 150 busy ones overflow the budget
    assert len(kept_busy) > 50
    stats = (await client.get(f"{broker.url}/stats")).json()["history"]
    assert stats["bytes"] <= budget
    assert stats["events"] == len(kept_quiet) + len(kept_busy)
    if kept_busy != busy_ids:
        stream = await subscribe(
            f"{broker.url}/subscribe/{busy}", headers={"Last-Event-ID": busy_ids[0]}
        )
        assert await stream.next_event() == RESET
        assert (await stream.next_event()).startswith(f"id: {kept_busy[0]}\n".encode())
    await broker.stop()


async def test_resume_forms_a_client_may_garble(
    nursery: trio.Nursery, fast_lane: bool, client: httpx.AsyncClient, subscribe: Any
) -> None:
    """A resume id that cannot be read is a 400 with its reason; one that is
    merely unknown (whatever its bytes or length) is ``event: reset`` and
    everything retained; an empty one is no resume."""
    broker = await start_broker(nursery, fast_lane=fast_lane)
    topic = "garbledtopic"
    first = await publish(client, broker.url, topic, "data: 1\n")
    for query in ("lastEventId=%FF", "since=latest", "since="):
        reply = await client.get(f"{broker.url}/subscribe/{topic}?{query}")
        assert reply.status_code == 400, (query, reply.text)
        assert reply.text.count("\n") == 1, reply.text
    for headers, query in (
        ({"Last-Event-ID": b"\xff\xfe"}, ""),  # not UTF-8: taken as it is, and unknown
        ({"Last-Event-ID": "x" * 4000}, ""),
        ({}, "lastEventId=" + "y" * 4000),
        ({}, "lastEventId=%00"),
    ):
        stream = await subscribe(f"{broker.url}/subscribe/{topic}?{query}", headers=headers)
        assert await stream.next_event() == RESET
        assert (await stream.next_event()).startswith(f"id: {first}\n".encode())
    live_only = await subscribe(f"{broker.url}/subscribe/{topic}?lastEventId=")
    second = await publish(client, broker.url, topic, "data: 2\n")
    assert await live_only.next_event() == f"id: {second}\ndata: 2\n\n".encode()
    await broker.stop()


def _rows(path: Path, topic: str) -> int:
    db = sqlite3.connect(path)
    try:
        count: int = db.execute(
            "SELECT count(*) FROM events WHERE topic = ?", (topic,)
        ).fetchone()[0]
    finally:
        db.close()
    return count


async def test_an_idle_broker_still_drops_what_retention_no_longer_keeps_from_its_file(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """The file itself (not only what is served) loses events past
    --history-max-age and --history-events, with no publish to follow."""
    path = tmp_path / "h.db"
    broker = await start_broker(
        nursery, history=f"sqlite:{path}", history_max_age_seconds=1.5, history_events=2
    )
    aged, counted = "agedtopic01", "countedtopic"
    await publish(client, broker.url, aged, "data: a\n")
    for n in range(5):
        await publish(client, broker.url, counted, f"data: {n}\n")
    with trio.fail_after(STEP_SECONDS):
        while _rows(path, counted) > 2:
            await trio.sleep(0.1)
        while _rows(path, aged) > 0:
            await trio.sleep(0.1)
    await broker.stop()


async def test_a_restart_with_fewer_history_events_drops_the_rest_from_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    topic = "shrunkfile1"
    async with (
        broker_process("--history", f"sqlite:{path}") as running,
        httpx.AsyncClient(timeout=STEP_SECONDS) as client,
    ):
        for n in range(6):
            await publish(client, running.url, topic, f"data: {n}\n")
        assert await running.stop() == 0
    async with broker_process("--history", f"sqlite:{path}", "--history-events", "2"):
        with trio.fail_after(STEP_SECONDS):
            while _rows(path, topic) > 2:
                await trio.sleep(0.1)


async def test_one_id_from_twenty_concurrent_publishers_is_stored_once(
    nursery: trio.Nursery, history_spec: str, client: httpx.AsyncClient, subscribe: Any
) -> None:
    """Twenty publishers send the same id at once (SQLite commits them in
    one batch): one 200, nineteen 409, and the one event stored and seen."""
    broker = await start_broker(nursery, history=history_spec, history_events=1)
    topic = "racingids01"
    stream = await subscribe(f"{broker.url}/subscribe/{topic}")
    statuses: list[int] = []

    async def publisher(n: int) -> None:
        async with httpx.AsyncClient(timeout=STEP_SECONDS) as own:
            reply = await own.post(
                f"{broker.url}/publish/{topic}", content=f"id: dup\ndata: {n}\n"
            )
            statuses.append(reply.status_code)

    async with trio.open_nursery() as publishers:
        for n in range(20):
            publishers.start_soon(publisher, n)
    assert sorted(statuses) == [200] + [409] * 19
    frame = await stream.next_event()
    assert frame.startswith(b"id: dup\ndata: ")
    reply = await client.get(f"{broker.url}/history/{topic}")
    assert [json.loads(line)["id"] for line in reply.text.splitlines()] == ["dup"]
    assert f"data: {json.loads(reply.text)['data']}\n".encode() in frame
    await broker.stop()


@pytest.mark.parametrize(
    ("accept", "character", "growth"),
    [("application/x-ndjson", "\x01", 6), ("text/tab-separated-values", "\\", 2)],
    ids=["ndjson", "tsv"],
)
async def test_a_history_answer_is_never_whole_in_memory(
    nursery: trio.Nursery, client: httpx.AsyncClient, accept: str, character: str, growth: int
) -> None:
    """JSON writes a control character in six bytes, TSV a backslash in two:
    /history of 60 events of 60,000 such characters is 21.6 MB of JSON, all of
    it held twice (the text, then its bytes) when the answer was built whole.
    It is written a piece at a time: the broker's peak while it answers
    (tracemalloc, in this process) stays a small multiple of one event."""
    broker = await start_broker(nursery)
    topic = "bigtopic123"
    data = character * 60_000
    for _ in range(60):
        await publish(client, broker.url, topic, f"data: {data}\n")
    tracemalloc.start()
    try:
        received = 0
        async with client.stream(
            "GET",
            f"{broker.url}/history/{topic}",
            params={"limit": "1000"},
            headers={"Accept": accept},
        ) as answer:
            assert answer.status_code == 200
            async for chunk in answer.aiter_raw():
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received > 60 * 60_000 * growth
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes for an answer of {received}"
