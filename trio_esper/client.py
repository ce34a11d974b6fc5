"""A small async client for the broker: publish events, and subscribe to a
topic with reconnection and resume.

Built on httpx and httpx-sse, and so on anyio: the same code runs under Trio
and asyncio::

    async with Client("http://127.0.0.1:3000") as client:
        answer = await client.publish("myTopic123", data="hello", event="greeting")
        async with client.subscribe("myTopic123") as events:
            async for event in events:
                print(event.id, event.event, event.data)

**Reconnection.** A subscription reconnects by itself when its stream ends
(the broker shut down, or dropped it as a slow subscriber), breaks, or cannot
be opened (connection refused, 408, 429, 5xx). The first attempt after a
stream ends waits the reconnection time: the server's last ``retry:`` (kept
across connections, as ``EventSource`` keeps it), else ``initial_delay_seconds``.
Each failed attempt doubles the ceiling, capped at ``max_delay_seconds``, and
the wait is drawn between half the ceiling and the ceiling (never under the
reconnection time), so clients dropped together do not return together; a
``Retry-After`` on the answer is a floor. A successful connection resets the
count. Any other answer is permanent and raised as :class:`BrokerError`:
4xx other than 408 and 429 (400 bad topic, 401 no token, 403 bad token, 404),
an other 2xx (``EventSource`` also stops on 204), a 200 that is not
``text/event-stream``.

**Resume.** Every reconnection sends ``Last-Event-ID``: the id of the last
event the caller received that carried an ``id:`` field. The id is taken
from dispatched events only, that is, blocks with a ``data`` field. WHATWG
updates ``EventSource``'s last event id at every blank line, data or not,
from a buffer that a data-less block may have set; we do not, because the
caller's resume point is the last event it got: an id on a block that
delivered nothing names a place whose meaning the client cannot check, and
resuming from the last delivered event never skips one. Like WHATWG, an event
without an ``id:`` field (the broker's ``reset``) leaves the id as it is, and
an event with an empty ``id:`` clears it (the broker never sends one; it
refuses empty ids at publish for this reason). A block only updates the id
when the caller receives its event, so :attr:`Subscription.last_event_id` can
be stored and passed back later. Until the first event with an id, a
reconnection cannot resume: events published while disconnected are missed,
unless ``since_earliest=True`` asked for everything retained.

**Reset.** When the broker does not know the id (expired from its history,
or a broker restarted with memory history) it sends ``event: reset`` with
``{"reason": "unknown-last-event-id"}`` and then everything it retains. The
subscription passes it on as a :class:`ReceivedEvent` (``event == "reset"``,
``id`` ``None``): events may have been missed, and what follows may include
events received before. The id is kept, so a reset repeats if the broker
loses it again before a new event arrives.

**httpx-sse.** Its public ``EventSource.aiter_sse()`` yields an event for
data-less blocks too (the ``retry:`` block a stream opens with, a comment
after an event) with ``id`` set from the decoder's last-id buffer, which is
``""`` on a new connection; its documented reconnect recipe, storing
``sse.id``, then forgets the id and a second outage loses events. So this
module feeds httpx-sse's own line and field decoders (``SSELineDecoder``,
``SSEDecoder``, from ``httpx_sse._decoders``: not public, hence the pin to
0.4.*) and notes, per block, the two facts its ``ServerSentEvent`` drops:
whether a ``data`` field was seen and whether an ``id`` field was.

Errors::

    BrokerError     an answer the client cannot use: status, one-line reason,
                    retry_after_seconds

:meth:`Client.publish` lets ``httpx.TransportError`` through and never
retries: a retried publish without an ``id`` could store the event twice.
"""

from __future__ import annotations

import codecs
import logging
import random
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, Self, TypedDict, cast
from urllib.parse import quote

import anyio
import anyio.abc
import httpx
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from .sse import Event, encode

__all__ = [
    "RESET_EVENT",
    "BrokerError",
    "Client",
    "PublishAnswer",
    "ReceivedEvent",
    "Subscription",
]

log = logging.getLogger("trio_esper.client")

