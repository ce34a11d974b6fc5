"""Slow readers among many (issue 10, point 10), through a real broker.

test_broker.py's test_slow_subscriber_is_dropped_others_keep_receiving has
one reader and one stalled subscriber. Here: 20 readers and 5 stalled
subscribers on one topic, 300 events of ~1 KB published as fast as the
broker answers. Every reader gets all 300, exactly and in order; each stalled
one is dropped once its queue (``queue_events=20``) is full, and what it was
sent before is an in-order prefix of the stream; no publish is refused or
waits on the stalled ones. benchmarks/slow_readers.py measures the same at
1,000 readers and 100 stalled ones (latency, memory).
"""

from __future__ import annotations

import re
import socket

import httpx
import trio

from tests.conftest import STEP_SECONDS, TOPIC, Broker, SSEStream, start_broker, wait_for_stats

READERS = 20
STALLED = 5
EVENTS = 300
QUEUE = 20
#: ~1 KB of data per event.
PAD = "x" * 1000
#: A publish must be answered within this, stalled subscribers or not: well
#: under the write timeout (10 s) a publish held by a stalled reader would
#: wait, and loose enough for a loaded CI machine (not a speed target: those
#: are in benchmarks/slow_readers.py).
PUBLISH_BOUND_S = 5.0
#: A receive buffer this small fills after a few events, so the broker's
#: writes to the subscriber stop and its queue fills.
STALLED_RCVBUF = 2048


async def _stalled(broker: Broker) -> trio.socket.SocketType:
    """A subscriber with a tiny receive buffer (set before connecting, so the
    window it advertises is small from the start) that reads the response
    head and then never reads again."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    await sock.connect(broker.host_port)
    await sock.send(f"GET /subscribe/{TOPIC} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    with trio.fail_after(STEP_SECONDS):
        while b"\r\n\r\n" not in head:
            data = await sock.recv(1)  # the head only: nothing after it is read
            assert data, head
            head += data
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


async def _read_events(stream: SSEStream, into: list[bytes]) -> None:
    while len(into) < EVENTS:
        into.append(await stream.next_event())


async def _drain(sock: trio.socket.SocketType, timeout: float = 5.0) -> bytes:
    """Whatever the broker had sent ``sock`` before it dropped it, to the end."""
    data = b""
    with trio.move_on_after(timeout):
        try:
            while chunk := await sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


async def test_stalled_subscribers_are_dropped_readers_get_every_event_in_order(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe
) -> None:
    broker = await start_broker(nursery, queue_events=QUEUE)
    url = f"{broker.url}/subscribe/{TOPIC}"
    readers: list[SSEStream] = [await subscribe(url) for _ in range(READERS)]
    stalled = [await _stalled(broker) for _ in range(STALLED)]
    await wait_for_stats(client, broker, clients=READERS + STALLED)

    received: list[list[bytes]] = [[] for _ in readers]
    ids: list[str] = []
    slowest = 0.0
    with trio.fail_after(30):
        async with trio.open_nursery() as reading:
            for stream, events in zip(readers, received, strict=True):
                reading.start_soon(_read_events, stream, events)
            for n in range(EVENTS):
                start = trio.current_time()
                reply = await client.post(
                    f"{broker.url}/publish/{TOPIC}", content=f"data: {n} {PAD}\n"
                )
                slowest = max(slowest, trio.current_time() - start)
                assert reply.status_code == 200, reply.text
                ids.append(reply.json()["id"])
    assert slowest < PUBLISH_BOUND_S, f"a publish took {slowest:.3f} s"

    expected = [f"id: {i}\ndata: {n} {PAD}\n\n".encode() for n, i in enumerate(ids)]
    for events in received:  # all of them, exactly, in order
        assert events == expected

    stats = await wait_for_stats(client, broker, clients=READERS, dropped=STALLED)
    assert stats["published"] == EVENTS

    # Each stalled subscriber's stream was cut (no terminating chunk): what it
    # got is the stream's first k events, in order, with k short of the end.
    for sock in stalled:
        with sock:
            data = await _drain(sock)
        assert not data.endswith(b"\r\n0\r\n\r\n")
        seen = [int(n) for n in re.findall(rb"data: (\d+) x{1000}\n", data)]
        assert seen == list(range(len(seen)))
        assert len(seen) <= EVENTS - QUEUE

    # The readers are still live: one more event reaches every one of them.
    reply = await client.post(f"{broker.url}/publish/{TOPIC}", content="data: after\n")
    assert reply.status_code == 200
    for stream in readers:
        assert (await stream.next_event()).endswith(b"data: after\n\n")
    await broker.stop()
