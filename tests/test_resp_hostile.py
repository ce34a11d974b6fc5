"""A hostile review of the backplane's lean RESP connection
(trio_esper/history/resp.py): replies no Redis sends but a broken or hostile
server could, and the cost of a long reply that arrives in many pieces."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from trio_esper.errors import HistoryError, OutcomeUnknown
from trio_esper.history import Record, resp
from trio_esper.history import redis as redis_history
from trio_esper.history.redis import KEY_PREFIX, open_redis_history
from trio_esper.sse import Event

from .conftest import (
    REDIS_SERVER,
    STEP_SECONDS,
    BrokerProcess,
    broker_process,
    free_port,
    running_redis,
    stalled,
)
from .redisclient import connection_to, deliver, fake_redis, stream_of

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
        # A bulk longer than any Redis string: it was waited for (and buffered).
        pytest.param(b"$99999999999\r\nabc", id="bulk-too-long"),
        pytest.param(b"$-2\r\n", id="negative-bulk-length"),
        pytest.param(b"*-2\r\n", id="negative-array-length"),
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


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_redis_gone_and_back_again_and_again_leaves_no_socket_behind(
    redis_dir: Path,
) -> None:
    received: list[str] = []

    async def collect(topic: str, records: Sequence[Record]) -> None:
        received.extend(record.event.data for record in records)
        await trio.lowlevel.checkpoint()

    with running_redis(redis_dir) as redis:
        async with open_redis_history(redis.url) as history:
            await history.watch("cycletopic1", collect)
            await history.append("cycletopic1", [Event("warm")], deliver)
            await trio.sleep(0.3)  # the reader, listener and writer are connected
            before = open_fds()
            for n in range(4):
                redis.kill()
                with pytest.raises(HistoryError, match="not stored"):  # 503: never sent
                    await history.append("cycletopic1", [Event(f"lost-{n}")], deliver)
                await trio.sleep(0.3)  # the listener and the reader retry meanwhile
                redis.start()
                with trio.fail_after(STEP_SECONDS):
                    while True:  # the writer reconnects
                        try:
                            await history.append("cycletopic1", [Event(f"kept-{n}")], deliver)
                            break
                        except HistoryError:
                            await trio.sleep(0.1)
            with trio.fail_after(STEP_SECONDS):
                while received[-1:] != ["kept-3"]:
                    await trio.sleep(0.05)
            await trio.sleep(0.3)
            # One connection each again (the writer, the reader, the listener, coredis' own).
            assert open_fds() <= before
        assert received == ["warm", *(f"kept-{n}" for n in range(4))]


async def test_the_backplane_closes_at_once_while_redis_is_stalled(redis_dir: Path) -> None:
    before = open_fds()
    with running_redis(redis_dir) as redis:
        with trio.fail_after(STEP_SECONDS):
            async with open_redis_history(redis.url) as history:
                await history.watch("closetopic1", deliver)
                await history.append("closetopic1", [Event("warm")], deliver)
                with stalled(redis):
                    async with trio.open_nursery() as nursery:
                        # A publish waiting for Redis' answer, a read, the notices.
                        nursery.start_soon(history.append, "closetopic1", [Event("x")], deliver)
                        await trio.sleep(0.3)
                        nursery.cancel_scope.cancel()
                    stall_closed = trio.current_time()
                # (leaving the block closes every connection, Redis still stopped)
        assert trio.current_time() - stall_closed < STEP_SECONDS
    assert open_fds() <= before


async def test_a_publish_whose_sending_redis_never_took_whole_is_503(
    redis_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wait after the window, shortened so that the stall outlasts it.
    monkeypatch.setattr(redis_history, "OUTCOME_SECONDS", 0.5)
    # More than the sockets' buffers take while Redis is stopped: the send
    # itself waits, and is cancelled at the publish's deadline with part of
    # the command unsent. Redis cannot run a command it never had whole (and
    # the connection is closed), so the answer is sure: not stored.
    large = "x" * (24 << 20)
    with running_redis(redis_dir) as redis:
        async with open_redis_history(redis.url) as history:
            await history.append("bigtopic1", [Event("before")], deliver)
            with stalled(redis), pytest.raises(HistoryError) as refused:
                await history.append("bigtopic1", [Event(large)], deliver)
            assert not isinstance(refused.value, OutcomeUnknown), refused.value.reason
            assert "not stored" in refused.value.reason
            await history.append("bigtopic1", [Event("after")], deliver)
            replay = await history.after("bigtopic1", None, 10)
            assert [r.event.data for r in replay.records] == ["before", "after"]


@contextmanager
def running_tls_redis(directory: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server speaking TLS only, with a certificate for 127.0.0.1
    from a CA of the test's own; yields its ``rediss://`` URL (which
    verifies the certificate and the host name)."""
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(directory / "ca.pem"))
    certificate = authority.issue_cert("127.0.0.1")
    certificate.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    certificate.private_key_pem.write_to_path(str(directory / "key.pem"))
    port = free_port()
    process = subprocess.Popen(
        [
            REDIS_SERVER or "redis-server",
            *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--tls-cert-file", str(directory / "cert.pem")),
            *("--tls-key-file", str(directory / "key.pem")),
            *("--tls-ca-cert-file", str(directory / "ca.pem"), "--tls-auth-clients", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + STEP_SECONDS
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "redis-server did not start with TLS"
            time.sleep(0.05)
        yield (
            f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={directory / 'ca.pem'}"
            "&ssl_cert_reqs=required&ssl_check_hostname=true",
            process,
        )
    finally:
        process.kill()
        process.wait()


async def test_over_tls_a_connection_is_kept_and_one_found_closed_is_never_sent(
    redis_dir: Path,
) -> None:
    with running_tls_redis(redis_dir) as (url, process):
        async with connection_to(url) as connection:
            assert await connection.call("SET", "over-tls", "yes") == "OK"
            first = await connection.call("CLIENT", "ID")
            await trio.sleep(0.2)  # what TLS sends after its handshake has come
            assert await connection.call("GET", "over-tls") == b"yes"
            assert await connection.call("CLIENT", "ID") == first  # the same connection
        async with open_redis_history(url) as history:
            await history.append("tlstopic1", [Event("over tls")], deliver)
            replay = await history.after("tlstopic1", None, 10)
            assert [r.event.data for r in replay.records] == ["over tls"]
            process.kill()
            process.wait()
            await trio.sleep(0.1)
            # The connection held is found closed, and no new one is made:
            # the publish never reached Redis.
            with pytest.raises(HistoryError, match="not stored") as refused:
                await history.append("tlstopic1", [Event("gone")], deliver)
            assert not isinstance(refused.value, OutcomeUnknown)


async def test_a_user_s_password_database_unix_socket_and_a_login_refused_on_reconnect(
    redis_dir: Path,
) -> None:
    path = redis_dir / "redis.sock"
    acl = ("--user", "alice", "on", ">alicepw", "~*", "&*", "+@all")
    unix = ("--unixsocket", str(path), "--unixsocketperm", "700")
    with running_redis(redis_dir, *acl, *unix) as redis:
        for url in (
            f"redis://alice:alicepw@127.0.0.1:{redis.port}/2",
            f"unix://alice:alicepw@{path}?db=2",
        ):
            async with connection_to(url) as connection:
                assert await connection.call("ACL", "WHOAMI") == b"alice"
                assert await connection.call("INCR", "in-two") >= 1
        async with connection_to(f"redis://127.0.0.1:{redis.port}/2") as default:
            assert await default.call("GET", "in-two") == b"2"  # both in database 2
        async with connection_to(f"redis://alice:wrong@127.0.0.1:{redis.port}/2") as wrong:
            with pytest.raises(resp.NotSentError, match="WRONGPASS"):
                await wrong.call("PING")

        url = f"redis://alice:alicepw@127.0.0.1:{redis.port}/2"
        async with open_redis_history(url) as history, connection_to(redis.url) as admin:
            await history.append("acltopic1", [Event("before")], deliver)
            # Alice's password changes and her connections are dropped: the
            # writer's next login is refused, so the publish never reached Redis.
            await admin.call("ACL", "SETUSER", "alice", "resetpass", ">newpw")
            assert await admin.call("CLIENT", "KILL", "USER", "alice") >= 1
            await trio.sleep(0.1)
            with pytest.raises(HistoryError, match="not stored") as refused:
                await history.append("acltopic1", [Event("refused")], deliver)
            assert not isinstance(refused.value, OutcomeUnknown)
            assert "WRONGPASS" in refused.value.reason
            assert await admin.call("SELECT", "2") == "OK"
            assert await admin.call("XLEN", KEY_PREFIX + "acltopic1") == 1  # "before" only


def fds_of(node: BrokerProcess) -> int:
    return len(os.listdir(f"/proc/{node.process.pid}/fd"))


async def test_a_broker_keeps_no_socket_of_redis_restarts_and_stops_while_redis_is_stopped(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    topic = "brokertopic1"

    async def publish(data: str) -> httpx.Response:
        return await client.post(f"{node.url}/publish/{topic}", content=f"data: {data}\n".encode())

    async def until_published(data: str) -> None:
        with trio.fail_after(STEP_SECONDS):
            while (await publish(data)).status_code != 200:
                await trio.sleep(0.1)

    with running_redis(redis_dir) as redis:
        async with (
            broker_process("--backplane", redis.url, "--heartbeat", "0.5") as node,
            stream_of(client, f"{node.url}/subscribe/{topic}") as stream,
        ):
            await until_published("warm")
            await stream.next_event()
            await trio.sleep(0.3)
            before = fds_of(node)
            for n in range(3):
                redis.kill()
                with trio.fail_after(STEP_SECONDS):
                    while (refused := await publish(f"lost-{n}")).status_code == 200:
                        await trio.sleep(0.05)  # the kill has not reached the node yet
                assert refused.status_code == 503, refused.text
                await trio.sleep(0.5)  # the listener and the reader retry meanwhile
                redis.start()
                await until_published(f"kept-{n}")
                with trio.fail_after(STEP_SECONDS):
                    while f"kept-{n}" not in (await stream.next_event()).decode():
                        pass
            await trio.sleep(0.5)
            assert fds_of(node) <= before + 1  # (a subscriber's or a stats connection)
            # Redis stops with a publish waiting for its answer: SIGTERM still ends it.
            with stalled(redis):
                async with trio.open_nursery() as nursery:

                    async def waiting() -> None:
                        with suppress(httpx.HTTPError):  # the broker goes first
                            await publish("stalled")

                    nursery.start_soon(waiting)
                    await trio.sleep(0.3)
                    assert await node.stop() == 0
                    nursery.cancel_scope.cancel()

        async with broker_process("--backplane", redis.url) as node:
            redis.kill()  # and SIGINT with Redis gone
            await trio.sleep(0.3)
            node.process.send_signal(signal.SIGINT)
            with trio.fail_after(STEP_SECONDS):
                assert await node.process.wait() in (0, -signal.SIGINT, 128 + signal.SIGINT)


@asynccontextmanager
async def cuttable_proxy(port: int) -> AsyncIterator[tuple[str, Callable[[], None]]]:
    """A TCP proxy on loopback to ``port``; yields its URL and ``cut``, after
    which the connections open go silent both ways without closing (as when
    a firewall or NAT drops an idle connection), while new ones still work."""
    generation = 0

    async def forward(source: trio.SocketStream, to: trio.SocketStream, born: int) -> None:
        while data := await source.receive_some():
            if born == generation:
                await to.send_all(data)

    async def serve(client: trio.SocketStream) -> None:
        born = generation
        async with client, await trio.open_tcp_stream("127.0.0.1", port) as server:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(forward, client, server, born)
                    nursery.start_soon(forward, server, client, born)

    def cut() -> None:
        nonlocal generation
        generation += 1

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        yield f"redis://127.0.0.1:{listeners[0].socket.getsockname()[1]}/0", cut
        nursery.cancel_scope.cancel()


async def test_notices_come_again_soon_after_a_silent_drop_of_their_connection(
    redis_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shortened: how long the notices' connection may be silent before a PING.
    monkeypatch.setattr(redis_history, "NOTICES_IDLE_SECONDS", 0.5, raising=False)
    received: list[str] = []

    async def collect(topic: str, records: Sequence[Record]) -> None:
        received.extend(record.event.data for record in records)
        await trio.lowlevel.checkpoint()

    async def delivered(data: str) -> None:
        with trio.fail_after(STEP_SECONDS):
            while data not in received:
                await trio.sleep(0.05)

    with running_redis(redis_dir) as redis:
        async with (
            cuttable_proxy(redis.port) as (url, cut),
            open_redis_history(url) as reader,
            open_redis_history(redis.url) as writer,
        ):
            await reader.watch("droptopic1", collect)
            await writer.append("droptopic1", [Event("one")], deliver)
            await delivered("one")
            # Idle, each node's listener PINGs and keeps its one subscription.
            async with connection_to(redis.url) as admin:
                await trio.sleep(1.5)
                clients = (await admin.call("CLIENT", "LIST")).decode().splitlines()
            subscribed = [line for line in clients if " sub=1 " in line]
            assert len(subscribed) == 2, clients  # one per node
            assert all(" cmd=ping " in line for line in subscribed), subscribed
            assert reader.problem is None
            cut()
            await writer.append("droptopic1", [Event("two")], deliver)
            # Not at the next sweep (SWEEP_SECONDS, 30 s): the listener's PING
            # went unanswered, it subscribed again, and the reader read.
            await delivered("two")


async def test_a_publish_redis_has_when_the_backplane_closes_is_not_called_not_stored(
    redis_dir: Path,
) -> None:
    outcome: list[object] = []

    async def publish(history: redis_history.RedisHistory) -> None:
        try:
            outcome.append(await history.append("closingtopic1", [Event("x")], deliver))
        except HistoryError as exc:
            outcome.append(exc)

    with running_redis(redis_dir) as redis:
        assert redis.process is not None
        # The backplane closes (the broker stops) with the publish unanswered;
        # then the nursery waits for its answer.
        async with trio.open_nursery() as nursery, open_redis_history(redis.url) as history:
            await history.append("closingtopic1", [Event("warm")], deliver)
            redis.process.send_signal(signal.SIGSTOP)
            nursery.start_soon(publish, history)
            await trio.sleep(0.3)  # sent: Redis has it, unread
        redis.process.send_signal(signal.SIGCONT)
        async with connection_to(redis.url) as connection:
            await trio.sleep(0.2)
            # Redis ran it, within its window: it is stored.
            assert await connection.call("XLEN", KEY_PREFIX + "closingtopic1") == 2
    assert len(outcome) == 1
    assert isinstance(outcome[0], OutcomeUnknown), outcome


class HeldStream(trio.abc.Stream):
    """A fake server's transport that, while :attr:`held` is not None, holds
    what it is given, so that two TLS records go out in one write."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.held: bytes | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.held is None:
            await self.stream.send_all(data)
        else:
            self.held += bytes(data)
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_over_tls_bytes_that_come_unasked_make_the_connection_unusable(
    tmp_path: Path,
) -> None:
    # Two replies to one command in one segment: TLS reads the first record,
    # and the second waits inside TLS, where polling the socket sees nothing.
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    connections = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        held = HeldStream(stream)
        tls = trio.SSLStream(held, server_context, server_side=True)
        received = b""
        while b"PING\r\n" not in received:
            received += await tls.receive_some()
        await tls.send_all(b"+PONG\r\n")
        await tls.receive_some()
        if connections == 1:
            held.held = b""
            await tls.send_all(b"+ONE\r\n")
            await tls.send_all(b"+UNASKED\r\n")
            both, held.held = held.held, None
            await stream.send_all(both)
        else:
            await tls.send_all(b"+FRESH\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
        async with connection_to(url) as connection:
            with trio.fail_after(STEP_SECONDS):
                assert await connection.call("ANY") == "ONE"
                await trio.sleep(0.1)
                # What came unasked is never taken for a later command's reply.
                assert await connection.call("ANY") == "FRESH"
        assert connections == 2
        nursery.cancel_scope.cancel()
