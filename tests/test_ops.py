"""The operators' routes through a real broker: /metrics (parsed with
prometheus-client's own parser), /health, /ready, and the statistics stream."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trio_esper.metrics import FANOUT_BUCKETS, LATENCY_BUCKETS, _Histogram

from .conftest import STEP_SECONDS, Broker, make_token, start_broker

METRICS_TOKEN = "metrics-token-for-the-tests-0123"
API_TOKEN = "api-token-for-the-ops-tests-01234"
PUBLISHER_SECRET = "publisher-secret-for-the-ops-tests"


async def scrape(client: httpx.AsyncClient, broker: Broker, **headers: str) -> dict[str, Any]:
    """Every sample of /metrics: {(name, sorted labels): value}."""
    reply = await client.get(f"{broker.url}/metrics", headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.mark.parametrize("buckets", [LATENCY_BUCKETS, FANOUT_BUCKETS], ids=["latency", "fanout"])
def test_publish_histograms_expose_as_prometheus_client_does(buckets: tuple[float, ...]) -> None:
    # The hot path's histogram against prometheus-client's own, the same
    # observations (bounds exactly, between, below and above them): the same
    # exposition but for the creation time.
    reference_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("x_seconds", "Help.", buckets=buckets, registry=reference_registry)
    ours = _Histogram("x_seconds", "Help.", buckets)
    ours_registry.register(ours)
    for observed in [*buckets, *(b + 0.00001 for b in buckets), -1, 0, 0.5, 10**9]:
        reference.observe(observed)
        ours.observe(observed)

    def exposition(registry: CollectorRegistry) -> list[str]:
        lines = generate_latest(registry).decode().splitlines()
        return [line for line in lines if not line.startswith("x_seconds_created ")]

    assert exposition(ours_registry) == exposition(reference_registry)
    assert "x_seconds_created " in generate_latest(ours_registry).decode()


def test_publish_histograms_follow_the_created_series_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prometheus-client's documented switch (it reads it at import, so its
    # own Histogram cannot be compared here).
    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
    registry = CollectorRegistry()
    registry.register(_Histogram("x_seconds", "Help.", LATENCY_BUCKETS))
    text = generate_latest(registry).decode()
    assert "x_seconds_bucket" in text
    assert "_created" not in text


async def test_metrics_move_as_events_flow(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe: Any
) -> None:
    broker = await start_broker(nursery)
    before = await scrape(client, broker)
    assert value(before, "trio_esper_events_published_total") == 0
    streams = [await subscribe(f"{broker.url}/subscribe/metricstopic1") for _ in range(2)]
    for n in range(5):
        reply = await client.post(f"{broker.url}/publish/metricstopic1", content=b"data: %d\n" % n)
        assert reply.status_code == 200
    for stream in streams:
        for _ in range(5):
            await stream.next_event()
    assert (await client.get(f"{broker.url}/history/short")).status_code == 400
    after = await scrape(client, broker)
    assert value(after, "trio_esper_events_published_total") == 5
    assert value(after, "trio_esper_events_delivered_total") == 10
    assert value(after, "trio_esper_subscriptions") == 2
    assert value(after, "trio_esper_topics") == 1
    assert value(after, "trio_esper_known_topics") == 1
    assert value(after, "trio_esper_connections") >= 1
    assert value(after, "trio_esper_history_events") == 5
    assert value(after, "trio_esper_publish_duration_seconds_count") == 5
    assert value(after, "trio_esper_publish_fanout_subscribers_sum") == 10
    assert value(after, "trio_esper_http_errors_total", status="400") == 1
    assert value(after, "trio_esper_connection_errors_total", kind="failure") == 0
    await broker.stop()


def _pipelined_publishes(port: int, topics: list[str]) -> int:
    """Publish one event to each of ``topics`` over one connection, the
    requests pipelined; the number of 200 answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=STEP_SECONDS) as sock:
        requests = b"".join(
            b"POST /publish/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\ndata: x\n"
            % topic.encode()
            for topic in topics
        )
        sock.sendall(requests)
        received = b""
        while received.count(b"HTTP/1.1 ") < len(topics):
            chunk = sock.recv(1 << 16)
            assert chunk, "the broker closed the connection"
            received += chunk
    return received.count(b"HTTP/1.1 200 ")