#: The event type the broker sends when it cannot resume from ``Last-Event-ID``.
RESET_EVENT: Final = "reset"
#: Wait before reconnecting when the server sent no ``retry:``. Browsers use 3-5 s;
#: a backend subscriber wants its events sooner, and the broker handles storms.
DEFAULT_INITIAL_DELAY_SECONDS: Final = 1.0
#: Longest ceiling the backoff grows to.
DEFAULT_MAX_DELAY_SECONDS: Final = 30.0
#: Smallest step the backoff doubles from: ``retry: 0`` asks for an immediate
#: reconnection after a stream ends, but a broker that is down is not hammered.
MIN_BACKOFF_STEP_SECONDS: Final = 0.1
#: No byte for this long (the broker sends a heartbeat every 15 s by default)
#: and the connection is presumed dead: reconnect.
DEFAULT_READ_TIMEOUT_SECONDS: Final = 60.0
#: Connecting, writing, and whole publish requests.
DEFAULT_TIMEOUT_SECONDS: Final = 10.0
#: How much of an error answer is read for its reason.
MAX_REASON_BYTES: Final = 1024
#: Closing a response is local work; bounded anyway, since it runs shielded.
CLOSE_TIMEOUT_SECONDS: Final = 1.0
#: Doublings past this cannot matter (2**30 steps exceeds any cap) and would
#: overflow a float eventually.
_MAX_DOUBLINGS: Final = 30


