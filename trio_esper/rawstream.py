"""A subscriber's stream, once its response has started, served straight on
its socket by one small task.

Each chunk of an SSE stream would otherwise travel Quart's response loop, the
ASGI ``send`` callable, Hypercorn's HTTP stream and h11 protocol objects, and
Hypercorn's shielded, locked ``send_all``: about ten calls and several cancel
scopes per chunk, per subscriber. And for as long as the stream lasts, every
subscriber would keep Hypercorn's connection task, Hypercorn's request task,
quart-trio's two tasks and their nurseries, request, response and context
objects: about 37 KB per idle subscriber, where Nchan needs 10.

So the response starts through Quart and Hypercorn (status line, headers,
the opening frames and any replay), and then the subscribe endpoint
*detaches* the connection (:meth:`RawConnection.detach`): Hypercorn's
connection task is told the peer left, so it and the request's tasks finish,
and whatever Hypercorn still writes (the end of the response) is discarded.
The socket now belongs to one task in the topic's nursery
(:meth:`RawConnection.serve`), which frames the body the way h11 frames it
(chunked for HTTP/1.1, close-delimited for HTTP/1.0), ends it, and closes
the socket. ``server.py`` builds a :class:`RawConnection` for every HTTP/1.x
connection and puts it in the ASGI ``state``; without one (HTTP/2, or an app
served by another server) the endpoint streams through Quart as usual.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from .hub import Subscription

#: Key of the :class:`RawConnection` in the ASGI scope's ``state``.
STATE_KEY = "trio_esper.raw_connection"
#: The last chunk of a chunked body (RFC 9112, section 7.1).
LAST_CHUNK = b"0\r\n\r\n"
#: What one read of an idle stream takes: a stream's client sends nothing, so
#: anything it does send is discarded.
DISCARD_BYTES = 4096


def write_nowait(stream: trio.SocketStream, data: bytes) -> int:
    """Write what ``stream``'s socket takes now; return how many bytes that was.

    Raises:
        OSError: the connection is broken or closed.
    """
    try:
        return os.write(stream.socket.fileno(), data)
    except BlockingIOError:
        return 0


class HTTPServerStream:
    """The stream Hypercorn reads and writes a connection through: the socket
    stream, with bytes already read from it replayed first (what the fast
    lane read before handing the connection over), and a way to take the
    connection away from Hypercorn (:meth:`detach`)."""

    def __init__(self, stream: trio.SocketStream, unread: bytes = b"") -> None:
        self.socket = stream.socket
        self._stream = stream
        self._unread = unread
        self._detached = False
        self._receiving: trio.CancelScope | None = None

    def detach(self) -> None:
        """From now on Hypercorn reads end-of-stream, its writes are
        discarded and its close leaves the socket open."""
        self._detached = True
        if self._receiving is not None:
            self._receiving.cancel()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._unread:
            data, self._unread = self._unread, b""
            await trio.lowlevel.checkpoint()
            return data
        with trio.CancelScope() as self._receiving:
            if not self._detached:
                return await self._stream.receive_some(max_bytes)
        await trio.lowlevel.checkpoint()
        return b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._detached:
            await trio.lowlevel.checkpoint()
        else:
            await self._stream.send_all(data)

    async def send_eof(self) -> None:
        if self._detached:
            await trio.lowlevel.checkpoint()
        else:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        if self._detached:
            await trio.lowlevel.checkpoint()
        else:
            await self._stream.aclose()


class RawConnection:
    """A connection's socket stream, the stream Hypercorn uses for it, and
    ``release``: called once the socket is closed, after a detach (the
    server's connection tracking)."""

    def __init__(
        self,
        stream: trio.SocketStream,
        server_stream: HTTPServerStream,
        release: Callable[[], object],
    ) -> None:
        self.stream = stream
        self._server_stream = server_stream
        self._release = release
        self.detached = False

    def write_nowait(self, data: bytes) -> int:
        """Write what the socket takes now; return how many bytes that was.

        Raises:
            OSError: the connection is broken or closed.
        """
        return write_nowait(self.stream, data)

    def detach(self) -> None:
        """Take the connection from Hypercorn: call between two chunks of a
        response that Hypercorn has written so far, then serve the rest with
        :meth:`serve`."""
        self.detached = True
        self._server_stream.detach()

    async def serve(self, subscription: Subscription) -> None:
        """Write the subscription's chunks until it ends or the peer leaves,
        end the body, and close the socket. The subscription must frame its
        items for this connection (``chunked`` for HTTP/1.1).

        One task per subscriber, parked on the socket (to see the peer leave)
        rather than on the queue: while it is parked the topic writes to the
        socket directly (:meth:`Subscription.park`), and only what the socket
        does not take at once is queued and wakes this task to write it.
        """
        sock = self.stream.socket
        # Dropping a slow subscriber also abandons a write it is stuck in.
        subscription.on_drop = sock.close
        subscription.attach(self.write_nowait)
        try:
            while True:
                with trio.CancelScope() as parked:
                    if subscription.park(parked.cancel):
                        await trio.lowlevel.wait_readable(sock)
                        try:
                            if not os.read(sock.fileno(), DISCARD_BYTES):
                                return  # the peer closed its end
                        except BlockingIOError:
                            pass
                        continue
                subscription.unpark()
                chunk = subscription.take_nowait()
                if chunk is None:
                    break
                if chunk:
                    await self.stream.send_all(chunk)
            if subscription.chunked and not subscription.dropped:
                await self.stream.send_all(LAST_CHUNK)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # reset, or closed by a drop or by shutdown
        finally:
            subscription.unpark()
            subscription.attach(None)
            sock.close()
            self._release()
