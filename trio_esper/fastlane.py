"""The publish fast lane: plain HTTP/1.1 ``POST /publish/{topic}`` requests
served without Hypercorn and Quart.

Why
---
A publish through Hypercorn and Quart-Trio costs about 1.4 ms of CPU here:
h11 alone takes about 125 us to parse a request and frame its answer
(``benchmarks/h11_cost.py``), Hypercorn spawns a task per request and restarts
its idle timer under a lock, quart-trio opens a nursery of two tasks, and
Quart builds request, response and context objects. Publishers send one
small request after another, so that per-request cost, not fan-out, is what
limits them (about 700 publishes/s against Nchan's 30,000+).

What it takes, and what it leaves
---------------------------------
:meth:`FastLane.serve` reads a connection's requests. While each is a
``POST /publish/{topic}`` in the plain form below, it serves it itself, with
the same code behind the Quart route (:mod:`.endpoints`), so the status,
headers and body are the same. At the first request that is anything else --
another path or method, HTTP/1.0, ``Transfer-Encoding``, ``Expect``,
``Upgrade``, a body over the size limit, a repeated header, a percent-escaped
topic, any byte the parser below does not expect -- it stops and returns the
bytes read so far, unconsumed, and the caller hands the connection to
Hypercorn, which parses them again and answers as it always does (errors
included). The lane never answers a malformed request itself: it only
recognises the well-formed common case, so h11 stays the judge of everything
else.

The plain form (RFC 9112): the request line ``POST /publish/<topic>[?query]
HTTP/1.1``; header lines ``token ":" OWS value OWS`` without control
characters; a ``Host`` header; exactly one ``Content-Length`` of digits;
then that many body bytes.

Keep-alive and shutdown follow Hypercorn's settings: an idle connection (or
one whose request head has not arrived) is closed after the keep-alive
timeout, ``Connection: close`` is honoured, and :meth:`FastLane.close` makes
idle connections close and busy ones close after their current answer.
"""

from __future__ import annotations

import logging
import os
import re
import select
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import NoReturn
from urllib.parse import parse_qs

import trio

from . import endpoints
from .config import Config
from .errors import EsperError
from .hub import Hub
from .rawstream import write_nowait

log = logging.getLogger("trio_esper")

#: What every request the lane takes starts with.
PREFIX = b"POST /publish/"
#: A request head longer than this goes to Hypercorn (its h11 limit is the same 16 KiB).
MAX_HEAD_BYTES = 16 * 1024
#: One receive takes at most this much (Hypercorn's MAX_RECV).
RECEIVE_BYTES = 64 * 1024

# RFC 9110, section 5.6.2: token = 1*tchar;
# tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
# RFC 9112, section 5: field-line = field-name ":" OWS field-value OWS; and
# RFC 9110, section 5.5: field values hold no CTL but HTAB (CR, LF and NUL are
# never valid). One pattern checks every header line of a head at once.
_FIELD_LINES = re.compile(rb"(?:\r\n[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*)*")
# RFC 9112, section 3.2: origin-form, printable ASCII without space or "#"
# (a fragment is never sent); topics with anything but letters and digits,
# percent-escapes included, go to the Quart route, which refuses them.
_TARGET = re.compile(rb"/publish/[0-9A-Za-z]+(?:\?[!\x24-\x7e\x22]*)?")


class PublishHead:
    """A recognised request head: the topic as written, its query, the
    headers the endpoint reads, and how long the body is."""

    __slots__ = ("close", "content_length", "headers", "query", "topic")

    def __init__(
        self,
        topic: str,
        query: str,
        headers: dict[bytes, bytes],
        content_length: int,
        *,
        close: bool,
    ) -> None:
        self.topic = topic
        self.query = query
        self.headers = headers
        self.content_length = content_length
        self.close = close

    def request(self, body: bytes) -> endpoints.PublishRequest:
        args = parse_qs(self.query, keep_blank_values=True) if self.query else {}
        content_type = self.headers.get(b"content-type", b"").decode("latin-1")
        authorization = self.headers.get(b"authorization")
        return endpoints.PublishRequest(
            self.topic,
            body,
            content_type.partition(";")[0].strip().lower(),
            authorization=None if authorization is None else authorization.decode("latin-1"),
            token=_first(args, "token"),
            event=_first(args, "event"),
            id=_first(args, "id"),
        )


