"""The plain-HTTP port of ``--acme-http-port``: HTTP-01 validations (RFC 8555,
section 8.3) are answered from the storage directory, and every other request
is redirected to ``https://``. One request a connection, then it is closed.

Bounded as the main port is: a connection gets ``--request-head-timeout``
from its accept for its whole exchange, and an address holding
``--max-connections-per-address`` connections here has its next one closed
at once (no answer: the cheapest refusal, as on the TLS port). The count is
this port's own.

Owns: its listening sockets and each connection, from accept to close; a
connection's failure (a reset, bytes that are not HTTP) ends it alone.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections import Counter

import h11
import trio

from ..config import Config
from .storage import Storage, http_token_name

log = logging.getLogger("trio_esper")

#: RFC 8555, section 8.3: where the validation looks.
CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
#: A request head is a few hundred bytes; nothing here takes a body.
MAX_HEAD_BYTES = 8 * 1024
RECEIVE_BYTES = 4096


async def serve_http01(
    config: Config,
    storage: Storage,
    tls_port: int,
    *,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``config.acme_http_port`` and answer until cancelled; reports
    the bound port, or ``None`` (logged) if it cannot be bound: TLS-ALPN-01
    still works without it."""
    try:
        listener = await _listen(config.bind, config.acme_http_port)
    except OSError as error:
        log.warning(
            "cannot listen on port %d for ACME HTTP-01 validations and redirects (%s): "
            "TLS-ALPN-01 on the TLS port only",
            config.acme_http_port,
            error.strerror or error,
            extra={"event": "acme_http_unavailable", "port": config.acme_http_port},
        )
        task_status.started(None)
        return
    task_status.started(int(listener.socket.getsockname()[1]))
    handler = functools.partial(_serve_counted, config, storage, tls_port, Counter())
    await trio.serve_listeners(handler, [listener])


async def _listen(host: str, port: int) -> trio.SocketListener:
    """A listener on ``host``:``port`` that every worker process of
    ``--threads`` can open too (``SO_REUSEPORT``: the kernel spreads the
    connections, and each worker answers from the same storage).

    Raises:
        OSError: the address cannot be resolved or bound.
    """
    family, kind, proto, _, address = (
        await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    )[0]
    sock = trio.socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind(address)
        sock.listen()
    except OSError:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _serve_counted(
    config: Config,
    storage: Storage,
    tls_port: int,
    held: Counter[str],
    stream: trio.SocketStream,
) -> None:
    """One connection, counted in ``held`` (connections open, per client
    address) while it is served; closed at once if its address holds
    ``config.max_connections_per_address`` already."""
    try:
        address = str(stream.socket.getpeername()[0])
    except OSError:  # reset before it was served
        await stream.aclose()
        return
    if held[address] >= config.max_connections_per_address:
        # Debug only: a client could otherwise flood the log at will.
        log.debug(
            "refused a connection to the ACME HTTP port from %s: its limit of connections "
            "is reached",
            address,
            extra={"event": "connection_refused", "client": address},
        )
        await stream.aclose()
        return
    held[address] += 1
    try:
        await _serve_one(config, storage, tls_port, stream)
    finally:
        held[address] -= 1
        if not held[address]:
            del held[address]


async def _serve_one(
    config: Config, storage: Storage, tls_port: int, stream: trio.SocketStream
) -> None:
    """One connection: read a request head, answer it, close; all within
    ``config.request_head_timeout_seconds`` of its accept."""
    try:
        async with stream:
            with trio.move_on_after(config.request_head_timeout_seconds):
                connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
                event = connection.next_event()
                while event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(RECEIVE_BYTES))
                    event = connection.next_event()
                if not isinstance(event, h11.Request):
                    return
                status, headers, body = await _answer(config, storage, tls_port, event)
                headers = [*headers, (b"content-length", b"%d" % len(body))]
                headers.append((b"connection", b"close"))
                data = connection.send(h11.Response(status_code=status, headers=headers))
                if event.method != b"HEAD":
                    data += connection.send(h11.Data(data=body))
                data += connection.send(h11.EndOfMessage())
                await stream.send_all(data)
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return  # the client's doing, and any client can: not logged


async def _answer(
    config: Config, storage: Storage, tls_port: int, request: h11.Request
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for ``request``."""
    target = request.target
    if target.startswith(CHALLENGE_PREFIX):
        name = http_token_name(target[len(CHALLENGE_PREFIX) :].decode("ascii", "replace"))
        answer = None if name is None else await trio.to_thread.run_sync(storage.read, name)
        if answer is None:
            return 404, [(b"content-type", b"text/plain")], b"no such challenge\n"
        return 200, [(b"content-type", b"application/octet-stream")], answer
    host = dict(request.headers).get(b"host", b"").decode("ascii", "replace").lower()
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    # Only to a name the broker serves: the Host header is the client's to choose.
    if host not in config.acme_domains:
        host = config.acme_domains[0]
    authority = host if tls_port == 443 else f"{host}:{tls_port}"
    if not target.startswith(b"/"):
        target = b"/"
    location = b"https://" + authority.encode() + target
    return 308, [(b"location", location), (b"content-type", b"text/plain")], b"use https\n"
