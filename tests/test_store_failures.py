"""The SQLite history store failing under a running broker, with real faults:
a file size limit (RLIMIT_FSIZE) that makes SQLite's writes fail with EFBIG,
a read-only file, the file removed or replaced while the broker runs.

Each hostile case checks that the broker still runs and answers, that the
publishes the failure affects get 503, and that the failure is logged once
(rate-limited) with its reason."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio

from trio_esper.errors import HistoryError
from trio_esper.history import Record
from trio_esper.history import sqlite as store
from trio_esper.history.sqlite import INSERT, open_sqlite_history
from trio_esper.sse import Event

from .conftest import (
    STEP_SECONDS,
    BrokerProcess,
    RedisServer,
    broker_process,
    free_port,
    start_broker,
)
from .faults import FAULTY_TOPIC, WRITE_FAILED, broker_command, faulty_store_command

TOPIC = "storetopic1"
OTHER = "storetopic2"


async def _assert_alive(client: httpx.AsyncClient, running: BrokerProcess) -> None:
    assert running.process.returncode is None, running.stderr.decode()
    assert (await client.get(f"{running.url}/stats")).status_code == 200
    assert "Traceback" not in running.stderr.decode()


def _seed(path: Path, rows: int, data_bytes: int) -> None:
    """Store ``rows`` events alternating between TOPIC and OTHER, so that deleting
    TOPIC's rewrites every page of the table (a large write)."""
    base = time.time_ns() // 1000 - 10_000_000
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        INSERT,
        (
            (
                base + n,
                (TOPIC, OTHER)[n % 2],
                f"seed{n}",
                None,
                f"{n:06d}" * data_bytes,
                None,
                0.0,
                None,
            )
            for n in range(rows)
        ),
    )
    conn.execute("COMMIT")
    conn.close()


async def _create(path: Path) -> None:
    """Create the history file as the broker does (schema, WAL), empty."""
    async with open_sqlite_history(str(path)):
        pass


# --- point 3: a write error while pruning, or while committing -----------------


