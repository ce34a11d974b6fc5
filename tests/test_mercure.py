"""The Mercure hub at /.well-known/mercure through a real broker on loopback
and a real streaming client: publish forms and their answers, the private
update matrix, one stream over many topics with one resume point, the
errors, and two nodes on a real redis-server."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
import jwt
import pytest
import trio

from .conftest import (
    STEP_SECONDS,
    Broker,
    RedisServer,
    SSEStream,
    broker_process,
    open_sse,
    start_broker,
)

KEY = "a-mercure-key-long-enough-for-hs256-0123456789"
HUB = "/.well-known/mercure"
BOOKS = "https://example.com/books/{id}"


def token(**mercure: Any) -> str:
    return jwt.encode({"mercure": mercure}, KEY, algorithm="HS256")


PUBLISHER = token(publish=["*"])


@pytest.fixture
async def hub(nursery: trio.Nursery, fast_lane: bool) -> AsyncIterator[Broker]:
    broker = await start_broker(
        nursery,
        fast_lane=fast_lane,
        publisher_secret=KEY,
        subscriber_secret=KEY,
        mercure_anonymous=True,
    )
    yield broker
    await broker.stop()


async def publish(
    client: httpx.AsyncClient, url: str, *topics: str, data: str = "x", **fields: str
) -> httpx.Response:
    form = [("topic", t) for t in topics] + [("data", data), *fields.items()]
    return await post_form(client, url, form, {"Authorization": f"Bearer {PUBLISHER}"})


async def post_form(
    client: httpx.AsyncClient, url: str, form: list[tuple[str, str]], headers: dict[str, str]
) -> httpx.Response:
    """A form POST to the hub (httpx takes a form as a dict only: topics repeat)."""
    return await client.post(
        f"{url}{HUB}",
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )


class Subscriber:
    """A Mercure subscription, read event by event."""

    def __init__(self, stream: SSEStream, ctx: Any) -> None:
        self.stream, self.ctx = stream, ctx

    async def ids(self, count: int) -> list[str]:
        found = []
        while len(found) < count:
            frame = (await self.stream.next_event()).decode()
            found += [line[4:] for line in frame.splitlines() if line.startswith("id: ")]
        return found

    async def nothing_more(self, published: str) -> None:
        """Nothing else arrived before ``published`` (sent after, to every subscriber)."""
        assert await self.ids(1) == [published]


@pytest.fixture
async def subscribe(client: httpx.AsyncClient) -> AsyncIterator[Any]:
    opened: list[Subscriber] = []

    async def _subscribe(url: str, *topics: str, **kwargs: Any) -> Subscriber:
        params = [("topic", t) for t in topics] + list(kwargs.pop("params", []))
        stream, ctx = await open_sse(client, f"{url}{HUB}", params=params, **kwargs)
        assert stream.response.status_code == 200, await stream.response.aread()
        assert await stream.next_frame() == b": subscribed\n\n"
        opened.append(Subscriber(stream, ctx))
        return opened[-1]

    yield _subscribe
    with trio.CancelScope(shield=True):
        for subscriber in opened:
            await subscriber.stream.aclose()
            await subscriber.ctx.__aexit__(None, None, None)


async def test_publish_answers_the_id_and_delivers_the_update(
    hub: Broker, client: httpx.AsyncClient, subscribe: Any
) -> None:
    sub = await subscribe(hub.url, BOOKS)
    answer = await publish(
        client, hub.url, "https://example.com/books/1", data="a\r\nb", id="book-1", type="t"
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text == "book-1"
    frame = await sub.stream.next_event()
    assert frame == b"id: book-1\nevent: t\ndata: a\ndata: b\n\n"
    generated = await publish(client, hub.url, "https://example.com/books/2")
    assert generated.text.startswith("urn:uuid:")
    assert await sub.ids(1) == [generated.text]


async def test_private_updates_by_claim_header_and_cookie(
    hub: Broker, client: httpx.AsyncClient, subscribe: Any
) -> None:
    allowed = token(subscribe=[BOOKS])
    elsewhere = token(subscribe=["https://example.com/users/{id}"])
    anonymous = await subscribe(hub.url, BOOKS)
    by_header = await subscribe(hub.url, BOOKS, headers={"Authorization": f"Bearer {allowed}"})
    by_cookie = await subscribe(
        hub.url, BOOKS, headers={"Cookie": f"mercureAuthorization={allowed}"}
    )
    not_matching = await subscribe(
        hub.url, BOOKS, headers={"Authorization": f"Bearer {elsewhere}"}
    )
    await publish(client, hub.url, "https://example.com/books/1", id="private", private="on")
    await publish(client, hub.url, "https://example.com/books/1", id="public")
    assert await by_header.ids(2) == ["private", "public"]
    assert await by_cookie.ids(2) == ["private", "public"]
    await anonymous.nothing_more("public")
    await not_matching.nothing_more("public")


async def test_one_stream_over_many_topics_resumes_from_one_id(
    hub: Broker, client: httpx.AsyncClient, subscribe: Any
) -> None:
    topics = ("https://example.com/a", "https://example.com/b")
    live = await subscribe(hub.url, *topics)
    for n, topic in enumerate([topics[0], topics[1], "https://example.com/c", topics[0]]):
        assert (await publish(client, hub.url, topic, id=f"u{n}")).status_code == 200
    assert await live.ids(3) == ["u0", "u1", "u3"]  # in publish order, c left out
    resumed = await subscribe(hub.url, *topics, headers={"Last-Event-ID": "u0"})
    assert resumed.stream.response.headers["last-event-id"] == "u0"
    assert await resumed.ids(2) == ["u1", "u3"]
    by_query = await subscribe(hub.url, *topics, params=[("lastEventID", "earliest")])
    assert by_query.stream.response.headers["last-event-id"] == "earliest"
    assert await by_query.ids(3) == ["u0", "u1", "u3"]
    unknown = await subscribe(hub.url, *topics, headers={"Last-Event-ID": "gone"})
    # Nothing replayed; the header names the newest update this subscriber may see.
    assert unknown.stream.response.headers["last-event-id"] == "u3"
    await publish(client, hub.url, topics[1], id="u4")
    assert await unknown.ids(1) == ["u4"]


@pytest.mark.parametrize(
    ("headers", "form", "status"),
    [
        ({}, [("topic", "t"), ("data", "x")], 401),
        ({"Authorization": "Bearer " + "x" * 60}, [("topic", "t"), ("data", "x")], 401),
        ({"Authorization": f"Bearer {token(publish=['a'])}"}, [("topic", "b")], 403),
        ({"Authorization": f"Bearer {token(subscribe=['*'])}"}, [("topic", "a")], 403),
        ({"Authorization": f"Bearer {PUBLISHER}"}, [("data", "no topic")], 400),
        ({"Authorization": f"Bearer {PUBLISHER}"}, [("topic", "a"), ("retry", "-1")], 400),
        ({"Authorization": f"Bearer {PUBLISHER}"}, [("topic", "a"), ("id", "a\nb")], 400),
        ({"Authorization": f"Bearer {PUBLISHER}"}, [("topic", "/.well-known/mercure/x")], 403),
        ({"Cookie": f"mercureAuthorization={PUBLISHER}"}, [("topic", "a")], 401),
    ],
)
async def test_a_bad_publish_gets_its_status_and_one_line(
    hub: Broker,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    form: list[tuple[str, str]],
    status: int,
) -> None:
    answer = await post_form(client, hub.url, form, headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text.count("\n") == 1


async def test_subscribe_errors(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    closed = await start_broker(nursery, subscriber_secret=KEY, publisher_secret=KEY)
    assert (await client.get(f"{closed.url}{HUB}?topic=a")).status_code == 401  # no anonymous
    bad = {"Authorization": "Bearer " + "x" * 60}
    assert (await client.get(f"{closed.url}{HUB}?topic=a", headers=bad)).status_code == 401
    assert (await client.get(f"{closed.url}{HUB}")).status_code == 400  # no topic
    await closed.stop()


async def test_two_nodes_share_order_and_resume(
    nursery: trio.Nursery, redis_server: RedisServer, client: httpx.AsyncClient, subscribe: Any
) -> None:
    settings = {
        "publisher_secret": KEY,
        "subscriber_secret": KEY,
        "mercure_anonymous": True,
        "backplane": redis_server.url,
    }
    one = await start_broker(nursery, **settings)
    two = await start_broker(nursery, **settings)
    topics = ("https://example.com/x", "https://example.com/y")
    on_two = await subscribe(two.url, *topics)
    ids = [
        (await publish(client, node.url, topic)).text
        for node, topic in [(one, topics[0]), (two, topics[1]), (one, topics[1])]
    ]
    assert await on_two.ids(3) == ids
    allowed = token(subscribe=["*"])
    private = await publish(client, one.url, topics[0], private="on")
    assert private.status_code == 200
    resumed = await subscribe(
        two.url,
        "https://example.com/{any}",
        headers={"Last-Event-ID": ids[0], "Authorization": f"Bearer {allowed}"},
    )
    assert await resumed.ids(3) == [ids[1], ids[2], private.text]
    assert all(
        i.startswith("urn:uuid:") for i in [*ids, private.text]
    )  # the hub's, as on one node
    # A publisher's own id: kept as given, and resumable from on the other node.
    with trio.fail_after(STEP_SECONDS):
        mine = await publish(client, one.url, topics[0], id="urn:example:mine")
        after = await publish(client, one.url, topics[1], id="urn:example:after")
    assert (mine.text, after.text) == ("urn:example:mine", "urn:example:after")
    from_mine = await subscribe(two.url, *topics, headers={"Last-Event-ID": "urn:example:mine"})
    assert await from_mine.ids(1) == ["urn:example:after"]
    await one.stop()
    await two.stop()


async def test_subscriptions_are_announced_and_listed(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe: Any
) -> None:
    broker = await start_broker(
        nursery, publisher_secret=KEY, subscriber_secret=KEY, mercure_subscriptions=True
    )
    watcher = token(subscribe=["/.well-known/mercure/subscriptions/{topic}/{subscriber}"])
    watching = await subscribe(
        broker.url,
        "/.well-known/mercure/subscriptions/{topic}/{subscriber}",
        headers={"Authorization": f"Bearer {watcher}"},
    )
    alice = token(subscribe=["https://example.com/private"], payload={"user": "alice"})
    seen = await subscribe(broker.url, BOOKS, headers={"Authorization": f"Bearer {alice}"})
    opened = json.loads(_data(await watching.stream.next_event()))
    subscriber = opened["subscriber"]
    assert opened == {
        "@context": "https://mercure.rocks/",
        "id": f"/.well-known/mercure/subscriptions/{quote_plus(BOOKS, safe='')}/"
        f"{quote_plus(subscriber, safe='')}",
        "type": "Subscription",
        "subscriber": subscriber,
        "topic": BOOKS,
        "active": True,
        "payload": {"user": "alice"},
    }
    reader = {"Authorization": f"Bearer {token(subscribe=['*'])}"}
    listed = await client.get(f"{broker.url}/.well-known/mercure/subscriptions", headers=reader)
    assert listed.status_code == 200
    assert listed.headers["content-type"] == "application/ld+json"
    everything = listed.json()
    assert everything["type"] == "Subscriptions"
    ours = [s for s in everything["subscriptions"] if s["subscriber"] == subscriber]
    assert ours == [{k: v for k, v in opened.items() if k != "@context"}]
    one = await client.get(f"{broker.url}{opened['id']}", headers=reader)
    assert one.status_code == 200, one.text
    assert one.json()["topic"] == BOOKS
    assert one.json()["lastEventID"] == listed.headers["etag"]
    unchanged = await client.get(
        f"{broker.url}{opened['id']}", headers={**reader, "If-None-Match": listed.headers["etag"]}
    )
    assert unchanged.status_code == 304
    anonymous = await client.get(f"{broker.url}/.well-known/mercure/subscriptions")
    assert anonymous.status_code == 401
    other = {"Authorization": f"Bearer {token(subscribe=['https://example.com/x'])}"}
    refused = await client.get(f"{broker.url}/.well-known/mercure/subscriptions", headers=other)
    assert refused.status_code == 403
    gone = await client.get(f"{broker.url}{opened['id']}x", headers=reader)
    assert gone.status_code == 404
    await seen.stream.aclose()
    await seen.ctx.__aexit__(None, None, None)
    closed = json.loads(_data(await watching.stream.next_event()))
    assert (closed["subscriber"], closed["active"]) == (subscriber, False)
    await broker.stop()


async def test_the_subscriptions_api_is_off_by_default(
    hub: Broker, client: httpx.AsyncClient
) -> None:
    answer = await client.get(f"{hub.url}/.well-known/mercure/subscriptions")
    assert answer.status_code == 404
    assert "--mercure-subscriptions" in answer.text


def _data(frame: bytes) -> str:
    return "\n".join(line[6:] for line in frame.decode().splitlines() if line.startswith("data: "))


async def test_updates_survive_a_restart_with_sqlite_history(
    tmp_path: Path, client: httpx.AsyncClient, subscribe: Any
) -> None:
    # A Mercure update in a SQLite history survives a kill -9 (acknowledged
    # means committed), with its route: private stays private, and a resuming
    # subscription gets the updates its selectors select, across topics.
    argv = [sys.executable, "-m", "trio_esper", "--port", "0", "--mercure-anonymous"]
    argv += ["--history", f"sqlite:{tmp_path / 'history.db'}"]
    env = {**os.environ, "ESPER_PUBLISHER_SECRET": KEY, "ESPER_SUBSCRIBER_SECRET": KEY}
    async with broker_process(argv=argv, env=env) as first:
        ids = [
            (await publish(client, first.url, topic, **fields)).text
            for topic, fields in [
                ("https://example.com/books/1", {}),
                ("https://example.com/books/2", {"private": "on"}),
                ("https://example.com/other", {}),
                ("https://example.com/books/3", {}),
            ]
        ]
        first.process.kill()
        await first.process.wait()
    async with broker_process(argv=argv, env=env) as second:
        anonymous = await subscribe(second.url, BOOKS, headers={"Last-Event-ID": "earliest"})
        assert await anonymous.ids(2) == [ids[0], ids[3]]
        allowed = {"Last-Event-ID": ids[0], "Authorization": f"Bearer {token(subscribe=['*'])}"}
        resumed = await subscribe(second.url, BOOKS, headers=allowed)
        assert await resumed.ids(2) == [ids[1], ids[3]]