async def test_label_sets_stay_fixed_across_10000_topics(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(nursery)
    port = broker.host_port[1]
    assert await trio.to_thread.run_sync(_pipelined_publishes, port, ["warmuptopic1"]) == 1
    before = await scrape(client, broker)
    topics = [f"cardinality{n:05d}" for n in range(10_000)]
    for start in range(0, len(topics), 1000):
        batch = topics[start : start + 1000]
        assert await trio.to_thread.run_sync(_pipelined_publishes, port, batch) == len(batch)
    after = await scrape(client, broker)
    assert set(after) == set(before)  # the same series: no label per topic
    assert value(after, "trio_esper_events_published_total") == 10_001
    assert value(after, "trio_esper_known_topics") == 10_001
    await broker.stop()


async def test_metrics_token(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    broker = await start_broker(
        nursery,
        metrics_token=METRICS_TOKEN,
        api_token=API_TOKEN,
        publisher_secret=PUBLISHER_SECRET,
    )
    reply = await client.get(f"{broker.url}/metrics")
    assert reply.status_code == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    reply = await client.get(f"{broker.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert reply.status_code == 403
    for token in (METRICS_TOKEN, API_TOKEN, make_token(PUBLISHER_SECRET, "anytopic1")):
        await scrape(client, broker, Authorization=f"Bearer {token}")
        reply = await client.get(f"{broker.url}/stats", params={"access_token": token})
        assert reply.status_code == 200
    # The metrics token is not an API credential.
    reply = await client.get(
        f"{broker.url}/api/v1/pubsubs", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert reply.status_code == 403
    # Health and readiness need no credential (load balancers ask them).
    assert (await client.get(f"{broker.url}/health")).json()["status"] == "ok"
    assert (await client.get(f"{broker.url}/ready")).status_code == 200
    await broker.stop()


async def test_ready_follows_the_history_store(
    nursery: trio.Nursery, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = tmp_path / "history.db"
    broker = await start_broker(nursery, history=f"sqlite:{path}")

    async def ready_until(status: int) -> dict[str, Any]:
        with trio.fail_after(STEP_SECONDS):
            while True:
                reply = await client.get(f"{broker.url}/ready")
                if reply.status_code == status:
                    return dict(reply.json())
                await trio.sleep(0.1)

    assert await ready_until(200) == {"status": "ready"}
    os.rename(path, tmp_path / "moved.db")  # the store no longer takes writes
    answer = await ready_until(503)
    assert answer["status"] == "not ready"
    assert "removed or replaced" in answer["reason"]
    assert (await client.get(f"{broker.url}/health")).status_code == 200  # alive all the same
    os.rename(tmp_path / "moved.db", path)
    assert await ready_until(200) == {"status": "ready"}
    await broker.stop()


async def test_stats_stream_sends_snapshots_and_ends_at_shutdown(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe: Any
) -> None:
    broker = await start_broker(nursery)
    stream = await subscribe(f"{broker.url}/stats/stream")
    first = await stream.next_event()
    assert first.startswith(b"event: stats\ndata: ")
    await subscribe(f"{broker.url}/subscribe/streamtopic1")
    for _ in range(3):
        reply = await client.post(f"{broker.url}/publish/streamtopic1", content=b"data: x\n")
        assert reply.status_code == 200
    with trio.fail_after(STEP_SECONDS):
        while True:
            snapshot = json.loads((await stream.next_event()).split(b"data: ", 1)[1])
            if snapshot["published"] == 3 and snapshot["busiest"]:
                break
    assert snapshot["clients"] == 1
    assert snapshot["busiest"][0]["id"] == "streamtopic1"
    assert snapshot["busiest"][0]["subscribers"] == 1
    broker.shutdown.set()
    assert (await stream.read_to_end()).count(b"event: stats") <= 1
    await broker.stop()


#: Routes Hypercorn answers on either lane (the fast forms decline them).
HYPERCORN_ROUTES = ["/health", "/stats", "/history/closingtopic1", "/metrics", "/openapi.json"]
#: Long enough that a socket held for the keep-alive wait outlasts the test's bound.
LONG_KEEP_ALIVE_SECONDS = 60.0


async def read_answer(stream: trio.SocketStream) -> bytes:
    """One answer, with a ``content-length`` or chunked (``/history``): its
    head and its whole body."""
    received = b""
    with trio.fail_after(STEP_SECONDS):
        while b"\r\n\r\n" not in received:
            chunk = await stream.receive_some()
            assert chunk, received
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        match = re.search(rb"\r\ncontent-length: (\d+)", head, re.IGNORECASE)
        chunked = re.search(rb"\r\ntransfer-encoding: chunked", head, re.IGNORECASE)
        assert match or chunked, head
        while len(body) < int(match.group(1)) if match else not body.endswith(b"0\r\n\r\n"):
            chunk = await stream.receive_some()
            assert chunk, head
            body += chunk
    return head


async def open_connections(probe: httpx.AsyncClient, broker: Broker) -> int:
    """The broker's ``trio_esper_connections`` gauge (the probe's own included)."""
    samples = await scrape(probe, broker)
    return int(value(samples, "trio_esper_connections"))


@pytest.mark.parametrize("path", HYPERCORN_ROUTES)
async def test_a_connection_closes_when_its_client_does(
    nursery: trio.Nursery, fast_lane: bool, path: str
) -> None:
    # Issue 22, point 13: a client that reads its answer and closes leaves no
    # socket behind in CLOSE-WAIT for the keep-alive wait.
    broker = await start_broker(
        nursery, fast_lane=fast_lane, keep_alive_seconds=LONG_KEEP_ALIVE_SECONDS
    )
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as probe:
        alone = await open_connections(probe, broker)  # the probe's keep-alive connection
        for _ in range(3):
            stream = await trio.open_tcp_stream(*broker.host_port)
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await read_answer(stream)).startswith(b"HTTP/1.1 200 ")
            # The broker waits for the next request by now (a client that
            # closes at once may meet it before: that case closed already).
            await trio.sleep(0.2)
            assert await open_connections(probe, broker) == alone + 1
            await stream.aclose()
            start = trio.current_time()
            with trio.move_on_after(STEP_SECONDS):
                while await open_connections(probe, broker) > alone:
                    await trio.sleep(0.02)
            held = trio.current_time() - start
            assert held < STEP_SECONDS, f"{path}: the broker held the socket {held:.1f} s"
    await broker.stop()
