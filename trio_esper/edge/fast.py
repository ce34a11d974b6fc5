"""The fast forms: plain HTTP/1.1 ``POST /publish/{topic}``,
``GET /subscribe/{topic}``, and Mercure's ``GET /.well-known/mercure`` (a
subscribe, unless the subscriptions API announces subscriptions) and ``POST
/.well-known/mercure`` (a publish), served by the connection's own task.

While the requests on a connection are fast forms (what :func:`..h1.read_request`
takes), :meth:`FastForms.serve` answers them with the same code as the Quart
routes (:mod:`..endpoints`), answering the same bytes (tests/test_differential.py).
A subscribe's stream is served in the same task until it ends; the
connection then closes. Bytes a client sends during its stream (pipelined
requests included) are read and discarded, never executed. At the first
request the reader declines, the bytes read so far go back to the edge,
which hands them to Hypercorn (:mod:`.bridge`).

Owns nothing beyond one request at a time: the connection is its caller's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import trio

from .. import endpoints, h1, logs
from ..config import Config
from ..errors import EsperError, RequestTimeout
from ..hub import Hub, Subscribing, Subscription
from ..mercure import publish as mercure_publish
from ..mercure import subscribe as mercure
from ..metrics import Metrics
from .answers import Answers, closes
from .connection import Connection, Expired

log = logging.getLogger("trio_esper")

#: A connection's errors when the peer is gone or the socket was closed under it.
GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


def whole_head(buffer: bytes) -> h1.Sentinel:
    """A reading of a head that only waits for it to be whole (for Hypercorn)."""
    return h1.DECLINE if h1.head_complete(buffer) else h1.NEED_DATA


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs more than the rest of building it.
@dataclass(slots=True)
class _Opened:
    """A subscribe request checked, its stream not yet open."""

    plan: endpoints.Stream
    cors: endpoints.Headers
    close: bool
    """The connection ends with the stream (the client sent ``Connection: close``)."""


@dataclass(slots=True)
class _Refused:
    """A subscribe request refused: its answer, and whether the client keeps
    the connection."""

    answer: endpoints.Answer
    keep_alive: bool


class FastForms:
    """Serves the fast forms of one edge's connections."""

    def __init__(self, config: Config, hub: Hub, metrics: Metrics | None) -> None:
        self._config = config
        self._hub = hub
        self._metrics = metrics
        self._answers = Answers(config)

    async def serve(self, connection: Connection) -> bytes | None:
        """Serve ``connection``'s requests while they are fast forms.

        Returns the bytes read but not consumed -- the start of the first
        request declined -- for Hypercorn; or ``None`` once the connection is
        done (closed or reset by the peer, timed out, ``Connection: close``,
        a stream ended, or shutdown).
        """
        config = self._config
        buffer = b""
        # Whether the task yielded since its last read: a task just started
        # has had no step yet, so its first request is read without one.
        checkpointed = True
        while True:
            read = await self.read_head(connection, buffer, self._parse_head, checkpointed)
            checkpointed = False
            if read is None:
                return None
            buffer, request = read
            del read  # an open stream keeps nothing of its request (below)
            if not isinstance(request, h1.Request):
                return buffer  # declined, or cut short: Hypercorn answers as it would
            if request.route == "subscribe":
                buffer = buffer[request.head_bytes :]
                opened = self._open_stream(request, connection.address)
                del request  # an open stream keeps nothing of its request
                if isinstance(opened, _Refused):
                    if not await self.send_answer(connection, opened.answer, opened.keep_alive):
                        return None
                    continue
                await self._subscribe(connection, opened)
                return None
            if request.route == "mercure":
                buffer = buffer[request.head_bytes :]
                if not await self._mercure(connection, request):
                    return None
                checkpointed = True
                continue
            # The body: a stall timeout, and a minimum average rate.
            end = request.head_bytes + request.content_length
            now = trio.current_time()
            body_deadline = (
                now
                + config.request_body_timeout_seconds
                + request.content_length / config.request_body_min_rate_bytes
            )
            while len(buffer) < end:
                deadline = min(now + config.request_body_timeout_seconds, body_deadline)
                try:
                    data = await connection.receive(deadline)
                except Expired:
                    await self.refuse(connection, RequestTimeout("request body too slow"))
                    return None
                except GONE:
                    return None
                if not data:
                    return buffer  # Hypercorn answers a truncated body as the route would
                buffer += data
                now = trio.current_time()
            body, buffer = buffer[request.head_bytes : end], buffer[end:]
            if request.route == "mercure-publish":
                if not await self._mercure_publish(connection, request, body):
                    return None
            elif not await self._publish(connection, request, body):
                return None
            checkpointed = True

    def _parse_head(self, buffer: bytes) -> h1.Request | h1.Sentinel:
        """The fast forms' reading of a head; a head they decline is read
        whole all the same, so the head timeout holds for Hypercorn's too."""
        request = h1.read_request(buffer, self._config.max_body_bytes)
        if (
            isinstance(request, h1.Request)
            and request.route == "mercure"
            and self._config.mercure_subscriptions
        ):
            request = h1.DECLINE  # the Quart route announces each subscription
        if request is h1.DECLINE and not h1.head_complete(buffer):
            return h1.NEED_DATA
        return request

    async def read_head(
        self,
        connection: Connection,
        buffer: bytes,
        parse: Callable[[bytes], h1.Request | h1.Sentinel] = whole_head,
        checkpointed: bool = False,
    ) -> tuple[bytes, h1.Request | h1.Sentinel] | None:
        """Read a request head: until ``parse(buffer)`` is not
        :data:`~..h1.NEED_DATA` (by default: until the head is whole, for
        Hypercorn). Idle until its first byte (the keep-alive timeout), then
        the head timeout (408). ``checkpointed``: as for :meth:`Connection.receive`.

        Returns the buffer and what ``parse`` made of it (``NEED_DATA`` if
        the peer ended its side mid-head: Hypercorn answers that); ``None``
        if the connection is done (closed idle, reset, timed out, shutdown).
        """
        config = self._config
        deadline = trio.current_time() + (
            config.request_head_timeout_seconds if buffer else config.keep_alive_seconds
        )
        while (parsed := parse(buffer)) is h1.NEED_DATA:
            if not buffer and self._hub.closing:
                return None
            try:
                data = await connection.receive(
                    deadline, idle=not buffer, checkpointed=checkpointed
                )
            except Expired:
                if buffer:
                    await self.refuse(connection, RequestTimeout("request head too slow"))
                return None
            except GONE:
                return None
            if not data:
                return (buffer, parsed) if buffer else None
            if not buffer:
                deadline = trio.current_time() + config.request_head_timeout_seconds
            buffer += data
            checkpointed = False
        return buffer, parsed

    async def refuse(self, connection: Connection, error: EsperError) -> None:
        """Answer ``error`` (the connection then closes)."""
        await self.send_answer(connection, endpoints.error_answer(error, []), keep_alive=False)

    async def send_answer(
        self, connection: Connection, answer: endpoints.Answer, keep_alive: bool
    ) -> bool:
        """Write ``answer``; whether the connection stays open."""
        if answer.status >= 400 and self._metrics is not None:
            self._metrics.error_answered(answer.status)
        keep = keep_alive and not self._hub.closing and not closes(answer)
        try:
            await connection.write_all(self._answers.head(answer, close=not keep) + answer.body)
        except GONE:
            return False
        return keep

    async def _publish(self, connection: Connection, request: h1.Request, body: bytes) -> bool:
        """Answer a publish; whether the connection stays open. A checkpoint."""
        config = self._config
        cors = endpoints.cors_headers(config, request.header(b"origin"))
        publish = endpoints.PublishRequest(
            request.topic,
            body,
            request.query,
            content_type=request.header(b"content-type"),
            authorization=request.header(b"authorization"),
            cookie=request.header(b"cookie"),
            budget=connection.budget,
        )
        try:
            answer = endpoints.json_answer(
                await endpoints.publish(config, self._hub, publish), cors
            )
        except EsperError as error:
            logs.auth_failed(error, client=connection.address, topic=request.topic)
            answer = endpoints.error_answer(error, cors)
            # Hub.publish is a checkpoint; so is a refusal, so that a client
            # pipelining bad requests cannot keep the task from yielding.
            await trio.lowlevel.checkpoint()
        return await self.send_answer(connection, answer, request.keep_alive)

    async def _mercure_publish(
        self, connection: Connection, request: h1.Request, body: bytes
    ) -> bool:
        """Answer a Mercure publish; whether the connection stays open. A checkpoint."""
        config = self._config
        origin = request.header(b"origin")
        authorization = request.header(b"authorization")
        published = mercure_publish.Request(
            body,
            request.query,
            content_type=request.header(b"content-type"),
            authorization=() if authorization is None else (authorization,),
            origin=origin,
            referer=request.header(b"referer"),
            budget=connection.budget,
        )
        try:
            answer = await mercure_publish.publish(config, self._hub, published)
        except EsperError as error:
            logs.auth_failed(error, client=connection.address, topic=None)
            answer = endpoints.error_answer(error, endpoints.cors_headers(config, origin))
            await trio.lowlevel.checkpoint()  # as _publish: a refusal yields too
        return await self.send_answer(connection, answer, request.keep_alive)

    def _open_stream(self, request: h1.Request, client: str) -> _Opened | _Refused:
        """Check ``client``'s subscribe request: where its stream starts, or its refusal."""
        config = self._config
        cors = endpoints.cors_headers(config, request.header(b"origin"))
        subscribe = endpoints.SubscribeRequest(
            request.topic,
            request.query,
            authorization=request.header(b"authorization"),
            cookie=request.header(b"cookie"),
            last_event_id=request.header(b"last-event-id"),
        )
        try:
            plan = endpoints.plan_subscribe(config, subscribe)
        except EsperError as error:
            logs.auth_failed(error, client=client, topic=request.topic)
            return _Refused(endpoints.error_answer(error, cors), request.keep_alive)
        return _Opened(plan, cors, close=not request.keep_alive)

    async def _subscribe(self, connection: Connection, opened: _Opened) -> None:
        """Serve an esper subscriber's stream (see :meth:`_stream`)."""
        plan = opened.plan
        hub = self._hub

        async def admitted() -> None:  # as the Quart route checks, in its order
            hub.admit(plan.topic, connection.address)
            await endpoints.check_store(hub)

        await self._stream(
            connection,
            hub.subscribe(plan.topic, frame=h1.chunk, client=connection.address),
            lambda: self._answers.stream_head(opened.cors, opened.close),
            # Most subscribers do not resume: no generator to make and close for them.
            (lambda subscription: endpoints.replay_pages(hub, subscription, plan))
            if plan.resume
            else None,
            error_cors=opened.cors,
            topic=plan.topic,
            deadline=endpoints.expiry_deadline(plan.expires_at),
            expired=endpoints.EXPIRED_FRAME,
            admitted=admitted,
        )

    async def _mercure(self, connection: Connection, request: h1.Request) -> bool:
        """Serve a Mercure subscribe (see :meth:`_stream`); whether the
        connection stays open (after a refusal only)."""
        config, hub = self._config, self._hub
        origin = request.header(b"origin")
        authorization, cookie = request.header(b"authorization"), request.header(b"cookie")
        try:
            plan = await mercure.plan(
                config,
                hub,
                mercure.Request(
                    request.query,
                    authorization=() if authorization is None else (authorization,),
                    cookies=() if cookie is None else (cookie,),
                    origin=origin,
                    referer=request.header(b"referer"),
                    last_event_id=request.header(b"last-event-id"),
                    client=connection.address,
                ),
            )
        except EsperError as error:
            logs.auth_failed(error, client=connection.address, topic=None)
            cors = endpoints.cors_headers(config, origin)
            return await self.send_answer(
                connection, endpoints.error_answer(error, cors), request.keep_alive
            )
        close = not request.keep_alive
        await self._stream(
            connection,
            hub.subscribe_routed(plan.selection, frame=h1.chunk, client=connection.address),
            lambda: self._answers.any_stream_head(plan.headers, close),
            lambda subscription: mercure.replay_pages(hub, subscription, plan),
            error_cors=endpoints.cors_headers(config, origin),
            topic="Mercure",
            deadline=endpoints.expiry_deadline(plan.expires_at),
        )
        return False

    async def _stream(
        self,
        connection: Connection,
        subscribing: Subscribing,
        head: Callable[[], bytes],
        replay: Callable[[Subscription], AsyncGenerator[bytes, None]] | None,
        *,
        error_cors: endpoints.Headers,
        topic: str,
        deadline: float = math.inf,
        expired: bytes = b"",
        admitted: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Serve a subscriber's stream until it ends, the peer leaves, or
        ``deadline`` (its token's expiry) passes, then end the body (the
        connection then closes). ``head()`` is the stream's response head,
        ``replay`` what it resumes from (``None``: nothing), ``expired`` its last frame at
        ``deadline``; ``admitted()`` raises if the subscription must be
        refused before it opens.

        The task parks on the socket (to see the peer leave) rather than on
        the queue: while it is parked the topic writes to the socket directly
        (:meth:`Connection.attach`), and only what the socket does not take
        at once is queued and wakes this task to write it.
        """
        started = False
        try:
            if admitted is not None:
                await admitted()
            async with subscribing as subscription:
                await connection.write_all(head())
                started = True
                if replay is not None:
                    async with aclosing(replay(subscription)) as pages:
                        async for page in pages:
                            await connection.write_all(h1.chunk(page))
                connection.attach(subscription)
                try:
                    while True:
                        with trio.CancelScope(deadline=deadline) as parked:
                            if subscription.park(parked.cancel):
                                if not await connection.discard_some():
                                    return  # the peer closed its end
                                continue
                        subscription.unpark()
                        if trio.current_time() >= deadline:
                            if expired:
                                await connection.write_all(h1.chunk(expired))
                            break
                        try:
                            chunk = subscription.take_nowait()
                        except trio.WouldBlock:
                            continue
                        except trio.EndOfChannel:
                            break
                        await connection.write_all(chunk)
                    if not subscription.dropped:
                        await connection.write_all(h1.LAST_CHUNK)
                finally:
                    connection.detach()
        except EsperError as error:
            if started:
                # A history read failed: end the stream; the client
                # reconnects and resumes.
                log.warning(
                    "stream to %s on %s ended: %s",
                    connection.peer,
                    topic,
                    error.reason,
                    extra={
                        "event": "stream_failed",
                        "client": connection.address,
                        "topic": topic,
                        "reason": error.reason,
                    },
                )
            else:  # refused on entry: the broker is shutting down
                await self.send_answer(
                    connection, endpoints.error_answer(error, error_cors), keep_alive=False
                )
        except GONE:
            pass  # reset, or interrupted by a drop or by shutdown