async def test_prune_write_error_is_logged_and_the_broker_keeps_running(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    await _create(path)
    _seed(path, rows=4000, data_bytes=70)  # ~2 MB: pruning TOPIC rewrites all of it
    history = ("--history", f"sqlite:{path}", "--history-events", "1")
    async with (
        broker_process(*history, command=broker_command(fsize_limit=512 * 1024)) as running,
        httpx.AsyncClient(timeout=5) as client,
    ):
        # The first commit is small and fits; the writer then prunes TOPIC's ~2000
        # old rows in one write that does not, and the prune fails.
        first = await client.post(f"{running.url}/publish/{TOPIC}", content=b"data: one\n")
        assert first.status_code == 200, first.text
        # The writer prunes before it takes the next append: this commit comes after.
        second = await client.post(f"{running.url}/publish/{TOPIC}", content=b"data: two\n")
        assert second.status_code == 200, second.text
        await _assert_alive(client, running)
        [line] = running.log_lines("retention")
        assert WRITE_FAILED.search(line), line
        assert "ERROR trio_esper" in line
        kept = await client.get(f"{running.url}/history/{OTHER}", params={"limit": "3"})
        assert kept.status_code == 200
        # Reads apply --history-events 1 whatever the file still holds.
        assert len(kept.text.splitlines()) == 1


async def test_commit_write_error_is_503_logged_once_and_the_broker_keeps_running(
    tmp_path: Path,
) -> None:
    history = ("--history", f"sqlite:{tmp_path / 'history.db'}")
    body = b"data: " + b"x" * 60_000 + b"\n"
    async with (
        broker_process(*history, command=broker_command(fsize_limit=256 * 1024)) as running,
        httpx.AsyncClient(timeout=5) as client,
    ):
        statuses: list[int] = []
        for _ in range(30):
            reply = await client.post(f"{running.url}/publish/{TOPIC}", content=body)
            statuses.append(reply.status_code)
            if reply.status_code == 503:
                assert WRITE_FAILED.search(reply.text), reply.text
        assert statuses[0] == 200
        assert 503 in statuses
        failed = statuses.index(503)
        assert statuses[failed:] == [503] * (30 - failed)  # the file stays full
        await _assert_alive(client, running)
        small = await client.post(f"{running.url}/publish/{TOPIC}", content=b"data: s\n")
        assert small.status_code in (200, 503)
        # One line for all of them (rate-limited), with the reason.
        [line] = running.log_lines("commit failed")
        assert WRITE_FAILED.search(line), line
        # Nothing acknowledged is missing from history.
        stored = await client.get(f"{running.url}/history/{TOPIC}")
        assert stored.status_code == 200
        assert len(stored.text.splitlines()) == failed + (small.status_code == 200)


async def test_a_fault_the_writer_does_not_expect_fails_its_own_work_only(
    tmp_path: Path,
) -> None:
    # A RuntimeError in a row, a purge and retention (tests/faults.py): each
    # fails what it touched, answered 503 with the reason and logged once, and
    # the writer goes on with the next batch.
    history = ("--history", f"sqlite:{tmp_path / 'history.db'}")
    async with (
        broker_process(*history, command=faulty_store_command()) as running,
        httpx.AsyncClient(timeout=STEP_SECONDS) as client,
    ):
        created = await client.post(
            f"{running.url}/api/v1/pubsubs", json={"pubsub": {"id": FAULTY_TOPIC}}
        )
        assert created.status_code == 201, created.text
        for n in range(3):
            refused = await client.post(
                f"{running.url}/publish/{FAULTY_TOPIC}", content=f"data: {n}\n".encode()
            )
            assert refused.status_code == 503, refused.text
            assert "RuntimeError: injected fault in a row" in refused.text
            stored = await client.post(
                f"{running.url}/publish/{TOPIC}", content=f"data: {n}\n".encode()
            )
            assert stored.status_code == 200, stored.text
        purge = await client.delete(f"{running.url}/api/v1/pubsubs/{FAULTY_TOPIC}")
        assert purge.status_code == 503, purge.text
        assert "RuntimeError: injected fault in a purge" in purge.text
        await _assert_alive(client, running)
        kept = await client.get(f"{running.url}/history/{TOPIC}")
        assert [json.loads(line)["data"] for line in kept.text.splitlines()] == ["0", "1", "2"]
        # Deleted from the catalog all the same: read as subscribing, 404;
        # and none of its refused events is in the file.
        assert (await client.get(f"{running.url}/history/{FAULTY_TOPIC}")).status_code == 404
        db = sqlite3.connect(tmp_path / "history.db")
        try:
            rows = db.execute("SELECT count(*) FROM events WHERE topic = ?", (FAULTY_TOPIC,))
            assert rows.fetchone() == (0,)
        finally:
            db.close()
        # One line per kind (rate-limited), each with the fault.
        for kind in ("commit failed", "purge failed", "retention failed"):
            [line] = running.log_lines(kind)
            assert "RuntimeError: injected fault" in line, line


# --- point 4: failures are logged, at most one line per kind per interval -------


class Delivered:
    def __init__(self) -> None:
        self.records: list[Record] = []

    async def __call__(self, topic: str, records: Sequence[Record]) -> None:
        self.records.extend(records)


def _store_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trio_esper" and "history" in r.getMessage()]


async def test_failures_are_logged_rate_limited_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.abc.Clock
) -> None:
    caplog.set_level(logging.INFO, logger="trio_esper")
    path = tmp_path / "h.db"
    deliver = Delivered()
    async with open_sqlite_history(str(path)) as history:
        await history.append(TOPIC, [Event("kept")], deliver)
        os.rename(path, tmp_path / "elsewhere.db")
        for n in range(20):
            with pytest.raises(HistoryError, match="removed or replaced"):
                await history.append(TOPIC, [Event(f"lost {n}")], deliver)
        [first] = _store_lines(caplog)
        assert first.levelno == logging.ERROR
        assert str(path) in first.getMessage()
        assert "removed or replaced" in first.getMessage()
        await trio.sleep(store.LOG_INTERVAL_SECONDS)
        with pytest.raises(HistoryError):
            await history.append(TOPIC, [Event("lost again")], deliver)
        [_, second] = _store_lines(caplog)
        assert "19 more" in second.getMessage()
        # The same file back at its path: commits are acknowledged again.
        os.rename(tmp_path / "elsewhere.db", path)
        await trio.sleep(store.LOG_INTERVAL_SECONDS)
        [record] = await history.append(TOPIC, [Event("back")], deliver)
        assert [r.event.data for r in deliver.records] == ["kept", "back"]
        [*_, recovered] = _store_lines(caplog)
        assert recovered.levelno == logging.INFO
        assert "again" in recovered.getMessage()
    async with open_sqlite_history(str(path)) as history:
        kept = (await history.after(TOPIC, None, 100)).records
        assert [r.event.data for r in kept] == ["kept", "back"]
        assert kept[-1].id == record.id


# --- point 5: a read-only file is refused at start-up ----------------------------


