"""TLS: the server's context, and each connection's handshake and close.

With a TLS context (``--certfile``/``--keyfile``) the edge wraps every
connection's socket in a :class:`trio.SSLStream`, does the handshake within
the request-head timeout, and hands the encrypted stream to Hypercorn, which
speaks HTTP/2 if ALPN chose ``h2`` and HTTP/1.1 otherwise. The fast forms
read and write the socket's descriptor directly, so they serve plaintext
connections only (docs: "TLS and HTTP/2" has the reasons).

Owns: each connection's TLS stream, from its handshake to its
``close_notify`` (within :data:`TLS_CLOSE_SECONDS`), and the handshakes in
progress, which shutdown cuts short. The socket under it is the
connection's (:mod:`.connection`).

A handshake that fails or times out (a scanner, a reset) is logged at debug
level only: any client can cause one at will. Plain HTTP sent to the TLS port
gets a 400 that says to use https, as nginx answers it, rather than an empty
reply (:func:`is_plain_http`); logged at debug level too.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from wsgiref.handlers import format_date_time

import trio

from .. import endpoints, h1
from ..config import Config, ConfigError
from ..errors import BadRequest
from .answers import encode_headers
from .bridge import Hypercorn, TLSStream
from .connection import Connection

log = logging.getLogger("trio_esper")

#: ALPN protocols offered, preferred first (RFC 7301): a browser opens at most
#: six HTTP/1.1 connections per origin, while over HTTP/2 every EventSource of
#: a page shares one.
ALPN_PROTOCOLS = ("h2", "http/1.1")
#: RFC 9113, section 9.2.2: TLS 1.2 cipher suites for HTTP/2 must be
#: ephemeral and AEAD (Appendix A lists the rest as prohibited); TLS 1.3's are.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: Closing a TLS connection writes ``close_notify``; a peer that stopped
#: reading gets this long before the socket is closed without it.
TLS_CLOSE_SECONDS = 1.0

#: What plain HTTP sent to the TLS port is answered (nginx's words, then how to fix it).
PLAIN_HTTP_REASON = (
    "The plain HTTP request was sent to HTTPS port: this port speaks TLS only, "
    "use https:// in the URL"
)

#: A context chosen per connection, before its handshake (ACME's TLS-ALPN-01
#: and certificate renewal: acme/manager.py); ``None``: close the connection.
ChooseContext = Callable[[Connection], Awaitable[ssl.SSLContext | None]]


def is_plain_http(first: bytes) -> bool:
    """Whether a connection's first bytes are plain HTTP rather than TLS. A
    TLS record opens with its ContentType, 20 to 24 (RFC 8446, section 5.1;
    an SSLv2-compatible ClientHello sets the top bit), never an ASCII capital,
    which opens every HTTP method (RFC 9110, section 9.1: a ``token``, the
    registered methods in capitals) and HTTP/2's ``PRI`` preface."""
    return b"A"[0] <= first[0] <= b"Z"[0] if first else False