def _first(args: dict[str, list[str]], name: str) -> str | None:
    values = args.get(name)
    return values[0] if values else None


def parse_publish_head(head: bytes, max_body_bytes: int) -> PublishHead | None:
    """Recognise ``head`` (up to, not including, the blank line) as a plain
    ``POST /publish/{topic}``; ``None`` for anything else, which Hypercorn
    then parses (and answers, if it is malformed)."""
    request_line, _, field_lines = head.partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
        return None
    target = parts[1]
    if _TARGET.fullmatch(target) is None:
        return None
    if _FIELD_LINES.fullmatch(head, len(request_line)) is None:
        return None
    path, _, query = target.partition(b"?")
    headers: dict[bytes, bytes] = {}
    for line in field_lines.split(b"\r\n"):
        name, _, value = line.partition(b":")
        key = name.lower()
        if key in headers:
            return None  # Hypercorn knows which repeats to join and which to refuse
        headers[key] = value.strip(b" \t")
    if b"host" not in headers:
        return None
    if b"transfer-encoding" in headers or b"expect" in headers or b"upgrade" in headers:
        return None
    length = headers.get(b"content-length", b"")
    if not length.isdigit() or int(length) > max_body_bytes:
        return None
    tokens = {t.strip() for t in headers.get(b"connection", b"").lower().split(b",")}
    return PublishHead(
        path[len(b"/publish/") :].decode("ascii"),
        query.decode("ascii"),
        headers,
        int(length),
        close=b"close" in tokens,
    )


def _has_arrived(stream: trio.SocketStream) -> bool:
    """Whether bytes (or the peer's EOF) wait unread on ``stream`` while its
    task waits its turn to run, on a busy broker: such a connection is not
    closed as idle, and the request that arrived is served."""
    return bool(select.select([stream.socket], [], [], 0)[0])