async def test_read_only_file_stops_the_broker_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    await _create(path)
    path.chmod(0o444)
    argv = [*broker_command(obey_file_modes=True), "--port", "0", "--no-auth"]
    process = await trio.lowlevel.open_process(
        [*argv, "--history", f"sqlite:{path}"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    stderr = bytearray()
    async with process.stderr:
        with trio.move_on_after(20):
            while b"listening on" not in stderr and (chunk := await process.stderr.receive_some()):
                stderr += chunk
        if process.returncode is None and b"listening on" in stderr:
            process.kill()
        await process.wait()
    text = stderr.decode(errors="replace")
    assert b"listening on" not in stderr, "the broker started on a read-only history file"
    assert process.returncode == 3, text
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("trio-esper: error: ")
    assert str(path) in last
    assert "not writable" in last
    # Nothing left behind that would break the next start.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.db"]
    path.chmod(0o644)
    async with (
        broker_process(
            "--history", f"sqlite:{path}", command=broker_command(obey_file_modes=True)
        ) as running,
        httpx.AsyncClient(timeout=5) as client,
    ):
        reply = await client.post(f"{running.url}/publish/{TOPIC}", content=b"data: ok\n")
        assert reply.status_code == 200, reply.text


# --- point 6: the file removed or replaced while the broker runs -----------------


async def _publish(client: httpx.AsyncClient, url: str, data: str) -> httpx.Response:
    return await client.post(f"{url}/publish/{TOPIC}", content=f"data: {data}\n".encode())


@pytest.mark.parametrize("how", ["removed", "replaced", "wal-removed"])
async def test_removed_or_replaced_file_refuses_publishes(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.INFO, logger="trio_esper")
    path = tmp_path / "history.db"
    broker = await start_broker(nursery, history=f"sqlite:{path}")
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await _publish(client, broker.url, "before")).status_code == 200
        if how == "removed":
            path.unlink()
        elif how == "replaced":  # a copy (another file) where the history was
            shutil.copy(path, tmp_path / "copy.db")
            os.replace(tmp_path / "copy.db", path)
        else:  # what is not checkpointed yet, which a restart would not find
            Path(f"{path}-wal").unlink()
        for n in range(5):
            reply = await _publish(client, broker.url, f"after {n}")
            assert reply.status_code == 503
            assert "removed or replaced" in reply.text
        assert (await client.get(f"{broker.url}/stats")).status_code == 200
        lines = [r for r in _store_lines(caplog) if r.levelno >= logging.ERROR]
        assert len(lines) == 1
        assert str(path) in lines[0].getMessage()
        assert "restart" in lines[0].getMessage()
    await broker.stop()


async def test_file_renamed_and_renamed_back_resumes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "history.db"
    broker = await start_broker(nursery, history=f"sqlite:{path}")
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await _publish(client, broker.url, "one")).status_code == 200
        os.rename(path, tmp_path / "moved.db")
        assert (await _publish(client, broker.url, "lost")).status_code == 503
        os.rename(tmp_path / "moved.db", path)
        assert (await _publish(client, broker.url, "two")).status_code == 200
    await broker.stop()
    # What was acknowledged is what a restarted broker has.
    broker = await start_broker(nursery, history=f"sqlite:{path}")
    async with httpx.AsyncClient(timeout=5) as client:
        stored = (await client.get(f"{broker.url}/history/{TOPIC}")).text.splitlines()
        assert [json.loads(line)["data"] for line in stored] == ["one", "two"]
    await broker.stop()


@pytest.mark.parametrize("lane", [(), ("--no-fast-lane",)], ids=["fast", "quart"])
async def test_a_subscribe_while_the_backplane_is_down_is_503_on_both_lanes(
    tmp_path: Path, lane: tuple[str, ...]
) -> None:
    # The backplane down (its redis-server gone), a subscriber asks: refused
    # (503) before its head on /subscribe and on Mercure's route, as the Quart
    # routes answered /subscribe; the fast forms answered 200 then ended.
    redis = RedisServer(free_port(), str(tmp_path))
    redis.start()
    try:
        async with (
            broker_process("--backplane", redis.url, *lane) as running,
            httpx.AsyncClient(timeout=STEP_SECONDS) as client,
        ):
            assert (await _publish(client, running.url, "before")).status_code == 200
            urls = (
                f"{running.url}/subscribe/{OTHER}",
                f"{running.url}/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2F1",
            )
            async with AsyncExitStack() as watching:
                # A subscriber on each first: the backplane already watches them.
                for url in urls:
                    early = await watching.enter_async_context(client.stream("GET", url))
                    assert early.status_code == 200
                redis.kill()
                assert (await _publish(client, running.url, "after")).status_code == 503
                for url in urls:
                    async with client.stream("GET", url) as answer:
                        assert answer.status_code == 503, url
                        assert "unavailable" in (await answer.aread()).decode(), url
    finally:
        redis.kill()
