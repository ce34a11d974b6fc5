"""The topic API (/api/v1/pubsubs) through a real broker and a real client:
create, list (paged), read, delete, JSON publish, subscribe, and every error."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import trio

from .conftest import STEP_SECONDS, Broker, make_token, start_broker

API = "/api/v1/pubsubs"
API_TOKEN = "api-token-for-the-tests-0123456789"
PUBLISHER_SECRET = "publisher-secret-for-the-api-tests"
SUBSCRIBER_SECRET = "subscriber-secret-for-the-api-tests"
JSON_HEADERS = {"Content-Type": "application/json"}
CHALLENGE = re.compile(
    r'^Bearer realm="trio_esper", error="invalid_token", error_description="[ -!#-\[\]-~]+"$'
)


async def create(
    client: httpx.AsyncClient, broker: Broker, body: Any = None, **headers: str
) -> httpx.Response:
    return await client.post(broker.url + API, json={} if body is None else body, headers=headers)


async def test_create_list_get_publish_subscribe_delete(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe: Any
) -> None:
    broker = await start_broker(nursery)
    reply = await create(client, broker)
    assert reply.status_code == 201, reply.text
    pubsub = reply.json()["pubsub"]
    topic = pubsub["id"]
    assert re.fullmatch(r"[0-9a-z]{8,64}", topic)
    assert pubsub["persist"] is False  # memory history: nothing durable
    assert pubsub["managed"] is True
    assert pubsub["access_token"] is None  # subscribing is open: no token needed

    stream = await subscribe(f"{broker.url}{API}/{topic}/events")
    plain = await subscribe(f"{broker.url}/subscribe/{topic}")
    event = {"event": {"id": "order-1", "type": "order", "message": {"qty": 2, "name": "é"}}}
    reply = await client.post(f"{broker.url}{API}/{topic}/events", json=event)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"id": "order-1", "events": 1, "subscribers": 2}
    expected = 'id: order-1\nevent: order\ndata: {"qty": 2, "name": "é"}\n\n'.encode()
    assert await stream.next_event() == expected
    assert await plain.next_event() == expected

    read = (await client.get(f"{broker.url}{API}/{topic}")).json()["pubsub"]
    assert (read["subscribers"], read["published"]) == (2, 1)

    # A topic used ad hoc is listed too.
    await client.post(f"{broker.url}/publish/adhoctopic1", content=b"data: x\n")
    listing = (await client.get(broker.url + API)).json()
    assert {p["id"]: p["managed"] for p in listing["pubsubs"]} == {
        topic: True,
        "adhoctopic1": False,
    }
    assert listing["next_cursor"] is None

    reply = await client.delete(f"{broker.url}{API}/{topic}")
    assert reply.status_code == 200
    assert reply.json()["deleted"] is True
    # Its subscribers are told, then their streams end cleanly.
    for ended in (stream, plain):
        assert await ended.next_event() == b'event: deleted\ndata: {"reason": "topic-deleted"}\n\n'
        assert await ended.read_to_end() == b""
    for reply in (
        await client.post(f"{broker.url}{API}/{topic}/events", json={"event": {"message": 1}}),
        await client.post(f"{broker.url}/publish/{topic}", content=b"data: 1\n"),
    ):
        assert reply.status_code == 404
        assert "deleted" in reply.text
    reply = await client.get(f"{broker.url}/subscribe/{topic}")
    assert reply.status_code == 404
    assert (await client.get(f"{broker.url}{API}/{topic}")).status_code == 404
    # Created again (by id), it takes publishes again, with no old history.
    assert (await create(client, broker, {"pubsub": {"id": topic}})).status_code == 201
    reply = await client.get(f"{broker.url}/history/{topic}")
    assert reply.status_code == 200
    assert reply.text == ""
    await broker.stop()


async def test_json_publish_validation(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    broker = await start_broker(nursery, max_body_bytes=1024)
    topic = (await create(client, broker)).json()["pubsub"]["id"]
    url = f"{broker.url}{API}/{topic}/events"
    cases: list[tuple[bytes, dict[str, str], int, str]] = [
        (b"{not json", JSON_HEADERS, 400, "not valid JSON"),
        (b'{"event": {"message": NaN}}', JSON_HEADERS, 400, "not valid JSON"),
        (b"\xff\xfe", JSON_HEADERS, 400, "not valid JSON"),
        (b"[]", JSON_HEADERS, 400, "body must be a JSON object"),
        (b"{}", JSON_HEADERS, 400, "body must be"),
        (b'{"event": {}}', JSON_HEADERS, 400, "event.message is required"),
        (b'{"event": {"message": 1, "colour": 2}}', JSON_HEADERS, 400, "unknown field 'colour'"),
        (b'{"event": {"message": 1, "id": 7}}', JSON_HEADERS, 400, "event.id must be a string"),
        (b'{"event": {"message": 1, "id": "a\\nb"}}', JSON_HEADERS, 400, "CR, LF or NUL"),
        (b'{"event": {"message": 1, "id": ""}}', JSON_HEADERS, 400, "id must not be empty"),
        (b'{"event": {"message": 1, "type": "a\\rb"}}', JSON_HEADERS, 400, "CR, LF or NUL"),
        (b'{"event": {"message": 1}}', {"Content-Type": "text/plain"}, 415, "application/json"),
        (b'{"event": {"message": "' + b"x" * 2000 + b'"}}', JSON_HEADERS, 413, "1024-byte"),
    ]
    for body, headers, status, reason in cases:
        reply = await client.post(url, content=body, headers=headers)
        assert (reply.status_code, reason in reply.text) == (status, True), (body, reply.text)
        assert reply.text.count("\n") == 1  # one line
    ok = {"event": {"id": "same", "message": [1, None, True]}}
    assert (await client.post(url, json=ok)).status_code == 200
    reply = await client.post(url, json=ok)
    assert reply.status_code == 409
    # Unknown and invalid topics.
    reply = await client.post(
        f"{broker.url}{API}/neverused1/events", json={"event": {"message": 1}}
    )
    assert reply.status_code == 404
    assert "not known" in reply.text
    assert (await client.get(f"{broker.url}{API}/short")).status_code == 400
    assert (await client.get(f"{broker.url}{API}/neverused1")).status_code == 404
    assert (await client.delete(f"{broker.url}{API}/neverused1")).status_code == 404
    reply = await client.get(f"{broker.url}{API}/neverused1/events")
    assert reply.status_code == 404
    await broker.stop()


async def test_create_validation(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    broker = await start_broker(nursery, max_topics=3)
    for body, status, reason in [
        ({"pubsub": {"persist": "yes"}}, 400, "persist must be true or false"),
        ({"pubsub": {"persist": True}}, 400, "needs a durable history"),
        ({"pubsub": []}, 400, "pubsub must be a JSON object"),
        ({"pubsub": {"id": "no"}}, 400, "8 to 64"),
        ({"pubsub": {"id": 12345678}}, 400, "pubsub.id must be a string"),
        ({"topic": {}}, 400, "unknown field 'topic'"),
    ]:
        reply = await create(client, broker, body)
        assert (reply.status_code, reason in reply.text) == (status, True), (body, reply.text)
    assert (await create(client, broker, {"pubsub": {"id": "MyTopic123"}})).status_code == 201
    reply = await create(client, broker, {"pubsub": {"id": "mytopic123"}})
    assert reply.status_code == 409
    for _ in range(2):
        assert (await create(client, broker)).status_code == 201
    reply = await create(client, broker)
    assert reply.status_code == 503
    assert "limit of 3 created topics" in reply.text
    await broker.stop()


async def test_list_pages_through_1000_topics(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(nursery)
    created = set()
    for _ in range(600):
        created.add((await create(client, broker)).json()["pubsub"]["id"])
    for n in range(400):
        reply = await client.post(f"{broker.url}/publish/adhoc{n:05d}", content=b"data: x\n")
        assert reply.status_code == 200
        created.add(f"adhoc{n:05d}")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "128", **({"cursor": cursor} if cursor else {})}
        page = (await client.get(broker.url + API, params=params)).json()
        pages += 1
        seen += [p["id"] for p in page["pubsubs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 8  # 1000 / 128, rounded up
    assert seen == sorted(created)
    for bad in ("0", "1001", "x", "²"):
        reply = await client.get(broker.url + API, params={"limit": bad})
        assert reply.status_code == 400
    reply = await client.get(broker.url + API, params={"cursor": "no"})
    assert reply.status_code == 400
    await broker.stop()


async def test_credentials(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe: Any
) -> None:
    broker = await start_broker(
        nursery,
        api_token=API_TOKEN,
        publisher_secret=PUBLISHER_SECRET,
        subscriber_secret=SUBSCRIBER_SECRET,
    )
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    admin = make_token(PUBLISHER_SECRET, "anything1", admin=True)
    plain = make_token(PUBLISHER_SECRET, "anything1")

    reply = await create(client, broker)
    assert reply.status_code == 401
    assert CHALLENGE.match(reply.headers["www-authenticate"])
    assert "a token is required" in reply.headers["www-authenticate"]
    for headers, reason in [
        ({"Authorization": "Bearer wrong"}, "token is invalid"),
        ({"Authorization": f"Bearer {plain}"}, "not an API credential"),
        ({"Authorization": "Basic eDp5"}, "must be 'Bearer <token>'"),
    ]:
        reply = await create(client, broker, **headers)
        assert reply.status_code in (401, 403), reply.text
        assert CHALLENGE.match(reply.headers["www-authenticate"]), reply.headers
        assert reason in reply.text
    reply = await create(client, broker, **bearer)
    assert reply.status_code == 201
    pubsub = reply.json()["pubsub"]
    topic = pubsub["id"]
    assert (await create(client, broker, Authorization=f"Bearer {admin}")).status_code == 201

    # The returned token subscribes, on both routes, as a header or ?access_token=.
    token = pubsub["access_token"]
    assert pubsub["access_token_expires"].endswith("Z")
    await subscribe(f"{broker.url}/subscribe/{topic}?access_token={token}")
    await subscribe(
        f"{broker.url}{API}/{topic}/events", headers={"Authorization": f"Bearer {token}"}
    )
    history = await client.get(f"{broker.url}/history/{topic}", params={"access_token": token})
    assert history.status_code == 200
    other = await client.get(f"{broker.url}/subscribe/othertopic1", params={"access_token": token})
    assert other.status_code == 403
    assert CHALLENGE.match(other.headers["www-authenticate"])

    # JSON publish: an API credential, or the topic's own publisher token.
    url = f"{broker.url}{API}/{topic}/events"
    event = {"event": {"message": "hi"}}
    own = make_token(PUBLISHER_SECRET, topic)
    assert (await client.post(url, json=event)).status_code == 401
    for credential in (API_TOKEN, admin, own):
        reply = await client.post(
            url, json=event, headers={"Authorization": f"Bearer {credential}"}
        )
        assert reply.status_code == 200, reply.text
    reply = await client.post(url, json=event, headers={"Authorization": f"Bearer {plain}"})
    assert reply.status_code == 403
    # Reading the list, and deleting, take an API credential.
    assert (await client.get(broker.url + API)).status_code == 401
    assert (await client.get(broker.url + API, headers=bearer)).status_code == 200
    reply = await client.delete(
        f"{broker.url}{API}/{topic}", headers={"Authorization": f"Bearer {own}"}
    )
    assert reply.status_code == 403
    assert (await client.delete(f"{broker.url}{API}/{topic}", headers=bearer)).status_code == 200
    await broker.stop()


async def test_persist_keeps_history_in_the_durable_store(
    nursery: trio.Nursery, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = tmp_path / "history.db"
    broker = await start_broker(nursery, history=f"sqlite:{path}")
    kept = (await create(client, broker, {"pubsub": {"persist": True}})).json()["pubsub"]
    fleeting = (await create(client, broker, {"pubsub": {"persist": False}})).json()["pubsub"]
    default = (await create(client, broker)).json()["pubsub"]
    assert (kept["persist"], fleeting["persist"], default["persist"]) == (True, False, True)
    for pubsub in (kept, fleeting):
        url = f"{broker.url}{API}/{pubsub['id']}/events"
        assert (
            await client.post(url, json={"event": {"message": pubsub["id"]}})
        ).status_code == 200
        history = await client.get(f"{broker.url}/history/{pubsub['id']}")
        # A string message is the data itself (sser's way).
        assert [json.loads(line)["data"] for line in history.text.splitlines()] == [pubsub["id"]]
    with closing(sqlite3.connect(path)) as db:  # `with` alone leaves it open
        topics = {row[0] for row in db.execute("SELECT DISTINCT topic FROM events")}
    assert topics == {kept["id"]}
    # Deleting a persisted topic deletes its rows.
    assert (await client.delete(f"{broker.url}{API}/{kept['id']}")).status_code == 200
    with closing(sqlite3.connect(path)) as db:  # `with` alone leaves it open
        assert db.execute("SELECT count(*) FROM events").fetchone() == (0,)
    await broker.stop()


async def test_preflight_on_every_api_route(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(nursery, cors_origins=("https://app.example",))
    origin = {"Origin": "https://app.example", "Access-Control-Request-Method": "DELETE"}
    for path, methods in [
        (API, "GET, OPTIONS, POST"),
        (f"{API}/sometopic1", "DELETE, GET, OPTIONS"),
        (f"{API}/sometopic1/events", "GET, OPTIONS, POST"),
        ("/history/sometopic1", "GET, OPTIONS"),
        ("/metrics", "GET, OPTIONS"),
        ("/ready", "GET, OPTIONS"),
    ]:
        reply = await client.options(broker.url + path, headers=origin)
        assert reply.status_code == 204, path
        assert reply.headers["access-control-allow-origin"] == "https://app.example"
        assert reply.headers["access-control-allow-methods"] == methods
    with trio.fail_after(STEP_SECONDS):
        await broker.stop()


async def test_sser_sdk_requests_and_fields(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe: Any
) -> None:
    """What sser's JavaScript SDK does, request for request: create a pubsub
    with the API token, subscribe with the answer's ``token`` field as a
    bearer token, publish a string message and an object; the string arrives
    as its text, the object as JSON."""
    broker = await start_broker(
        nursery,
        api_token=API_TOKEN,
        publisher_secret=PUBLISHER_SECRET,
        subscriber_secret=SUBSCRIBER_SECRET,
    )
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    created = await client.post(f"{broker.url}{API}", json={}, headers=bearer)
    assert created.status_code == 201, created.text
    pubsub = created.json()["pubsub"]
    assert pubsub["token"] == pubsub["access_token"] is not None
    url = f"{broker.url}{API}/{pubsub['id']}/events"
    stream = await subscribe(url, headers={"Authorization": f"Bearer {pubsub['token']}"})
    for message in ("Hello World!", "two\nlines", {"text": "Hello"}):
        sent = await client.post(url, json={"event": {"message": message}}, headers=bearer)
        assert sent.status_code == 200, sent.text
    frames = [await stream.next_event() for _ in range(3)]
    data = [[line for line in f.decode().splitlines() if line.startswith("data")] for f in frames]
    assert data == [
        ["data: Hello World!"],
        ["data: two", "data: lines"],
        ['data: {"text": "Hello"}'],
    ]
    await broker.stop()