class FastLane:
    """Serves plain publish requests for :func:`~trio_esper.server.serve`.

    One instance serves every connection; :meth:`close` starts shutdown.
    """

    def __init__(self, config: Config, hub: Hub, *, keep_alive_timeout_seconds: float) -> None:
        self._config = config
        self._hub = hub
        self._keep_alive_timeout_seconds = keep_alive_timeout_seconds
        #: Connections waiting for a request head: since when, and whether
        #: idle (nothing of the head read yet). What :meth:`reap` and
        #: :meth:`close` act on, instead of a cancel scope per wait.
        self._waiting: dict[trio.SocketStream, tuple[float, bool]] = {}
        self._closing = False
        self._date = (0, "")

    def close(self) -> None:
        """Shutting down: close idle connections now, busy ones after their answer."""
        self._closing = True
        for stream, (_, idle) in list(self._waiting.items()):
            if idle and not _has_arrived(stream):
                stream.socket.close()  # wakes its wait_readable with ClosedResourceError

    async def reap(self) -> NoReturn:
        """Close connections whose next request head has not arrived within
        the keep-alive timeout (idle ones, and ones sending a head too
        slowly). Runs for as long as the lane serves; a timeout fires up to
        a quarter of it (at most 1 s) late."""
        while True:
            await trio.sleep(min(1.0, self._keep_alive_timeout_seconds / 4))
            self.reap_expired(trio.current_time() - self._keep_alive_timeout_seconds)

    def reap_expired(self, expired: float) -> None:
        """Close the connections waiting since ``expired`` or earlier."""
        for stream, (since, _) in list(self._waiting.items()):
            if since <= expired and not _has_arrived(stream):
                stream.socket.close()

    async def serve(self, stream: trio.SocketStream) -> bytes | None:
        """Serve ``stream``'s requests while the lane takes them.

        Returns the bytes read but not consumed -- the start of the first
        request the lane does not take -- for the caller to hand to the HTTP
        server with the connection; or ``None`` if the connection is done
        (closed by the peer, idle too long, ``Connection: close``, or
        shutdown), in which case the caller closes it.
        """
        buffer = b""
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            since = trio.current_time()
            while head_end < 0:
                if not PREFIX.startswith(buffer[: len(PREFIX)]) or len(buffer) > MAX_HEAD_BYTES:
                    return buffer
                if not buffer and self._closing:
                    return None
                data = await self._receive(stream, (since, not buffer))
                if not data:
                    return None
                buffer += data
                head_end = buffer.find(b"\r\n\r\n")
            head = parse_publish_head(buffer[:head_end], self._config.max_body_bytes)
            if head is None:
                return buffer
            end = head_end + 4 + head.content_length
            while len(buffer) < end:
                data = await self._receive(stream, None)
                if not data:
                    return None
                buffer += data
            body, buffer = buffer[head_end + 4 : end], buffer[end:]
            status, headers, content_type, payload = await self._answer(head, body)
            close = head.close or self._closing or headers.get("Connection") == "close"
            response = self._response(status, headers, content_type, payload, close=close)
            try:
                # An answer is a few hundred bytes: the socket takes it at once,
                # without the scheduling and locking of trio's send_all.
                written = write_nowait(stream, response)
                if written < len(response):
                    await stream.send_all(response[written:])
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if close:
                return None

    async def _receive(
        self, stream: trio.SocketStream, waiting: tuple[float, bool] | None
    ) -> bytes:
        """The next bytes from ``stream``, or ``b""`` once it is closed (by
        the peer, or by :meth:`reap` or :meth:`close` while ``waiting`` for
        a head: ``(since, idle)``).

        Reads the socket directly: trio's ``receive_some`` and a cancel scope
        per wait cost more than the rest of a publish's reading.
        """
        sock = stream.socket
        while True:
            try:
                data = os.read(sock.fileno(), RECEIVE_BYTES)
            except BlockingIOError:
                pass
            except OSError:  # reset by the peer, or closed by reap() or close()
                return b""
            else:
                # Under load the next request is often there already; the
                # checkpoint keeps one busy publisher from starving the rest.
                await trio.lowlevel.checkpoint()
                return data
            if waiting is not None:
                self._waiting[stream] = waiting
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return b""
            finally:
                self._waiting.pop(stream, None)

    async def _answer(
        self, head: PublishHead, body: bytes
    ) -> tuple[int, dict[str, str], str, bytes]:
        origin = head.headers.get(b"origin")
        cors = endpoints.cors_headers(
            self._config, None if origin is None else origin.decode("latin-1")
        )
        try:
            payload = await endpoints.publish(self._config, self._hub, head.request(body))
        except EsperError as error:
            return (
                error.status,
                endpoints.error_headers(error, cors),
                "text/plain; charset=utf-8",
                endpoints.error_body(error),
            )
        except Exception:
            log.exception("publish to %s failed", head.topic)
            return (
                500,
                {"Connection": "close"},
                "text/plain; charset=utf-8",
                b"500 Internal Server Error\n",
            )
        return 200, cors, "application/json", payload

    def _response(
        self, status: int, headers: dict[str, str], content_type: str, body: bytes, *, close: bool
    ) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            f"Date: {self._http_date()}",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items() if name != "Connection"]
        if close:
            lines.append("Connection: close")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1") + body

    def _http_date(self) -> str:
        # RFC 9110, section 6.6.1: an origin server with a clock MUST send Date.
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]
