"""A hostile review of history and resume on one process (memory and SQLite):
what a production client relies on after a 200, through a real broker on
127.0.0.1:0 and a real streaming client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from .conftest import STEP_SECONDS, start_broker

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
