"""The edge's connection owns its socket and the direct writer on it: once
it is closed, nothing the topic writes can reach whichever connection the
kernel gives its descriptor number next."""

from __future__ import annotations

import socket
from contextlib import ExitStack

import pytest
import trio

from trio_esper.edge.connection import Connection
from trio_esper.edge.lifetime import Deadlines
from trio_esper.edge.readiness import Readiness
from trio_esper.hub import open_hub
from trio_esper.sse import Event

TOPIC = "topic0001"
#: New connections opened after the close: the kernel hands out the lowest
#: free number, so the first one takes the closed descriptor's.
REUSERS = 4


def _pair(listener: socket.socket, stack: ExitStack) -> tuple[socket.socket, socket.socket]:
    """A TCP connection on loopback: (the broker's side, the client's side)."""
    client = stack.enter_context(socket.create_connection(listener.getsockname()))
    server, _ = listener.accept()
    stack.enter_context(server)
    server.setblocking(False)
    client.setblocking(False)
    return server, client


def _unread(client: socket.socket) -> bytes:
    try:
        return client.recv(1 << 16)
    except BlockingIOError:
        return b""


@pytest.mark.parametrize("close", ["connection", "bare-socket"])
async def test_nothing_reaches_a_connection_that_reuses_a_closed_ones_number(close: str) -> None:
    # "bare-socket" closes the socket behind the connection's back, as the
    # edge must never do: the topic's write then lands on the newcomer,
    # which is what Connection.close (detach, then close) prevents.
    with ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        async with open_hub() as hub, hub.subscribe(TOPIC) as subscription:
            server, _client = _pair(listener, stack)
            sock = trio.socket.from_stdlib_socket(server)
            number = sock.fileno()
            connection = Connection(sock, None, Deadlines(), Readiness())
            connection.attach(subscription)
            assert subscription.park(lambda: None)
            if close == "connection":
                connection.close()
            else:
                sock.close()
            newcomers = [end for _ in range(REUSERS) for end in _pair(listener, stack)]
            assert number in [end.fileno() for end in newcomers], "the number was not reused"
            published = await hub.publish(TOPIC, [Event("secret", id="e1")])
            assert published.subscribers == 1
            await trio.sleep(0.05)  # loopback: anything written has arrived
            leaked = b"".join(_unread(end) for end in newcomers)
            if close == "connection":
                assert leaked == b""
                # Not lost either: it waits in the subscription's queue.
                assert subscription.take_nowait() == b"id: e1\ndata: secret\n\n"
            else:
                assert leaked == b"id: e1\ndata: secret\n\n"
