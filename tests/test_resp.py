"""The backplane's lean RESP connection (trio_esper/history/resp.py) against
real redis-servers and hostile fake ones: what each failure means for a
publish (never sent, or maybe run), logging in, databases, Unix sockets,
a Redis that forgot the script, and replies cut anywhere."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path

import coredis
import pytest
import trio

from trio_esper.history import Record
from trio_esper.history import redis as redis_history
from trio_esper.history.redis import KEY_PREFIX, open_redis_history
from trio_esper.history.resp import (
    ConnectionLostError,
    NotSentError,
    RespError,
    encode,
)
from trio_esper.sse import Event

from .conftest import STEP_SECONDS, RedisServer, free_port, running_redis, stalled
from .redisclient import connection_to, deliver, fake_redis

pytestmark = pytest.mark.slow


async def test_commands_and_replies_of_every_kind(redis_dir: Path) -> None:
    with running_redis(redis_dir) as redis:
        async with connection_to(redis.url) as connection:
            assert await connection.call("PING") == "PONG"
            assert await connection.call("SET", "key", "välue\r\n$3") == "OK"
            assert await connection.call("GET", "key") == "välue\r\n$3".encode()
            assert await connection.call("GET", "missing") is None
            assert await connection.call("RPUSH", "list", "a", b"\x00b") == 2
            assert await connection.call("LRANGE", "list", "0", "-1") == [b"a", b"\x00b"]
            assert await connection.call("EVAL", "return {1, {'x'}, false}", "0") == [
                1,
                [b"x"],
                None,
            ]
            with pytest.raises(RespError) as error:
                await connection.call("NOSUCHCOMMAND")
            assert error.value.message.startswith("ERR unknown command")
            # An error reply leaves the connection in step.
            assert await connection.call("PING") == "PONG"
            big = "x" * 300_000  # more than one receive
            assert await connection.call("SET", "big", big) == "OK"
            assert await connection.call("GET", "big") == big.encode()


async def test_a_connection_found_closed_before_sending_is_never_sent(redis_dir: Path) -> None:
    with running_redis(redis_dir) as redis:
        async with connection_to(redis.url) as connection:
            assert await connection.call("PING") == "PONG"
            redis.kill()
            await trio.sleep(0.1)  # the peer's end has arrived
            with pytest.raises(NotSentError, match="cannot connect"):
                await connection.call("SET", "key", "value")
            # And after Redis is back, the same connection object connects again.
            redis.start()
            assert await connection.call("PING") == "PONG"


async def test_a_connection_lost_while_waiting_may_have_run_the_command(
    redis_dir: Path,
) -> None:
    with running_redis(redis_dir) as redis:
        async with connection_to(redis.url) as connection:
            assert await connection.call("PING") == "PONG"
            outcome: list[BaseException] = []

            async def call() -> None:
                try:
                    await connection.call("SET", "key", "value")
                except Exception as exc:
                    outcome.append(exc)

            assert redis.process is not None
            async with trio.open_nursery() as nursery:
                redis.process.send_signal(signal.SIGSTOP)
                nursery.start_soon(call)
                await trio.sleep(0.2)  # sent, not answered
                redis.kill()
            assert len(outcome) == 1
            assert isinstance(outcome[0], ConnectionLostError), outcome
            assert not isinstance(outcome[0], NotSentError)


async def test_a_refused_connection_is_never_sent() -> None:
    async with connection_to(f"redis://127.0.0.1:{free_port()}/0") as connection:
        with pytest.raises(NotSentError, match=r"ConnectionRefused|OSError"):
            await connection.call("PING")


async def test_a_cancelled_call_leaves_no_reply_for_the_next(redis_dir: Path) -> None:
    with running_redis(redis_dir) as redis:
        async with connection_to(redis.url) as connection:
            await connection.call("SET", "key", "first")
            with trio.move_on_after(0.2) as scope, stalled(redis):
                await connection.call("GET", "key")
            assert scope.cancelled_caught
            await connection.call("SET", "key", "second")
            # Each reply is its own command's, not the cancelled GET's.
            assert await connection.call("GET", "key") == b"second"


async def test_password_database_and_a_wrong_password(redis_dir: Path) -> None:
    redis = RedisServer(free_port(), str(redis_dir), password="s3cret")
    redis.start()
    try:
        async with connection_to(f"redis://:s3cret@127.0.0.1:{redis.port}/3") as connection:
            await connection.call("SET", "in-three", "yes")
        probe = coredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{redis.port}/3")
        async with probe:
            assert await probe.get("in-three") == b"yes"
        async with connection_to(f"redis://:wrong@127.0.0.1:{redis.port}/0") as connection:
            with pytest.raises(NotSentError, match=r"WRONGPASS|invalid"):
                await connection.call("PING")
        async with connection_to(f"redis://127.0.0.1:{redis.port}/0") as connection:
            with pytest.raises(NotSentError, match="NOAUTH"):
                await connection.call("PING")
    finally:
        redis.kill()


async def test_a_unix_socket(redis_dir: Path) -> None:
    path = redis_dir / "redis.sock"
    with running_redis(redis_dir, "--unixsocket", str(path), "--unixsocketperm", "700"):
        async with connection_to(f"unix://{path}?db=2") as connection:
            assert await connection.call("SET", "over-unix", "yes") == "OK"
        async with coredis.Redis.from_url(f"unix://{path}?db=2") as probe:
            assert await probe.get("over-unix") == b"yes"


async def test_publishes_go_on_after_redis_forgets_the_script(redis_dir: Path) -> None:
    with running_redis(redis_dir) as redis:
        async with open_redis_history(redis.url) as history:
            await history.append("scripttopic1", [Event("before")], deliver)
            async with connection_to(redis.url) as connection:
                assert await connection.call("SCRIPT", "FLUSH") == "OK"
            # NOSCRIPT ran nothing: the text is sent, once.
            await history.append("scripttopic1", [Event("after")], deliver)
            replay = await history.after("scripttopic1", None, 10)
            assert [r.event.data for r in replay.records] == ["before", "after"]
            async with connection_to(redis.url) as connection:
                assert await connection.call("XLEN", KEY_PREFIX + "scripttopic1") == 2


async def test_replies_cut_anywhere_are_read_whole() -> None:
    reply = b"*3\r\n$5\r\nhello\r\n:42\r\n*2\r\n$-1\r\n+OK\r\n"

    async def byte_by_byte(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        for n in range(len(reply)):
            await stream.send_all(reply[n : n + 1])
            await trio.sleep(0.001)
        await trio.sleep_forever()

    async with fake_redis(byte_by_byte) as url, connection_to(url) as connection:
        with trio.fail_after(STEP_SECONDS):
            assert await connection.call("ANY") == [b"hello", 42, [None, "OK"]]


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"?what\r\n", id="not-resp"),
        pytest.param(b"$abc\r\n", id="bad-length"),
        pytest.param(b"$10\r\nshort", id="closed-within-a-reply"),
        pytest.param(b"", id="closed-before-a-reply"),
    ],
)
async def test_a_hostile_server_ends_the_connection_not_the_caller(sent: bytes) -> None:
    async def then_close(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(sent)

    async with fake_redis(then_close) as url, connection_to(url) as connection:
        with trio.fail_after(STEP_SECONDS), pytest.raises(ConnectionLostError):
            await connection.call("ANY")
        # The connection was dropped: the next call connects afresh.
        with trio.fail_after(STEP_SECONDS), pytest.raises(ConnectionLostError):
            await connection.call("ANY")


async def test_bytes_that_come_unasked_make_the_connection_unusable() -> None:
    connections = 0

    async def answer_twice(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.receive_some()
        if connections == 1:  # two replies to one command, at once
            await stream.send_all(b"+ONE\r\n+UNASKED\r\n")
        else:  # one, and another later, while the connection is idle
            await stream.send_all(b"+FRESH\r\n")
            await trio.sleep(0.05)
            await stream.send_all(b"+LATE\r\n")
        await trio.sleep_forever()

    async with fake_redis(answer_twice) as url, connection_to(url) as connection:
        with trio.fail_after(STEP_SECONDS):
            assert await connection.call("ANY") == "ONE"
            # What came unasked is never taken for a later command's reply.
            assert await connection.call("ANY") == "FRESH"
            await trio.sleep(0.2)
            assert await connection.call("ANY") == "FRESH"
        assert connections == 3


def test_encode_is_resp_arrays_of_bulk_strings() -> None:
    assert encode(("SET", "k", b"\r\n")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\r\n\r\n"
    assert encode(("É",)) == b"*1\r\n$2\r\n\xc3\x89\r\n"


async def test_another_node_s_publishes_are_read_whole_in_order_in_pipelines(
    redis_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Few entries per XRANGE, so one notice takes several reads; large events,
    # so one reply takes several receives.
    monkeypatch.setattr(redis_history, "READ_COUNT", 3)
    received: list[Record] = []
    all_read = trio.Event()
    sent = [f"{n}:" + chr(0x41 + n % 26) * (n * 10_000) for n in range(20)]

    async def collect(topic: str, records: Sequence[Record]) -> None:
        received.extend(records)
        if len(received) >= len(sent):
            all_read.set()
        await trio.lowlevel.checkpoint()

    with running_redis(redis_dir) as redis:
        async with (
            open_redis_history(redis.url) as reader,
            open_redis_history(redis.url) as writer,
        ):
            await reader.watch("readtopic1", collect)
            # One publish, one notice: the reader reads it 3 entries at a time.
            await writer.append("readtopic1", [Event(data) for data in sent], deliver)
            with trio.fail_after(STEP_SECONDS):
                await all_read.wait()
            await trio.sleep(0.2)  # nothing more comes
    assert [r.event.data for r in received] == sent
    assert [r.seq for r in received] == sorted(r.seq for r in received)
