"""History backends, without HTTP: ids, order, conflicts, retention, replay."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import trio

from trio_esper.errors import Conflict, HistoryError
from trio_esper.history import History, Record
from trio_esper.history.memory import MemoryHistory
from trio_esper.history.sqlite import open_sqlite_history
from trio_esper.sse import Event


class Delivered:
    """A fake ``deliver`` that remembers what it was handed, in order."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def __call__(self, topic: str, records: Sequence[Record]) -> None:
        assert all(r.topic == topic for r in records)
        self.records.extend(records)


@pytest.fixture(params=["memory", "sqlite"])
async def history(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[History]:
    if request.param == "memory":
        yield MemoryHistory(max_events_per_topic=5)
    else:
        async with open_sqlite_history(str(tmp_path / "h.db"), max_events_per_topic=5) as h:
            yield h


def events(*data: str, **fields: str) -> list[Event]:
    return [Event(d, **fields) for d in data]


async def test_assigned_ids_increase_in_publish_order(history: History) -> None:
    deliver = Delivered()
    first = await history.append("topic0001", events("a", "b"), deliver)
    second = await history.append("topic0001", events("c"), deliver)
    records = first + second
    assert [r.event.data for r in records] == ["a", "b", "c"]
    assert [r.seq for r in records] == sorted({r.seq for r in records})
    ids = [r.id for r in records]
    assert ids == sorted(ids)  # fixed-width decimal: sorts as text too
    assert all(i.isdigit() for i in ids)
    assert deliver.records == records
    assert records[0].frame == f"id: {ids[0]}\ndata: a\n\n".encode()


async def test_publisher_ids_are_kept_and_duplicates_conflict(history: History) -> None:
    deliver = Delivered()
    [record] = await history.append("topic0001", events("a", id="x1"), deliver)
    assert record.id == "x1"
    with pytest.raises(Conflict):
        await history.append("topic0001", events("b", id="x1"), deliver)
    with pytest.raises(Conflict):  # a duplicate inside one body rejects the body
        await history.append("topic0001", [Event("c", id="y"), Event("d", id="y")], deliver)
    # Same id on another topic is fine.
    await history.append("topic0002", events("e", id="x1"), deliver)
    assert [r.event.data for r in deliver.records] == ["a", "e"]
    assert [r.event.data for r in (await history.after("topic0001", None, 10)).records] == ["a"]


async def test_after_replays_newer_events(history: History) -> None:
    deliver = Delivered()
    records = await history.append("topic0001", events("a", "b", "c", "d"), deliver)
    replay = await history.after("topic0001", records[1].id, 10)
    assert replay.found
    assert [r.event.data for r in replay.records] == ["c", "d"]
    assert [r.event.data for r in (await history.after("topic0001", None, 2)).records] == [
        "a",
        "b",
    ]
    unknown = await history.after("topic0001", "nope", 10)
    assert not unknown.found
    assert [r.event.data for r in unknown.records] == ["a", "b", "c", "d"]
    empty = await history.after("othertopic1", None, 10)
    assert (empty.found, empty.records) == (True, [])


async def test_retention_by_count(history: History, autojump_clock: trio.abc.Clock) -> None:
    deliver = Delivered()
    for n in range(12):
        await history.append("topic0001", events(str(n)), deliver)
        await trio.sleep(1.1)  # sqlite prunes at most once a second, off the publish path
    await history.append("topic0001", events("12"), deliver)
    # The sqlite writer prunes after a commit and before taking the next append,
    # so once this one is stored the prune of "12"'s commit has finished.
    await history.append("topic0002", events("sync"), deliver)
    kept = (await history.after("topic0001", None, 100)).records
    assert [r.event.data for r in kept] == ["8", "9", "10", "11", "12"]
    assert history.statistics().events == 6
    assert history.statistics().topics == 2


async def test_memory_byte_budget_evicts_least_recently_published_topic() -> None:
    history = MemoryHistory(max_events_per_topic=1000, max_bytes=20_000)
    deliver = Delivered()
    await history.append("stale0001", events("s" * 100), deliver)
    for n in range(200):
        await history.append("fresh0001", events(f"{n} " + "x" * 100), deliver)
    stats = history.statistics()
    assert stats.bytes <= 20_000
    assert (await history.after("stale0001", None, 10)).records == []
    fresh = (await history.after("fresh0001", None, 1000)).records
    assert fresh[-1].event.data.startswith("199 ")
    assert [int(r.event.data.split()[0]) for r in fresh] == list(range(200 - len(fresh), 200))


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "h.db")
    deliver = Delivered()
    async with open_sqlite_history(path) as history:
        first = await history.append("topic0001", events("a", "b"), deliver)
    async with open_sqlite_history(path) as history:
        assert [r.id for r in (await history.after("topic0001", None, 10)).records] == [
            r.id for r in first
        ]
        [later] = await history.append("topic0001", events("c"), deliver)
        assert later.seq > first[-1].seq  # seqs keep increasing across restarts
        assert history.statistics().events == 3


async def test_sqlite_age_retention(tmp_path: Path) -> None:
    path = str(tmp_path / "h.db")
    deliver = Delivered()
    async with open_sqlite_history(path) as history:
        await history.append("topic0001", events("old"), deliver)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE events SET seq = seq - 7200000000")  # two hours earlier
    conn.commit()
    conn.close()
    async with open_sqlite_history(path, max_age_seconds=3600) as history:
        await history.append("topic0001", events("new"), deliver)
        await trio.sleep(0)
    async with open_sqlite_history(path, max_age_seconds=3600) as history:
        kept = (await history.after("topic0001", None, 10)).records
        assert [r.event.data for r in kept] == ["new"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not a database at all, just some text" * 100, "not a database"),
    ],
)
async def test_sqlite_corrupt_file_is_a_clear_error(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(content)
    with pytest.raises(HistoryError, match=reason):
        async with open_sqlite_history(str(path)):
            pass  # pragma: no cover


async def test_sqlite_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="is a directory"):
        async with open_sqlite_history(str(tmp_path)):
            pass  # pragma: no cover


async def test_sqlite_deliver_order_matches_commit_order(tmp_path: Path) -> None:
    deliver = Delivered()
    async with (
        open_sqlite_history(str(tmp_path / "h.db")) as history,
        trio.open_nursery() as nursery,
    ):
        for n in range(50):
            nursery.start_soon(history.append, f"topic{n % 3:05d}", events(str(n)), deliver)
    seqs = [r.seq for r in deliver.records]
    assert len(seqs) == 50
    assert seqs == sorted(seqs)


async def test_assigned_id_never_collides_with_a_publisher_id(history: History) -> None:
    deliver = Delivered()
    future = 9_000_000_000_000_000  # far above the clock, so seqs are predictable
    history._seqs.last = future  # type: ignore[attr-defined]
    # The publisher picks the very id the broker would assign next but one.
    await history.append("topic0001", [Event("mine", id=str(future + 2))], deliver)
    [assigned] = await history.append("topic0001", [Event("ours")], deliver)
    assert assigned.id == str(future + 3)
    kept = (await history.after("topic0001", None, 10)).records
    assert [(r.id, r.event.data) for r in kept] == [
        (str(future + 2), "mine"),
        (str(future + 3), "ours"),
    ]
