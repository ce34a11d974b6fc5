"""The topic catalog is counted in the memory budget (issue 22, point 3): it
holds at most its share of ``--history-max-bytes``, and what it holds is
charged to the memory history, so the two together stay within the budget
whatever the number of topics, small budgets included.

The accounting is checked here (against ``tracemalloc``, and through a real
broker's hub with a modest count); benchmarks/catalog_budget.py measures the
process's RSS with hundreds of thousands of topics.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Sequence

import httpx
import trio

from trio_esper.catalog import BUDGET_SHARE, BUSY_RECHECKS, Catalog
from trio_esper.history import Record
from trio_esper.history.memory import MemoryHistory
from trio_esper.hub import Subscription, open_hub
from trio_esper.sse import Event

from .conftest import STEP_SECONDS, hold_subscription, start_broker
from .rawhttp import publish, stats

KIB = 1024


def _nobody(topic: str) -> bool:
    return False


async def _nowhere(topic: str, records: Sequence[Record]) -> None:
    pass


def test_counted_bytes_cover_what_the_catalog_holds() -> None:
    """``bytes`` is at least what tracemalloc sees the catalog allocate (it
    sees requested sizes; the count adds the allocator's rounding), and not
    much more: ad hoc entries, created ones, tombstones, the sorted page list."""
    gc.collect()
    tracemalloc.start()
    try:
        catalog = Catalog(100_000, durable=False)
        for n in range(3000):
            catalog.published(catalog.used(f"adhoc{n:07d}", _nobody), 1000 + n)
        for n in range(500):
            catalog.create(f"created{n:07d}", persist=False)
        for n in range(500):
            catalog.delete(f"adhoc{n:07d}")
        catalog.page(None, 10)
        gc.collect()
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert traced <= catalog.bytes <= 1.25 * traced


def test_the_catalog_holds_at_most_its_bytes() -> None:
    limit = 256 * KIB
    catalog = Catalog(100_000, durable=False, max_bytes=limit)
    live = {"adhoc0000000"}  # a topic with subscribers stays listed
    for n in range(20_000):
        catalog.used(f"adhoc{n:07d}", live.__contains__)
        assert catalog.bytes <= limit
    # An entry costs a few hundred bytes, its share of the index included.
    assert limit // 1024 < len(catalog) < 20_000
    assert catalog.get("adhoc0000000") is not None  # in use
    assert catalog.get("adhoc0019999") is not None  # the most recent
    assert catalog.get("adhoc0000001") is None  # the least recently used went
    # Created topics and tombstones count too: creating is refused once they
    # alone would fill it, and ad hoc entries make room for them.
    adhoc = len(catalog)
    created = 0
    while not catalog.full():
        entry = catalog.create(f"created{created:07d}", persist=False, in_use=live.__contains__)
        assert entry is not None
        created += 1
        assert catalog.bytes <= limit
    assert limit // 1024 < created < 20_000
    assert len(catalog) - created < adhoc // 4  # most ad hoc entries gave way
    assert catalog.get("adhoc0000000") is not None
    for n in range(created):
        catalog.delete(f"created{n:07d}")
        assert catalog.bytes <= limit


class _Subscribed:
    """Which topics have subscribers, counting how often the catalog asks:
    the work it does to make room, whatever the machine's speed."""

    def __init__(self) -> None:
        self.topics: set[str] = set()
        self.asked = 0

    def __call__(self, topic: str) -> bool:
        self.asked += 1
        return topic in self.topics


def test_topics_in_use_stay_listed_and_making_room_stays_cheap() -> None:
    """Every ad hoc topic has subscribers: none can go, so the catalog holds
    them past its bytes (they are bounded by --max-topics), and each new
    topic costs a bounded number of looks, not one per topic listed."""
    limit = 64 * KIB
    topics = 3000
    catalog = Catalog(100_000, durable=False, max_bytes=limit)
    subscribed = _Subscribed()
    for n in range(topics):
        subscribed.topics.add(f"inuse{n:07d}")
        catalog.used(f"inuse{n:07d}", subscribed)
    assert len(catalog) == topics
    assert catalog.bytes > limit
    assert subscribed.asked <= (1 + BUSY_RECHECKS) * topics
    # Their subscribers leave (the hub says so): the next room made drops
    # them, least recently used first, each looked at once.
    for n in range(topics):
        subscribed.topics.discard(f"inuse{n:07d}")
        catalog.released(f"inuse{n:07d}")
    subscribed.asked = 0
    catalog.used("newcomer", subscribed)
    assert catalog.bytes <= limit
    assert subscribed.asked <= topics
    assert catalog.get("inuse0000000") is None
    assert catalog.get(f"inuse{topics - 1:07d}") is not None
    assert catalog.get("newcomer") is not None


def test_topics_no_longer_in_use_go_without_being_released() -> None:
    """A caller that never calls ``released``: a topic set aside while in
    use is looked at again as room is made, so it goes once unused."""
    limit = 16 * KIB
    catalog = Catalog(100_000, durable=False, max_bytes=limit)
    subscribed = _Subscribed()
    subscribed.topics.update(f"inuse{n:07d}" for n in range(500))
    for n in range(500):
        catalog.used(f"inuse{n:07d}", subscribed)
    assert catalog.bytes > limit
    subscribed.topics.clear()
    catalog.used("newcomer", subscribed)
    assert catalog.bytes <= limit
    assert catalog.get("newcomer") is not None


async def test_the_hub_keeps_subscribed_topics_listed_then_lets_them_go() -> None:
    limit = 16 * KIB
    catalog = Catalog(100_000, durable=False, max_bytes=limit)
    async with open_hub(catalog=catalog) as hub:
        held: list[Subscription] = []
        async with trio.open_nursery() as nursery:
            for n in range(300):
                await nursery.start(hold_subscription, hub, f"held{n:07d}", held)
            assert catalog.bytes > limit
            assert all(catalog.get(f"held{n:07d}") is not None for n in range(300))
            nursery.cancel_scope.cancel()
        # Unsubscribed, they are back in the order: the next topic makes room.
        await hub.publish("newcomer", [Event("x")])
        assert catalog.bytes <= limit
        assert catalog.get("newcomer") is not None
        # (Which go depends on the order they left in: the tasks' ends.)
        assert sum(catalog.get(f"held{n:07d}") is not None for n in range(300)) < 300


async def test_the_catalog_and_the_history_share_the_budget() -> None:
    budget = 512 * KIB
    history = MemoryHistory(max_bytes=budget)
    catalog = Catalog(100_000, durable=False, max_bytes=budget // BUDGET_SHARE)
    catalog.count_in(history.charge)
    async with open_hub(history, catalog=catalog) as hub:
        for n in range(8000):
            await hub.publish(f"topic{n:07d}", [Event("x" * 20)])
            assert history.statistics().bytes + catalog.bytes <= budget
        kept = history.statistics()
        # Both hold a share: the catalog up to its own, the history the rest.
        assert catalog.bytes <= budget // BUDGET_SHARE
        assert kept.bytes >= budget - budget // BUDGET_SHARE - 4 * KIB
        assert 0 < kept.topics < 8000
        assert 0 < len(catalog) < 8000


async def test_a_broker_counts_its_catalog_in_the_budget(nursery: trio.Nursery) -> None:
    budget = 1024 * KIB
    broker = await start_broker(nursery, history_max_bytes=budget)
    hub = broker.hub
    for n in range(10_000):
        await hub.publish(f"many{n:07d}", [Event("x" * 20)])
    history = hub.history.statistics()
    assert history.bytes + hub.catalog.bytes <= budget
    assert hub.catalog.bytes <= budget // BUDGET_SHARE
    known = (await stats(broker))["known_topics"]
    assert isinstance(known, int)
    assert 0 < known < 10_000
    # The broker still takes publishes and lists the newest topic.
    await publish(broker, "many0010000", b"data: last\n")
    assert hub.catalog.get("many0010000") is not None
    await broker.stop()


async def test_creating_past_the_catalogs_share_answers_503(nursery: trio.Nursery) -> None:
    budget = 64 * KIB
    broker = await start_broker(nursery, history_max_bytes=budget)
    created = 0
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        while True:
            reply = await client.post(f"{broker.url}/api/v1/pubsubs", json={})
            if reply.status_code != 201:
                break
            created += 1
            assert created < 1000, "never refused"
        assert reply.status_code == 503, reply.text
        assert "memory budget" in reply.text
        assert reply.headers["retry-after"].isdigit()
    # Far below --max-topics: the catalog's quarter of the budget is full.
    assert 10 < created < 1000
    assert broker.hub.catalog.bytes <= budget // BUDGET_SHARE
    # Publishing ad hoc still works; the topic is simply not listed.
    await publish(broker, "notlisted01", b"data: x\n")
    await broker.stop()