def load_tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context for ``config.certfile`` and ``config.keyfile``
    (``None`` without either): TLS 1.2 or later, ALPN ``h2`` then ``http/1.1``.

    Raises:
        ConfigError: only one of the two is set; a file cannot be read,
            holds no PEM certificate or unencrypted PEM private key, or the
            key is not the certificate's.
    """
    certfile, keyfile = config.certfile, config.keyfile
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        given, missing = ("certfile", "keyfile") if keyfile is None else ("keyfile", "certfile")
        raise ConfigError(
            f"{given} is set but {missing} is not (--{missing}, ESPER_{missing.upper()}): "
            "TLS needs both"
        )
    certificate, key = _read_pem(certfile), _read_pem(keyfile)
    if b"-----BEGIN CERTIFICATE-----" not in certificate:
        raise ConfigError(f"certfile {certfile} holds no PEM certificate")
    # PKCS#8 ("BEGIN ENCRYPTED PRIVATE KEY") and OpenSSL's legacy PEM encryption.
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in key or b"Proc-Type: 4,ENCRYPTED" in key:
        raise ConfigError(
            f"keyfile {keyfile} is encrypted: the broker takes an unencrypted key "
            "(protect it with file permissions)"
        )
    if b"PRIVATE KEY-----" not in key:
        raise ConfigError(f"keyfile {keyfile} holds no PEM private key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # RFC 9113, section 9.2: TLS 1.2 or later, without compression.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        # A password callback that refuses: OpenSSL would otherwise prompt
        # on the terminal for a key encrypted in a form not recognised above.
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except _PasswordNeeded:
        raise ConfigError(f"keyfile {keyfile} is encrypted") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"keyfile {keyfile} is not the key of the certificate in certfile {certfile}"
            ) from None
        raise ConfigError(f"certfile {certfile} and keyfile {keyfile}: {exc}") from None
    except OSError as exc:  # removed or changed since it was read
        raise ConfigError(f"certfile {certfile} and keyfile {keyfile}: {exc.strerror}") from None
    return context


class _PasswordNeeded(Exception):
    pass


def _no_password() -> bytes:
    raise _PasswordNeeded


def _read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


class TLS:
    """Serves one edge's connections over TLS."""

    def __init__(self, config: Config, context: ssl.SSLContext | ChooseContext) -> None:
        self._config = config
        self._context = context
        #: TLS handshakes in progress: shutdown cancels them.
        self._handshakes: set[trio.CancelScope] = set()
        self._closing = False

    async def serve(self, connection: Connection, hypercorn: Hypercorn) -> None:
        """Handshake, then serve the connection through Hypercorn (HTTP/2 if
        ALPN chose ``h2``) and close the TLS stream. Without a handshake there
        is nothing to close but the socket (its owner does): a stream whose
        handshake never ran would try it in ``aclose``."""
        # The request-head timeout bounds all that comes before Hypercorn's own.
        deadline = trio.current_time() + self._config.request_head_timeout_seconds
        if await self._answered_plain_http(connection, deadline):
            return
        context = self._context
        if not isinstance(context, ssl.SSLContext):
            # Its peek at the ClientHello shares the deadline: a silent
            # client is closed after one request-head timeout in all.
            chosen = None
            with self._until(deadline):
                chosen = await context(connection)
            if chosen is None:
                return
            context = chosen
        tls = trio.SSLStream(connection, context, server_side=True)
        if not await self._handshake(connection, tls, deadline):
            return
        try:
            await hypercorn.serve(TLSStream(tls), connection.budget)
        finally:
            await self._close(connection, tls)

    def shut_down(self) -> None:
        """Cut the handshakes in progress short, and start no more."""
        self._closing = True
        for handshake in self._handshakes:
            handshake.cancel()

    @contextmanager
    def _until(self, deadline: float) -> Iterator[trio.CancelScope]:
        """A scope that ends at ``deadline``, or at once when the edge shuts
        down (:meth:`shut_down`): each wait before Hypercorn's own runs in one."""
        with trio.move_on_at(deadline) as scope:
            if self._closing:
                scope.cancel()
            self._handshakes.add(scope)
            try:
                yield scope
            finally:
                self._handshakes.discard(scope)

    async def _answered_plain_http(self, connection: Connection, deadline: float) -> bool:
        """Whether the client spoke plain HTTP to this TLS-only port, which is
        then answered: 400 with nginx's reason, and the close (its request
        drained for a moment, so the answer is not lost to a reset). Waits
        for the first bytes until ``deadline``; silence, the end of input and
        anything else are the handshake's to judge."""
        if self._closing:
            return False
        with self._until(deadline) as scope:
            try:
                first = await connection.peek(1)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        if scope.cancelled_caught or not is_plain_http(first):
            return False
        log.debug(
            "plain HTTP from %s to the TLS port: answered 400",
            connection.peer,
            extra={"event": "tls_plain_http", "client": connection.address},
        )
        answer = endpoints.error_answer(BadRequest(PLAIN_HTTP_REASON), [])
        headers = [*answer.headers, ("content-length", str(len(answer.body)))]
        date = format_date_time(time.time()).encode("ascii")
        head = h1.response_head(answer.status, encode_headers(headers), date=date, close=True)
        with (
            trio.move_on_after(TLS_CLOSE_SECONDS),
            suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await connection.write_all(head + answer.body)
        await connection.linger()
        return True

    async def _handshake(
        self, connection: Connection, tls: trio.SSLStream[Connection], deadline: float
    ) -> bool:
        """Do the TLS handshake by ``deadline`` (the request-head timeout);
        whether it succeeded. A failure is the client's (a scanner, plaintext HTTP, a
        reset, no shared protocol version or cipher): logged at debug level."""
        if self._closing:
            return False
        with self._until(deadline) as scope:
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                reason = str(error.__cause__ or error)
                outcome = f"failed: {reason}"
            else:
                return True
        if scope.cancelled_caught:
            reason = outcome = "cut short by shutdown" if self._closing else "timed out"
        log.debug(
            "TLS handshake with %s %s",
            connection.peer,
            outcome,
            extra={"event": "tls_failed", "client": connection.address, "reason": reason},
        )
        return False

    async def _close(self, connection: Connection, tls: trio.SSLStream[Connection]) -> None:
        """Close the TLS stream: ``close_notify`` (RFC 8446, section 6.1), then
        the socket; within :data:`TLS_CLOSE_SECONDS` even when cancelled or
        the peer stopped reading. A peer still sending (a body after 413)
        gets the lingering close instead, so the answer is not lost to a reset."""
        await connection.linger()
        with (
            trio.CancelScope(deadline=trio.current_time() + TLS_CLOSE_SECONDS, shield=True),
            suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await tls.aclose()
