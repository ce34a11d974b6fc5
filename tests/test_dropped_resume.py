"""A subscriber dropped for being slow resumes without loss, with the default
settings (issue 22, point 11): ``--queue`` (100 events) is well below
``--history-events`` (1000), so what it missed is still in history when it
reconnects with ``Last-Event-ID`` (docs/behaviour.md states the rule).

Through a real broker with its defaults, on both lanes: a subscriber that
stops reading (a paused tab) is dropped, more is published while it is away,
and its reconnect gets every event after the last one it had, no reset.
"""

from __future__ import annotations

import re

import trio

from trio_esper.config import Config

from .conftest import STEP_SECONDS, start_broker
from .rawhttp import Raw, open_subscriber, publish, request, stats

TOPIC = "pausedtab01"
#: Events of about 1 KB: the event bound (--queue), not the byte bound, fills first.
PAD = "p" * 1000
#: A receive buffer this small fills after a couple of events.
STALLED_RCVBUF = 2048
#: Published while the dropped subscriber is away.
WHILE_AWAY = 200
FRAME = re.compile(rb"id: ([^\n]*)\ndata: (\d+) p{1000}\n\n")


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body's data, up to its last whole chunk (a
    dropped stream is cut without its last chunk)."""
    data, at = bytearray(), 0
    while (line_end := body.find(b"\r\n", at)) != -1:
        size = int(body[at:line_end], 16)
        start = line_end + 2
        if size == 0 or start + size + 2 > len(body):
            break
        data += body[start : start + size]
        at = start + size + 2
    return bytes(data)


async def _drain(raw: Raw) -> bytes:
    """What the broker sent before it dropped the subscriber: read until
    the connection ends or its stream does (the Quart lane may end it with
    its last chunk and keep the connection)."""
    with trio.fail_after(STEP_SECONDS):
        while not raw.eof and not raw.received.endswith(b"\r\n0\r\n\r\n"):
            await raw._receive()
    return bytes(raw.received).partition(b"\r\n\r\n")[2]  # the body


async def test_a_dropped_subscriber_resumes_without_loss_with_the_defaults(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    defaults = Config()
    assert defaults.queue_events < defaults.history_events  # the rule, as configured
    broker = await start_broker(nursery, fast_lane=fast_lane)
    paused = await open_subscriber(broker, TOPIC, receive_buffer=STALLED_RCVBUF)
    ids: list[str] = []
    with trio.fail_after(60):
        while (await stats(broker))["dropped"] == 0:
            reply = await publish(broker, TOPIC, f"data: {len(ids)} {PAD}\n".encode())
            ids.append(str(reply["id"]))
            assert len(ids) < defaults.history_events, "never dropped"
        for _ in range(WHILE_AWAY):
            reply = await publish(broker, TOPIC, f"data: {len(ids)} {PAD}\n".encode())
            ids.append(str(reply["id"]))

    # What the paused tab had before the drop: a prefix of the stream.
    had = FRAME.findall(dechunk(await _drain(paused)))
    await paused.aclose()
    assert [int(n) for _, n in had] == list(range(len(had)))
    assert [i.decode() for i, _ in had] == ids[: len(had)]
    last = had[-1][0].decode() if had else None

    # It reconnects (as EventSource does) and gets everything after it.
    async with await Raw.connect(broker) as resumed:
        resume = () if last is None else (f"Last-Event-ID: {last}",)
        await resumed.send(request("GET", f"/subscribe/{TOPIC}", None, *resume))
        head = await resumed.read_response(body=False)
        assert head.status == 200, head
        got: list[tuple[bytes, bytes]] = []
        with trio.fail_after(STEP_SECONDS):
            while len(got) < len(ids) - len(had):
                await resumed._receive()
                got = FRAME.findall(dechunk(resumed.buffer))
        assert b"event: reset" not in dechunk(resumed.buffer)
    assert [i.decode() for i, _ in got] == ids[len(had) :]
    assert [int(n) for _, n in got] == list(range(len(had), len(ids)))
    await broker.stop()
