"""A hostile review of the backplane's lean RESP connection
(trio_esper/history/resp.py): replies no Redis sends but a broken or hostile
server could, and the cost of a long reply that arrives in many pieces."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
import trio

from trio_esper.history import resp

from .conftest import STEP_SECONDS
from .test_resp import connection_to, fake_redis

pytestmark = pytest.mark.slow


def sending(reply: bytes) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A fake server's answer: ``reply`` to the first command, then nothing."""

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(reply)
        await trio.sleep_forever()

    return answer


@pytest.mark.parametrize(
    "sent",
    [
        # Deeper than Python's recursion limit: parsing it recursively raised
        # RecursionError, which no caller catches (the writer's task died).
        pytest.param(b"*1\r\n" * 5000 + b":1\r\n", id="nested-too-deep"),
        # A bulk string not ended by CRLF: what follows is out of step.
        pytest.param(b"$3\r\nabcXY+OK\r\n", id="bulk-without-its-crlf"),
    ],
)
async def test_a_malformed_reply_ends_the_connection_not_the_caller(sent: bytes) -> None:
    async with fake_redis(sending(sent)) as url, connection_to(url) as connection:
        with trio.fail_after(STEP_SECONDS), pytest.raises(resp.ConnectionLostError):
            await connection.call("ANY")


def xrange_reply(entries: int) -> tuple[bytes, list[object]]:
    """An XRANGE reply of ``entries`` entries of five fields, and its value."""
    fields = [b"f%d" % n if n % 2 == 0 else b"v" * 20 for n in range(10)]
    entry = [b"1700000000000-0", fields]
    wire = resp.encode(tuple(fields))  # an array of bulk strings
    one = b"*2\r\n$15\r\n1700000000000-0\r\n" + wire
    return b"*%d\r\n" % entries + one * entries, [entry] * entries


async def test_a_long_reply_in_many_pieces_is_parsed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A reader's XRANGE of many entries arrives in many receives (on a real
    # network, one per segment). Each receive re-parsing the reply from its
    # start made it quadratic: seconds of the event loop for one read.
    reply, value = xrange_reply(1000)

    async def ok_then_reply(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"+OK\r\n")
        await sending(reply)(stream)

    async def cpu_seconds_to_read(receive_bytes: int) -> float:
        monkeypatch.setattr(resp, "RECEIVE_BYTES", receive_bytes)
        async with fake_redis(ok_then_reply) as url, connection_to(url) as connection:
            assert await connection.call("FIRST") == "OK"  # connected: the reply alone is timed
            start = time.process_time()
            with trio.fail_after(STEP_SECONDS * 10):
                assert await connection.call("ANY") == value
            return time.process_time() - start

    whole = min([await cpu_seconds_to_read(len(reply) * 2) for _ in range(3)])
    pieces = len(reply) // 512
    in_pieces = await cpu_seconds_to_read(512)
    # In pieces it costs the receives more, not a parse per piece.
    assert in_pieces < 20 * whole + 0.0002 * pieces, (in_pieces, whole, pieces)