class BrokerError(Exception):
    """The broker answered in a way the client cannot use: a non-2xx status,
    or for a subscription any permanent refusal (see the module docstring).

    Attributes:
        status: the HTTP status code.
        reason: the first line of the broker's answer (its one-line reason),
            or the status's reason phrase when the body is empty.
        retry_after_seconds: the ``Retry-After`` of the answer, if it had one.
    """

    def __init__(self, status: int, reason: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.retry_after_seconds = retry_after_seconds


class PublishAnswer(TypedDict):
    """The broker's JSON answer to a publish."""

    #: The id of the last event of the body (assigned or the publisher's).
    id: str
    #: Events the body held.
    events: int
    #: Subscribers the events were delivered to.
    subscribers: int


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One event a subscription received.

    Attributes:
        id: the event's own ``id:`` field, or ``None`` when it had none (the
            broker's ``reset``). Unlike ``EventSource``'s ``lastEventId``, it
            is never inherited from an earlier event.
        event: the event type; ``"message"`` when the event named none (WHATWG).
        data: the data, lines joined with LF; may be empty.
    """

    id: str | None
    event: str
    data: str

    @property
    def is_reset(self) -> bool:
        """The broker could not resume from the last event id (module docstring)."""
        return self.event == RESET_EVENT


class Client(anyio.abc.AsyncResource):
    """Publishes to and subscribes at one broker.

    Args:
        base_url: the broker, e.g. ``"http://127.0.0.1:3000"``.
        http: an ``httpx.AsyncClient`` to send with (for transport options,
            proxies, TLS); by default the client makes its own.
        timeout_seconds: connect, write and publish timeout of a client it makes.

    Resource handling: a client it made is closed by :meth:`aclose` (or on
    leaving ``async with``); one passed in belongs to the caller, who closes it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout_seconds)

    async def aclose(self) -> None:
        """Close the HTTP client if this client made it."""
        if self._owns_http:
            await self._http.aclose()

    def _url(self, route: str, topic: str) -> str:
        # One path segment whatever the caller passes: the broker judges the topic.
        return f"{self.base_url}/{route}/{quote(topic, safe='')}"

    async def publish(
        self,
        topic: str,
        body: str | bytes | None = None,
        *,
        data: str | None = None,
        event: str | None = None,
        id: str | None = None,
        token: str | None = None,
    ) -> PublishAnswer:
        """Publish to ``topic``: either ``body``, SSE fields as the broker's
        ``POST /publish`` takes them (several events allowed), or one event
        built from ``data`` and optional ``event`` and ``id``.

        Args:
            token: a publisher JWT, sent as ``Authorization: Bearer``.

        Returns:
            The broker's answer: the last event's id, the number of events,
            the number of subscribers reached.

        Raises:
            ValueError: neither or both of ``body`` and ``data`` were given.
            trio_esper.errors.InvalidEvent: ``event`` or ``id`` holds CR, LF
                or NUL, or ``data`` holds CR (it would change the stream).
            BrokerError: the broker answered other than 2xx (status and reason).
            httpx.TransportError: the request failed; it is not retried.
        """
        if (body is None) == (data is None):
            raise ValueError("give either body or data (with event and id), not both")
        if data is not None:
            body = encode(Event(data, event=event, id=id))
        elif event is not None or id is not None:
            raise ValueError("event and id go with data; in a body they are SSE fields")
        headers = {"Content-Type": "text/event-stream"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self._http.post(
            self._url("publish", topic), content=body, headers=headers
        )
        if not response.is_success:
            raise BrokerError(
                response.status_code,
                _first_line(response.content, response),
                _retry_after(response),
            )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not PublishAnswer.__required_keys__ <= answer.keys():
            raise BrokerError(response.status_code, "the publish answer is not the broker's JSON")
        return cast(PublishAnswer, answer)

    def subscribe(
        self,
        topic: str,
        *,
        token: str | None = None,
        last_event_id: str | None = None,
        since_earliest: bool = False,
        initial_delay_seconds: float = DEFAULT_INITIAL_DELAY_SECONDS,
        max_delay_seconds: float = DEFAULT_MAX_DELAY_SECONDS,
        read_timeout_seconds: float | None = DEFAULT_READ_TIMEOUT_SECONDS,
    ) -> Subscription:
        """The events of ``topic``, from now on (or after ``last_event_id``),
        across reconnections. Nothing is sent until the first event is asked for.

        Args:
            token: a subscriber JWT, sent as ``Authorization: Bearer``.
            last_event_id: resume after this id (from an earlier
                :attr:`Subscription.last_event_id`).
            since_earliest: with no ``last_event_id`` yet, ask for everything
                the broker retains (``?since=earliest``), also on a reconnection
                before the first event with an id.
            initial_delay_seconds: reconnection time until the server sends ``retry:``.
            max_delay_seconds: cap of the backoff ceiling.
            read_timeout_seconds: no byte for this long and the stream is
                presumed dead (reconnect); ``None`` waits forever.
        """
        return Subscription(
            self._http,
            self._url("subscribe", topic),
            token=token,
            last_event_id=last_event_id,
            since_earliest=since_earliest,
            initial_delay_seconds=initial_delay_seconds,
            max_delay_seconds=max_delay_seconds,
            timeout=httpx.Timeout(
                connect=self._http.timeout.connect,
                read=read_timeout_seconds,
                write=self._http.timeout.write,
                pool=self._http.timeout.pool,
            ),
        )


class Subscription(anyio.abc.AsyncResource):
    """An async iterator of :class:`ReceivedEvent`, reconnecting and resuming
    by itself (module docstring); made by :meth:`Client.subscribe`.

    Resource handling: it holds at most one HTTP response, opened when an
    event is first asked for; :meth:`aclose` (or leaving ``async with``)
    closes it and ends the iteration, also while another task waits for an
    event. Iterate it from one task at a time.

    Error handling: permanent refusals raise :class:`BrokerError` from
    ``__anext__`` and end the subscription; everything else is retried.
    Cancelling a wait for the next event (a timeout around it) closes the
    stream, since httpcore closes a connection whose read was interrupted; the
    next call reconnects at once and resumes as after any outage.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        *,
        token: str | None,
        last_event_id: str | None,
        since_earliest: bool,
        initial_delay_seconds: float,
        max_delay_seconds: float,
        timeout: httpx.Timeout,
    ) -> None:
        if not initial_delay_seconds >= 0 or not max_delay_seconds > 0:
            raise ValueError("delays must not be negative, and the cap must be positive")
        self._http = http
        self._url = url
        # Bytes, so an id in any script goes out as UTF-8 (the broker reads
        # Last-Event-ID so); httpx would encode a str as ASCII.
        self._headers = {b"Accept": b"text/event-stream", b"Cache-Control": b"no-store"}
        if token is not None:
            self._headers[b"Authorization"] = b"Bearer " + token.encode()
        self._since_earliest = since_earliest
        self._timeout = timeout
        self._last_event_id = last_event_id or None
        self._reconnection_seconds = initial_delay_seconds
        self._max_delay_seconds = max_delay_seconds
        #: Consecutive attempts that did not open a stream.
        self._failures = 0
        self._connections = 0
        #: Before the next attempt; ``None``: none yet, connect at once.
        self._wait_seconds: float | None = None
        self._response: httpx.Response | None = None
        self._chunks: AsyncGenerator[bytes, None] | None = None
        self._decoder = _StreamDecoder()
        self._ready: deque[ReceivedEvent] = deque()
        self._closed = False
        #: Around the wait in ``__anext__``, for ``aclose()`` from another task.
        self._scope: anyio.CancelScope | None = None

    @property
    def last_event_id(self) -> str | None:
        """The id a reconnection resumes after: the last id the caller received."""
        return self._last_event_id

    @property
    def reconnection_seconds(self) -> float:
        """The wait after a stream ends: the server's last ``retry:``, else
        ``initial_delay_seconds``; failed attempts back off from it."""
        return self._reconnection_seconds

    @property
    def connections(self) -> int:
        """Streams opened so far (each reconnection adds one)."""
        return self._connections

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ReceivedEvent:
        while not self._ready:
            if self._closed:
                raise StopAsyncIteration
            # aclose() from another task cancels this scope, and the loop ends.
            with anyio.CancelScope() as self._scope:
                try:
                    await self._step()
                finally:
                    self._scope = None
        event = self._ready.popleft()
        if event.id is not None:
            self._last_event_id = event.id or None  # WHATWG: an empty id clears it
        return event

    async def aclose(self) -> None:
        """End the iteration and close the stream. Called while another task
        waits for an event, it cancels that wait; that task then closes the
        stream and its ``async for`` ends."""
        self._closed = True
        self._ready.clear()
        if self._scope is not None:
            self._scope.cancel()
        else:
            await self._close_stream()

    async def _step(self) -> None:
        """Connect, or read what the stream has next."""
        if self._chunks is None:
            await self._connect()
            return
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            # The broker ended the stream: shutdown, or a full queue (slow subscriber).
            await self._lost("the stream ended")
        except (httpx.TransportError, httpx.DecodingError) as exc:
            await self._lost(f"the stream broke ({_describe(exc)})")
        except BaseException:
            # Cancelled mid-read: httpcore closes a connection whose read was
            # interrupted. The next call reconnects at once and resumes.
            await self._close_stream()
            self._wait_seconds = None
            raise
        else:
            self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        for block in self._decoder.feed(chunk):
            if block.retry_ms is not None:
                # WHATWG: the reconnection time is set whether or not the block is dispatched.
                self._reconnection_seconds = block.retry_ms / 1000
            if block.dispatched:
                self._ready.append(ReceivedEvent(block.id, block.event, block.data))

    async def _connect(self) -> None:
        """Open a stream, waiting and retrying until one opens.

        Raises:
            BrokerError: a permanent refusal; the subscription is closed.
        """
        while True:
            if self._wait_seconds is not None:
                await anyio.sleep(self._wait_seconds)
            headers = dict(self._headers)
            params: dict[str, str] = {}
            if self._last_event_id is not None:
                headers[b"Last-Event-ID"] = self._last_event_id.encode()
            elif self._since_earliest:
                params["since"] = "earliest"
            request = self._http.build_request(
                "GET", self._url, headers=headers, params=params, timeout=self._timeout
            )
            try:
                response = await self._http.send(request, stream=True)
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError):
                self._closed = True  # a bad URL or header: no retry can fix it
                raise
            except httpx.TransportError as exc:
                self._failed(f"cannot connect ({_describe(exc)})", None)
                continue
            refusal: tuple[str, float | None] | None = ("", None)
            try:
                refusal = await _refusal(response)
            except BrokerError:
                self._closed = True
                raise
            except httpx.TransportError as exc:
                refusal = (f"the answer broke ({_describe(exc)})", None)
            finally:
                if refusal is not None:  # also on cancellation: only a stream is kept
                    await _close_quietly(response)
            if refusal is not None:
                self._failed(*refusal)
                continue
            self._response = response
            self._chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
            self._decoder = _StreamDecoder()  # WHATWG: buffers are per stream
            self._failures = 0
            self._connections += 1
            return

    def _failed(self, reason: str, retry_after_seconds: float | None) -> None:
        self._failures += 1
        wait = _reconnect_delay(
            self._reconnection_seconds, self._failures, self._max_delay_seconds
        )
        if retry_after_seconds is not None:
            wait = max(wait, retry_after_seconds)
        self._wait_seconds = wait
        log.info("subscribe %s: %s; retrying in %.2f s", self._url, reason, wait)

    async def _lost(self, reason: str) -> None:
        await self._close_stream()
        self._wait_seconds = _reconnect_delay(
            self._reconnection_seconds, 0, self._max_delay_seconds
        )
        log.info(
            "subscribe %s: %s; resuming after %s in %.2f s",
            self._url,
            reason,
            self._last_event_id,
            self._wait_seconds,
        )

    async def _close_stream(self) -> None:
        chunks, response = self._chunks, self._response
        self._chunks = self._response = None
        with anyio.move_on_after(CLOSE_TIMEOUT_SECONDS, shield=True):
            if chunks is not None:
                await chunks.aclose()
        if response is not None:
            await _close_quietly(response)


def _reconnect_delay(base_seconds: float, failures: int, max_seconds: float) -> float:
    """The wait before an attempt: ``base_seconds`` (the reconnection time)
    after a stream ends; after ``failures`` failed attempts, drawn between
    half the ceiling and the ceiling (never under ``base_seconds``), the
    ceiling doubling per failure up to ``max_seconds``."""
    if failures == 0:
        return base_seconds
    step = max(base_seconds, MIN_BACKOFF_STEP_SECONDS)
    ceiling = max(base_seconds, min(max_seconds, step * 2 ** min(failures, _MAX_DOUBLINGS)))
    return random.uniform(max(base_seconds, ceiling / 2), ceiling)  # noqa: S311 (jitter, not a secret)


async def _refusal(response: httpx.Response) -> tuple[str, float | None] | None:
    """``None`` if ``response`` opens an event stream; ``(reason, retry_after)``
    if the attempt should be retried.

    Raises:
        BrokerError: a permanent refusal.
    """
    status = response.status_code
    if status == 200:
        media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type == "text/event-stream":
            return None
        raise BrokerError(status, f"expected text/event-stream, got {media_type or 'nothing'!r}")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= MAX_REASON_BYTES:
            break
    reason = _first_line(bytes(body), response)
    if status in (408, 429) or status >= 500:
        return f"{status} {reason}", _retry_after(response)
    raise BrokerError(status, reason, _retry_after(response))


async def _close_quietly(response: httpx.Response) -> None:
    with anyio.move_on_after(CLOSE_TIMEOUT_SECONDS, shield=True):
        await response.aclose()


def _first_line(body: bytes, response: httpx.Response) -> str:
    text = body[:MAX_REASON_BYTES].decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    """RFC 9110, section 10.2.3: ``Retry-After = HTTP-date / delay-seconds``,
    ``delay-seconds = 1*DIGIT``."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322's "no zone information", HTTP-date is UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@dataclass(frozen=True, slots=True)
class _Block:
    """What one blank-line-terminated block of the stream said."""

    #: It had a ``data`` field: WHATWG dispatches it as an event.
    dispatched: bool
    #: Its own ``id:`` field (not the decoder's buffer), or ``None``.
    id: str | None
    event: str
    data: str
    #: Its ``retry:`` field, if that was ASCII digits (WHATWG ignores anything else).
    retry_ms: int | None


class _StreamDecoder:
    """Bytes of one stream in, blocks out: UTF-8 (WHATWG: decoded with
    replacement, one leading BOM dropped), httpx-sse's line splitter (CR, LF,
    CRLF, also across chunks) and its field decoder, plus per block whether
    it had a ``data`` field and its own ``id`` and ``retry`` fields."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._lines = SSELineDecoder()
        self._fields = SSEDecoder()
        self._has_data = False
        self._id: str | None = None
        self._retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[_Block]:
        text = self._text.decode(chunk)
        if not text:
            return []
        blocks = []
        for line in self._lines.decode(text):
            if line:
                self._note(line)
                self._fields.decode(line)  # None: only a blank line ends a block
                continue
            sse = self._fields.decode(line)  # None when the block set nothing
            blocks.append(
                _Block(
                    dispatched=self._has_data,
                    id=self._id,
                    event=sse.event if sse is not None else "message",
                    data=sse.data if sse is not None else "",
                    retry_ms=self._retry_ms,
                )
            )
            self._has_data, self._id, self._retry_ms = False, None, None
        return blocks

    def _note(self, line: str) -> None:
        # WHATWG: the field name is everything before the first colon; one
        # space after it is not part of the value; a line starting with a
        # colon is a comment (its name is empty, so matches nothing below).
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._has_data = True
        elif name == "id" and "\0" not in value:
            # WHATWG: "If the field value does not contain U+0000 NULL, then
            # set the last event ID buffer to the field value."
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            # WHATWG: "If the field value consists of only ASCII digits ..."
            self._retry_ms = int(value)
