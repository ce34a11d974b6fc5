"""Writing a subscriber's stream body straight to its socket.

Each chunk of an SSE stream would otherwise travel Quart's response loop, the
ASGI ``send`` callable, Hypercorn's HTTP stream and h11 protocol objects, and
Hypercorn's shielded, locked ``send_all``: about ten calls and several cancel
scopes per chunk, per subscriber, which profiles showed to be most of the
broker's CPU under fan-out. The response still starts through Quart and
Hypercorn (status line, headers, the first chunk) and still ends through them
(the terminating chunk); only the body in between is written here, framed the
way h11 frames it (chunked for HTTP/1.1, close-delimited for HTTP/1.0).

``server.py`` puts a :class:`RawConnection` into every HTTP/1.x connection's
ASGI ``state``; the subscribe endpoint uses it when present and falls back to
yielding chunks to Quart otherwise (HTTP/2, or an app served by another server).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio

from .hub import Subscription

#: Key of the :class:`RawConnection` in the ASGI scope's ``state``.
STATE_KEY = "trio_esper.raw_connection"


def write_nowait(stream: trio.SocketStream, data: bytes) -> int:
    """Write what ``stream``'s socket takes now; return how many bytes that was.

    Raises:
        OSError: the connection is broken or closed.
    """
    try:
        return os.write(stream.socket.fileno(), data)
    except BlockingIOError:
        return 0


@dataclass(frozen=True, slots=True)
class RawConnection:
    """A connection's socket stream and the lock Hypercorn takes to write on it."""

    stream: trio.SocketStream
    send_lock: trio.Lock

    def write_nowait(self, data: bytes) -> int:
        """Write what the socket takes now; return how many bytes that was.

        Raises:
            OSError: the connection is broken or closed.
        """
        return write_nowait(self.stream, data)

    async def pump(self, subscription: Subscription) -> bool:
        """Write the subscription's chunks until it ends; return False if the
        connection broke. The subscription must frame its items for this
        connection (``chunked`` for HTTP/1.1, bare for HTTP/1.0).

        Holds the connection's send lock throughout: nothing else writes on
        an HTTP/1.x connection while its one response streams, which is also
        what makes the topic's direct writes (:meth:`write_nowait`) safe.

        Cancellation mid-write leaves the response cut inside a chunk, so the
        socket is closed then rather than have Hypercorn append a terminating
        chunk to a torn one.
        """
        async with self.send_lock:
            subscription.attach(self.write_nowait)
            try:
                async for wire in subscription:
                    await self.stream.send_all(wire)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            except trio.Cancelled:
                self.stream.socket.close()
                raise
            finally:
                subscription.attach(None)
        return True
