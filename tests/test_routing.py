"""The routed log in the hub: one ordered stream per subscription across the
topics it selects, each update once, private updates only where allowed,
and one resume point across topics; in memory and in SQLite."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_esper.history import History
from trio_esper.history.memory import MemoryHistory
from trio_esper.history.sqlite import open_sqlite_history
from trio_esper.hub import Hub, Subscription, open_hub
from trio_esper.routing import (
    PATTERN_MATCHES_MAX_BYTES,
    Route,
    Router,
    Selection,
    decode_route,
    encode_route,
    selects,
)
from trio_esper.selectors import SelectorMatcher
from trio_esper.sse import Event

BOOK = "https://example.com/books/{id}"


@asynccontextmanager
async def _history(kind: str, tmp_path: Path) -> AsyncIterator[History]:
    if kind == "memory":
        yield MemoryHistory()
    else:
        async with open_sqlite_history(str(tmp_path / "h.db")) as history:
            yield history


@pytest.fixture(params=["memory", "sqlite"])
async def hub(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Hub]:
    async with _history(request.param, tmp_path) as history, open_hub(history) as opened:
        yield opened


def _ids(data: bytes) -> list[str]:
    return [line[4:] for line in data.decode().splitlines() if line.startswith("id: ")]


async def _publish(hub: Hub, id: str, *topics: str, private: bool = False) -> None:
    await hub.publish_routed(Route(topics, private), [Event(f"data {id}", id=id)])


async def _drain(subscription: Subscription) -> list[str]:
    """What the subscription has now, by id (without waiting)."""
    ids: list[str] = []
    while True:
        try:
            ids += _ids(subscription.take_nowait())
        except trio.WouldBlock:
            return ids


async def test_one_stream_in_publish_order_and_each_update_once(hub: Hub) -> None:
    selection = Selection(("https://example.com/a", BOOK, "*"))
    async with (
        hub.subscribe_routed(selection) as everything,
        hub.subscribe_routed(Selection(("https://example.com/a",))) as only_a,
        hub.subscribe_routed(Selection((BOOK,))) as books,
    ):
        await _publish(hub, "u1", "https://example.com/a")
        await _publish(hub, "u2", "https://example.com/books/1", "https://example.com/a")
        await _publish(hub, "u3", "https://example.com/other")
        await _publish(hub, "u4", "https://example.com/books/2")
        assert await _drain(everything) == ["u1", "u2", "u3", "u4"]  # u2 once
        assert await _drain(only_a) == ["u1", "u2"]  # u2 by its alternate topic
        assert await _drain(books) == ["u2", "u4"]


@pytest.mark.parametrize(
    ("allowed", "received"),
    [
        ((), ["public"]),  # anonymous: never a private update
        (("https://example.com/books/1",), ["public", "mine"]),
        ((BOOK,), ["public", "mine", "other", "by-alternate"]),
        (("https://example.com/books/2",), ["public", "other"]),
        (("https://example.com/users/{u}",), ["public", "by-alternate"]),
        (("*",), ["public", "mine", "other", "by-alternate"]),
    ],
)
async def test_private_updates_reach_only_allowed_subscriptions(
    hub: Hub, allowed: tuple[str, ...], received: list[str]
) -> None:
    async with hub.subscribe_routed(Selection((BOOK,), allowed)) as subscription:
        await _publish(hub, "public", "https://example.com/books/1")
        await _publish(hub, "mine", "https://example.com/books/1", private=True)
        await _publish(hub, "other", "https://example.com/books/2", private=True)
        await _publish(
            hub,
            "by-alternate",
            "https://example.com/books/3",
            "https://example.com/users/7",
            private=True,
        )
        assert await _drain(subscription) == received


async def test_resume_spans_topics_and_skips_what_is_not_selected(hub: Hub) -> None:
    for n, topic in enumerate(["a", "b", "c", "a", "b", "c"]):
        await _publish(hub, f"u{n}", f"https://example.com/{topic}", private=topic == "b")
    selection = Selection(("https://example.com/a", "https://example.com/b"))
    async with hub.subscribe_routed(selection) as subscription:
        page = await hub.replay(subscription, "u0", limit=1000)
        assert page.found
        # u1 and u4 are private (b), u2 and u5 are not selected (c)
        assert [r.id for r in page.records] == ["u3"]
        everything = await hub.replay(subscription, None, limit=1000)
        assert [r.id for r in everything.records] == []  # replayed already: never twice
    async with hub.subscribe_routed(Selection(("*",), ("*",))) as allowed:
        page = await hub.replay(allowed, "u2", limit=2)  # a page of the log, selected
        assert [r.id for r in page.records] == ["u3", "u4"]
        assert page.next_after == "u4"


async def test_a_repeated_id_is_taken_and_resumes_after_its_newest(hub: Hub) -> None:
    # Mercure's hub takes a publisher's id again; a topic refuses it (409).
    async with hub.subscribe_routed(Selection(("t",))) as subscription:
        await _publish(hub, "same", "t")
        await _publish(hub, "x", "t")
        await _publish(hub, "same", "t")
        await _publish(hub, "y", "t")
        assert await _drain(subscription) == ["same", "x", "same", "y"]
    async with hub.subscribe_routed(Selection(("t",))) as resumed:
        page = await hub.replay(resumed, "same", limit=1000)
        assert [r.id for r in page.records] == ["y"]


async def test_routed_and_topic_namespaces_are_apart(hub: Hub) -> None:
    # An esper topic "abc12345" and the routed topic "abc12345" are not one topic.
    async with (
        hub.subscribe("abc12345") as esper,
        hub.subscribe_routed(Selection(("abc12345",))) as routed,
    ):
        await hub.publish("abc12345", [Event("esper", id="e1")])
        await _publish(hub, "m1", "abc12345")
        assert _ids(esper.take_nowait()) == ["e1"]
        assert await _drain(routed) == ["m1"]
        with pytest.raises(trio.WouldBlock):
            esper.take_nowait()


@pytest.mark.parametrize(
    "route",
    [Route(("a",)), Route(("https://example.com/é", "b"), private=True), Route(('"{}',))],
)
def test_a_route_is_stored_and_read_back(route: Route) -> None:
    assert decode_route(encode_route(route)) == route


_SELECTORS = [
    "https://example.com/books/1",
    "https://example.com/books/2",
    "https://example.com/books/{id}",
    "https://example.com/{kind}/1",
    "*",
]
_TOPICS = [
    "https://example.com/books/1",
    "https://example.com/books/2",
    "https://example.com/users/1",
    "https://example.com/other",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("add"),
                st.integers(0, 7),
                st.lists(st.sampled_from(_SELECTORS), min_size=1, max_size=3),
                st.lists(st.sampled_from(_SELECTORS), max_size=2),
            ),
            st.tuples(st.just("discard"), st.integers(0, 7), st.just([]), st.just([])),
            st.tuples(
                st.just("route"),
                st.integers(0, 1),
                st.lists(st.sampled_from(_TOPICS), min_size=1, max_size=3),
                st.just([]),
            ),
        ),
        max_size=40,
    )
)
def test_the_router_finds_what_matching_each_subscription_finds(
    steps: list[tuple[str, int, list[str], list[str]]],
) -> None:
    # Remembered matches (per topic, forgotten as pattern subscriptions come and
    # go) must give what matching every subscription's selection gives.
    matcher = SelectorMatcher()
    router = Router[int](matcher)
    held: dict[int, Selection] = {}
    for kind, n, first, second in steps:
        if kind == "add" and n not in held:
            held[n] = Selection(tuple(first), tuple(second))
            router.add(n, held[n])
        elif kind == "discard":
            held.pop(n, None)
            router.discard(n)
        elif kind == "route":
            route = Route(tuple(first), private=bool(n))
            expected = {s for s, selection in held.items() if selects(matcher, selection, route)}
            found = list(router.recipients(route))
            assert len(found) == len(set(found))  # each once
            assert set(found) == expected


def test_remembered_matches_of_long_topics_stay_within_their_bytes() -> None:
    # The review found 4,096 topics of 60 kB each held 236 MiB for one `*` subscriber.
    router = Router[int](SelectorMatcher())
    router.add(1, Selection(("*",), ()))
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for n in range(600):
            topic = f"https://example.com/books/{n}/" + "x" * 60_000
            assert list(router.recipients(Route((topic,)))) == [1]
            del topic
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert router.remembered_bytes() <= PATTERN_MATCHES_MAX_BYTES
    assert after - before <= PATTERN_MATCHES_MAX_BYTES * 1.25


def test_remembered_matches_of_many_subscribers_stay_within_their_bytes() -> None:
    # The review found 1,000 template subscribers and 4,096 topics held 130 MiB.
    router = Router[int](SelectorMatcher())
    for n in range(200):
        router.add(1000 + n, Selection(("https://example.com/books/{id}",), ()))
    for n in range(1500):
        assert len(list(router.recipients(Route((f"https://example.com/books/{n}",))))) == 200
    assert router.remembered_bytes() <= PATTERN_MATCHES_MAX_BYTES
    # The bound was reached (a topic's entry holds 200 members): not every topic is kept.
    assert router.remembered_bytes() > PATTERN_MATCHES_MAX_BYTES * 0.9
