"""Durability with real processes: kill -9 the broker mid-publish, restart it
on the same SQLite file, and check that every acknowledged event is there."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import broker_process

TOPIC = "durabletopic"
PUBLISHERS = 8


async def _publish_until_killed(
    url: str, process: trio.Process, kill_after_acks: int
) -> dict[int, list[tuple[int, str]]]:
    """PUBLISHERS concurrent publishers; SIGKILL once ``kill_after_acks`` are
    acknowledged. Returns, per publisher, the (n, id) pairs that got a 2xx."""
    acked: dict[int, list[tuple[int, str]]] = {p: [] for p in range(PUBLISHERS)}
    total = 0
    killed = trio.Event()

    async def publisher(p: int) -> None:
        nonlocal total
        async with httpx.AsyncClient(timeout=10) as client:
            for n in range(100_000):
                try:
                    reply = await client.post(
                        f"{url}/publish/{TOPIC}", content=f"data: p{p} {n}\n".encode()
                    )
                except httpx.TransportError:
                    return  # the broker is gone
                if killed.is_set():
                    # Answered after the kill signal was sent: may or may not
                    # be durable from our point of view; not counted as acked.
                    return
                assert reply.status_code == 200, reply.text
                acked[p].append((n, reply.json()["id"]))
                total += 1
                if total >= kill_after_acks:
                    killed.set()
                    os.kill(process.pid, signal.SIGKILL)
                    return

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for p in range(PUBLISHERS):
                nursery.start_soon(publisher, p)
    assert killed.is_set()
    return acked


@pytest.mark.parametrize(
    ("sync", "kill_after_acks"),
    [("full", 1), ("full", 37), ("full", 250), ("full", 1000), ("normal", 250)],
)
async def test_acknowledged_events_survive_kill_9(
    tmp_path: Path, sync: str, kill_after_acks: int
) -> None:
    history = f"sqlite:{tmp_path / 'history.db'}"
    retain_all = ("--history", history, "--history-events", "1000000", "--history-sync", sync)
    all_acked: dict[int, list[tuple[int, str]]] = {p: [] for p in range(PUBLISHERS)}
    for _round in range(2):  # kill twice: the restarted broker must append after the old log
        async with broker_process(*retain_all) as running:
            process = running.process
            acked = await _publish_until_killed(running.url, process, kill_after_acks)
            with trio.fail_after(10):
                await process.wait()
            assert process.returncode == -signal.SIGKILL
        for p, pairs in acked.items():
            all_acked[p] += [(n + 100_000 * _round, i) for n, i in pairs]

    async with (
        broker_process(*retain_all) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        reply = await client.get(f"{running.url}/history/{TOPIC}", params={"limit": "10000"})
        stored = [json.loads(line) for line in reply.text.splitlines()]
        replayed = await _replay_everything(client, running.url, len(stored))

    ids = [e["id"] for e in stored]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    position = {event_id: k for k, event_id in enumerate(ids)}
    for p, pairs in all_acked.items():
        for _n, event_id in pairs:
            assert event_id in position, f"acknowledged event {event_id} of publisher {p} lost"
        # Each publisher's acknowledged events are stored in the order it sent them.
        assert [position[i] for _, i in pairs] == sorted(position[i] for _, i in pairs)
    assert sum(map(len, all_acked.values())) >= 2 * kill_after_acks
    # A resuming subscriber gets exactly the stored log, in order.
    assert replayed == [f"id: {e['id']}\ndata: {e['data']}\n\n".encode() for e in stored]


async def _replay_everything(client: httpx.AsyncClient, url: str, count: int) -> list[bytes]:
    frames: list[bytes] = []
    buffer = b""
    async with client.stream("GET", f"{url}/subscribe/{TOPIC}?since=earliest") as response:
        chunks = response.aiter_raw()
        with trio.fail_after(20):
            while len(frames) < count:
                buffer += await chunks.__anext__()
                *complete, buffer = buffer.split(b"\n\n")
                frames += [f + b"\n\n" for f in complete if not f.startswith(b":")]
        await chunks.aclose()  # type: ignore[attr-defined]
    return frames


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("corrupt", "not a database"),
        ("directory", "is a directory"),
        ("unwritable", "unable to open database file"),
    ],
)
async def test_bad_history_file_is_a_clear_error(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "history.db"
    if setup == "corrupt":
        path.write_bytes(b"definitely not sqlite\n" * 200)
    elif setup == "directory":
        path.mkdir()
    else:
        path = tmp_path / "missing-dir" / "history.db"
    result = await trio.run_process(
        [sys.executable, "-m", "trio_esper", "--port", "0", "--history", f"sqlite:{path}"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 3
    assert message in stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("trio-esper: error: ")
