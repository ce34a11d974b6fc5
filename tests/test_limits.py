"""Limits that keep what the broker holds bounded, each with its status,
through a real broker on loopback and raw sockets, on both lanes (the edge's
fast forms, and Quart-Trio with ``--no-fast-lane``)."""

from __future__ import annotations

import pytest
import trio

from .conftest import start_broker
from .rawhttp import (
    Raw,
    Response,
    assert_still_serves,
    exchange,
    open_subscriber,
    request,
    wait_for_clients,
)


async def _refused_subscribe(raw: Raw, topic: str) -> Response:
    await raw.send(request("GET", f"/subscribe/{topic}"))
    return await raw.read_response()


def _assert_limit(answer: Response, status: int, words: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["retry-after"].isdigit(), answer
    assert words in answer.one_line_reason()


@pytest.mark.parametrize(
    ("limit", "topics", "words"),
    [
        pytest.param({"max_subscribers": 2}, ["limitsub01", "limitsub02"], "2 subscribers"),
        pytest.param({"max_topics": 2}, ["limittop01", "limittop02"], "2 topics"),
        pytest.param(
            {"max_subscribers_per_topic": 2}, ["limitper01", "limitper01"], "2 subscribers"
        ),
        pytest.param(
            {"max_subscriptions_per_address": 2},
            ["limitadr01", "limitadr02"],
            "2 subscriptions",
        ),
    ],
)
async def test_subscriber_limits_answer_503_with_retry_after(
    nursery: trio.Nursery, fast_lane: bool, limit: dict[str, int], topics: list[str], words: str
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, **limit)
    held = [await open_subscriber(broker, topic) for topic in topics]
    async with await Raw.connect(broker) as raw:
        # Another topic, or the same one for the per-topic limit.
        third = topics[0] if "max_subscribers_per_topic" in limit else "limitnew01"
        _assert_limit(await _refused_subscribe(raw, third), 503, words)
    await wait_for_clients(broker, 2)
    await held.pop().aclose()
    await wait_for_clients(broker, 1)
    # Room again: a subscriber (the check's own) is admitted.
    await assert_still_serves(broker)
    for raw in held:
        await raw.aclose()
    await broker.stop()


async def test_connections_per_address_are_limited(nursery: trio.Nursery, fast_lane: bool) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, max_connections_per_address=3)
    held = [await Raw.connect(broker) for _ in range(2)]
    held.append(await open_subscriber(broker, "limitconn01"))
    async with await Raw.connect(broker) as refused:
        # Answered without waiting for a request, then closed.
        answer = await refused.read_response()
        _assert_limit(answer, 503, "3 connections")
        assert answer.headers["connection"] == "close"
        assert await refused.read_to_eof() == b""
    await held.pop(0).aclose()
    with trio.fail_after(5):
        while True:  # the broker sees the close when its task next runs
            answer = await exchange(broker, "GET", "/history/limitconn01")
            if answer.status == 200:
                break
            await trio.sleep(0.05)
    for raw in held:
        await raw.aclose()
    await assert_still_serves(broker)
    await broker.stop()


async def test_publish_rate_per_connection_answers_429(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, publish_rate_per_connection=5)
    async with await Raw.connect(broker) as raw:
        await raw.send(request("POST", "/publish/limitrate01", b"data: x\n") * 6)
        answers = [await raw.read_response() for _ in range(6)]
        assert [a.status for a in answers] == [200] * 5 + [429]
        _assert_limit(answers[5], 429, "5 requests a second")
        # Another connection has its own budget.
        assert (await exchange(broker, "POST", "/publish/limitrate01", b"data: y\n")).status == 200
        await trio.sleep(0.3)  # refills at 5 a second
        await raw.send(request("POST", "/publish/limitrate01", b"data: z\n"))
        assert (await raw.read_response()).status == 200
    history = await exchange(broker, "GET", "/history/limitrate01")
    assert history.body.count(b"\n") == 7  # the refused one is not stored
    await assert_still_serves(broker)
    await broker.stop()
