"""History through the server, on both lanes: resume by Last-Event-ID, /history,
plain publishing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import STEP_SECONDS, TOPIC, Broker, start_broker, wait_for_stats


@pytest.fixture(params=["memory", "sqlite"])
async def history_broker(
    request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path, fast_lane: bool
) -> Broker:
    spec = "memory" if request.param == "memory" else f"sqlite:{tmp_path / 'history.db'}"
    # The broker shares this process's event loop with up to 100 test clients,
    # whose start-up can keep a publisher from running for longer than the
    # default 5 s keep-alive; its next request would then meet a closed socket.
    return await start_broker(nursery, fast_lane=fast_lane, history=spec, keep_alive_seconds=120)


async def publish(client: httpx.AsyncClient, broker: Broker, body: str, **kw: object) -> str:
    reply = await client.post(f"{broker.url}/publish/{TOPIC}", content=body.encode(), **kw)  # type: ignore[arg-type]
    assert reply.status_code == 200, reply.text
    event_id: str = reply.json()["id"]
    return event_id


async def test_resume_with_last_event_id_header(
    history_broker: Broker, client: httpx.AsyncClient, subscribe
) -> None:
    broker = history_broker
    ids = [await publish(client, broker, f"data: {n}\n") for n in range(5)]
    stream = await subscribe(f"{broker.url}/subscribe/{TOPIC}", headers={"Last-Event-ID": ids[1]})
    for n in (2, 3, 4):
        assert await stream.next_event() == f"id: {ids[n]}\ndata: {n}\n\n".encode()
    live = await publish(client, broker, "data: live\n")
    assert await stream.next_event() == f"id: {live}\ndata: live\n\n".encode()


async def test_resume_with_query_and_since_earliest(
    history_broker: Broker, client: httpx.AsyncClient, subscribe
) -> None:
    broker = history_broker
    ids = [await publish(client, broker, f"id: e{n}\ndata: {n}\n") for n in range(3)]
    assert ids == ["e0", "e1", "e2"]
    by_query = await subscribe(f"{broker.url}/subscribe/{TOPIC}?lastEventId=e0")
    assert await by_query.next_event() == b"id: e1\ndata: 1\n\n"
    everything = await subscribe(f"{broker.url}/subscribe/{TOPIC}?since=earliest")
    assert [await everything.next_event() for _ in range(3)] == [
        f"id: e{n}\ndata: {n}\n\n".encode() for n in range(3)
    ]


async def test_unknown_last_event_id_sends_reset_then_everything(
    history_broker: Broker, client: httpx.AsyncClient, subscribe
) -> None:
    broker = history_broker
    await publish(client, broker, "id: a1\ndata: x\n")
    stream = await subscribe(f"{broker.url}/subscribe/{TOPIC}", headers={"Last-Event-ID": "gone"})
    assert await stream.next_event() == (
        b'event: reset\ndata: {"reason": "unknown-last-event-id"}\n\n'
    )
    assert await stream.next_event() == b"id: a1\ndata: x\n\n"


async def test_duplicate_publisher_id_is_409_and_not_delivered(
    history_broker: Broker, client: httpx.AsyncClient, subscribe
) -> None:
    broker = history_broker
    stream = await subscribe(f"{broker.url}/subscribe/{TOPIC}")
    await publish(client, broker, "id: same\ndata: first\n")
    reply = await client.post(f"{broker.url}/publish/{TOPIC}", content=b"id: same\ndata: again\n")
    assert reply.status_code == 409
    assert reply.text.count("\n") == 1
    await publish(client, broker, "id: other\ndata: next\n")
    assert await stream.next_event() == b"id: same\ndata: first\n\n"
    assert await stream.next_event() == b"id: other\ndata: next\n\n"


async def test_plain_text_publishing(broker: Broker, client: httpx.AsyncClient, subscribe) -> None:
    stream = await subscribe(f"{broker.url}/subscribe/{TOPIC}")
    reply = await client.post(
        f"{broker.url}/publish/{TOPIC}?event=note&id=p1",
        content=b"line one\ndata: not a field\n",
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    assert reply.json()["id"] == "p1"
    assert (
        await stream.next_event()
        == b"id: p1\nevent: note\ndata: line one\ndata: data: not a field\n\n"
    )
    bad = await client.post(
        f"{broker.url}/publish/{TOPIC}?event=a%0Ab",
        content=b"x",
        headers={"Content-Type": "text/plain"},
    )
    assert bad.status_code == 400
    mixed = await client.post(f"{broker.url}/publish/{TOPIC}?event=a", content=b"data: x\n")
    assert mixed.status_code == 400
    assert "text/plain" in mixed.text


async def test_retry_hint_at_stream_start(
    nursery: trio.Nursery, fast_lane: bool, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, retry_ms=2500)
    async with client.stream("GET", f"{broker.url}/subscribe/{TOPIC}") as response:
        chunks = response.aiter_raw()
        data = b""
        with trio.fail_after(5):
            while b"retry: 2500\n\n" not in data:
                data += await chunks.__anext__()
        await chunks.aclose()  # type: ignore[attr-defined]
    assert data == b": subscribed\n\nretry: 2500\n\n"


async def test_history_endpoint_formats(history_broker: Broker, client: httpx.AsyncClient) -> None:
    broker = history_broker
    await publish(client, broker, "id: h1\nevent: t\ndata: a\ndata: b\n")
    await publish(client, broker, "id: h2\ndata: tab\there\\\n")
    url = f"{broker.url}/history/{TOPIC}"
    ndjson = await client.get(url)
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in ndjson.text.splitlines()]
    assert [(r["id"], r["event"], r["data"]) for r in rows] == [
        ("h1", "t", "a\nb"),
        ("h2", None, "tab\there\\"),
    ]
    assert all(isinstance(r["time"], float) for r in rows)
    tsv = await client.get(url, headers={"Accept": "text/tab-separated-values"})
    assert tsv.headers["content-type"].startswith("text/tab-separated-values")
    lines = tsv.text.splitlines()
    assert lines[0] == "id\tevent\ttime\tdata"
    assert lines[1].split("\t")[:2] == ["h1", "t"]
    assert lines[1].split("\t")[3] == "a\\nb"
    assert lines[2].split("\t")[3] == "tab\\there\\\\"
    after = await client.get(url, params={"after": "h1", "limit": "1"})
    assert [json.loads(x)["id"] for x in after.text.splitlines()] == ["h2"]
    assert (await client.get(url, params={"after": "nope"})).status_code == 404
    assert (await client.get(url, params={"limit": "0"})).status_code == 400
    assert (await client.get(url, headers={"Accept": "image/png"})).status_code == 406
    stats = await wait_for_stats(client, broker)
    assert stats["history"]["events"] == 2
    assert stats["history"]["topics"] == 1
    assert stats["history"]["backend"] in ("memory", "sqlite")
    assert stats["history"]["bytes"] > 0


@pytest.mark.both_lanes_in_full  # 200 publishes, 100 resuming subscribers: seconds each
async def test_seam_between_replay_and_live_under_concurrent_publishing(
    history_broker: Broker, client: httpx.AsyncClient
) -> None:
    """100 subscribers resume from different ids while a publisher keeps
    publishing; each must end with a gapless, duplicate-free sequence."""
    broker = history_broker
    total, resumers = 200, 100
    ids: list[str] = []
    started = trio.Event()

    async def publisher() -> None:
        async with httpx.AsyncClient(timeout=10) as pub:
            for n in range(total):
                ids.append(await publish(pub, broker, f"data: {n}\n"))
                if n == 50:
                    started.set()

    results: dict[int, list[int]] = {}

    async def resumer(k: int) -> None:
        await started.wait()
        start = k % 50  # resume after event `start`
        async with (
            httpx.AsyncClient(timeout=30) as sub,
            sub.stream(
                "GET", f"{broker.url}/subscribe/{TOPIC}", headers={"Last-Event-ID": ids[start]}
            ) as response,
        ):
            seen: list[int] = []
            buffer = b""
            chunks = response.aiter_raw()
            while not seen or seen[-1] < total - 1:
                buffer += await chunks.__anext__()
                *frames, buffer = buffer.split(b"\n\n")
                seen += [
                    int(line[6:])
                    for f in frames
                    for line in f.split(b"\n")
                    if line.startswith(b"data: ")
                ]
            await chunks.aclose()  # type: ignore[attr-defined]
            results[k] = [start, *seen]

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            for k in range(resumers):
                nursery.start_soon(resumer, k)
    assert len(results) == resumers
    for start_and_seen in results.values():
        start, *seen = start_and_seen
        assert seen == list(range(start + 1, total))


@pytest.mark.parametrize("last_id", ["événement-1", "事件-2"])
async def test_utf8_last_event_id_resumes(
    nursery: trio.Nursery, fast_lane: bool, last_id: str
) -> None:
    # WHATWG: the browser sends the last event id as UTF-8 bytes in the header.
    broker = await start_broker(nursery, fast_lane=fast_lane)
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        for body in (f"id: {last_id}\ndata: seen\n", "id: next-1\ndata: missed\n"):
            reply = await client.post(f"{broker.url}/publish/{TOPIC}", content=body.encode())
            assert reply.status_code == 200, reply.text
    stream = await trio.open_tcp_stream(*broker.host_port)
    async with stream:
        await stream.send_all(
            f"GET /subscribe/{TOPIC} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Last-Event-ID: "
            + last_id.encode("utf-8")
            + b"\r\n\r\n"
        )
        received = b""
        with trio.fail_after(STEP_SECONDS):
            while b"data: missed" not in received:
                received += await stream.receive_some()
    assert b"event: reset" not in received
    assert b"data: seen" not in received
    await broker.stop()
