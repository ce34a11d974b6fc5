"""Support for the Redis backplane's tests (test_resp, test_resp_hostile,
test_redis_faults, test_redis_foreign): a lean connection to a URL, a fake
Redis on loopback, a ``deliver`` that takes records and does nothing, a
subscription's stream that has said ``: subscribed``, and broker processes
sharing one redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import coredis
import httpx
import trio

from trio_esper.history import Record
from trio_esper.history.resp import RespConnection

from .conftest import (
    STEP_SECONDS,
    BrokerProcess,
    RedisServer,
    SSEStream,
    broker_process,
    open_sse,
)


def connection_to(url: str) -> RespConnection:
    return RespConnection.like(coredis.Redis.from_url(url), connect_timeout=STEP_SECONDS)


async def deliver(topic: str, records: Sequence[Record]) -> None:
    await trio.lowlevel.checkpoint()


@asynccontextmanager
async def fake_redis(
    answer: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """A server on loopback that reads the connection's hello (``PING``),
    says ``+PONG`` and then does ``answer``; yields its URL."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            received = b""
            while b"PING\r\n" not in received:
                received += await stream.receive_some()
            await stream.send_all(b"+PONG\r\n")
            await answer(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"redis://127.0.0.1:{port}/0"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def stream_of(
    client: httpx.AsyncClient, url: str, **headers: str
) -> AsyncIterator[SSEStream]:
    stream, ctx = await open_sse(client, url, headers=headers)
    try:
        assert stream.response.status_code == 200, stream.response.status_code
        assert await stream.next_frame() == b": subscribed\n\n"
        yield stream
    finally:
        with trio.CancelScope(shield=True):
            await ctx.__aexit__(None, None, None)


@asynccontextmanager
async def nodes(redis: RedisServer, count: int, *args: str) -> AsyncIterator[list[BrokerProcess]]:
    """``count`` broker processes sharing ``redis`` (heartbeats every 0.5 s), with ``args``."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                broker_process("--backplane", redis.url, "--heartbeat", "0.5", *args)
            )
            for _ in range(count)
        ]
