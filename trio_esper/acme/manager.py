"""The certificate the TLS port serves, kept valid through ACME.

:class:`Certificates` owns the certificate: it loads the stored one at
start-up, orders one when none is valid, renews it in the background, and
answers TLS-ALPN-01 validations on the TLS port (:meth:`Certificates.context_for`,
which the edge calls before each handshake). A new certificate is a new
:class:`ssl.SSLContext`, which new handshakes get; a connection keeps the one
it was made with, so no open stream is dropped.

One process orders, the holder of the order lock; every other process
serving the same names (``--threads``, other nodes) loads the certificate it
gets and answers the validations it starts (:mod:`.shared` says how).

Failure: an order that fails is logged with the ACME server's problem
document and retried after :data:`RETRY_FIRST_SECONDS`, doubling up to
:data:`RETRY_MAX_SECONDS`; the certificate held stays served until it expires.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import ssl
import time
from dataclasses import dataclass, replace
from typing import Any

import trio
from cryptography import x509

from ..config import Config, ConfigError
from ..edge.connection import Connection
from ..edge.tls import load_tls_context
from . import hello
from .shared import SHARE_ERRORS as _SHARE_ERRORS
from .shared import Share
from .storage import Storage, tls_alpn_name

log = logging.getLogger("trio_esper")

#: After a failed order; doubled after each failure up to :data:`RETRY_MAX_SECONDS`.
#: Let's Encrypt allows 5 failed validations per name an hour: the doubling stays under it.
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 3600.0
#: Renew when this share of the lifetime remains, or sooner if the ACME server's
#: renewal information says so.
RENEW_REMAINING = 1 / 3
#: How often renewal information is asked for at most (the server's Retry-After
#: may say sooner), and at least a tenth of the certificate's lifetime.
CHECK_MAX_SECONDS = 6 * 3600.0
#: While a TLS-ALPN-01 validation is pending, a ClientHello still incomplete
#: is peeked at again after this long.
PEEK_SECONDS = 0.005


@dataclass(frozen=True, slots=True)
class Held:
    """A certificate loaded, with what is served with it."""

    context: ssl.SSLContext
    names: frozenset[str]
    serial: str
    not_before: float
    not_after: float
    issuer: str

    @property
    def lifetime(self) -> float:
        return self.not_after - self.not_before


def _load(config: Config, path: str) -> Held:
    """The certificate and key in ``path`` (one PEM file) as a server context.

    Raises:
        ConfigError: the file is missing or holds no certificate and key.
    """
    context = load_tls_context(replace(config, certfile=path, keyfile=path, acme_domains=()))
    assert context is not None
    with open(path, "rb") as file:
        leaf = x509.load_pem_x509_certificate(file.read())
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = frozenset(n.lower() for n in names.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = frozenset()
    return Held(
        context,
        dns,
        format(leaf.serial_number, "x"),
        leaf.not_valid_before_utc.timestamp(),
        leaf.not_valid_after_utc.timestamp(),
        leaf.issuer.rfc4514_string(),
    )


class Certificates:
    """The TLS port's certificate for ``config.acme_domains``; see the module.

    Resource handling: :meth:`run` runs for as long as the broker serves, in
    the broker's nursery; cancelling it leaves the files as they are.
    """

    def __init__(self, config: Config, storage: Storage, share: Share) -> None:
        self._config = config
        self._storage = storage
        self._share = share
        self._names = frozenset(config.acme_domains)
        self._held: Held | None = None
        #: Served until there is a certificate, so that a health check (which
        #: does not verify) reaches ``/ready`` and hears why not.
        self._placeholder = self._make_placeholder()
        self._modified: int | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._next_renewal: float | None = None
        #: When the order loop looks again (time.time()).
        self._wake = 0.0
        #: Whether this process serves the HTTP-01 port (``--acme-http-port``, bound):
        #: HTTP-01 is answered then, else TLS-ALPN-01 alone.
        self.http01 = False
        #: TLS-ALPN-01 contexts by name, with the challenge file's mtime.
        self._alpn: dict[str, tuple[int, ssl.SSLContext]] = {}
        self._alpn_directory = storage.path / "challenges" / "tls-alpn-01"
        self._alpn_listing: tuple[int, frozenset[str]] = (0, frozenset())

    # --- what the rest of the broker reads -------------------------------------

    @property
    def held(self) -> Held | None:
        return self._held

    def readiness(self) -> str | None:
        """``None`` if the certificate served is valid now, else why not."""
        held = self._held
        if held is None:
            why = f": {self._last_error}" if self._last_error else ""
            return f"no certificate yet for {', '.join(sorted(self._names))}{why}"
        if held.not_after <= time.time():
            return f"the certificate expired at {_when(held.not_after)}"
        return None

    def statistics(self) -> dict[str, Any]:
        """``/stats``'s ``certificate`` section."""
        held = self._held
        return {
            "names": sorted(self._names),
            "serial": None if held is None else held.serial,
            "issuer": None if held is None else held.issuer,
            "not_before": None if held is None else _when(held.not_before),
            "not_after": None if held is None else _when(held.not_after),
            "expires_in_seconds": None if held is None else round(held.not_after - time.time()),
            "next_renewal": None if self._next_renewal is None else _when(self._next_renewal),
            "failures": self._failures,
            "last_error": self._last_error,
        }

    @property
    def failures(self) -> int:
        """Orders (and renewal-information checks) that failed since start."""
        return self._failures

    async def context_for(self, connection: Connection) -> ssl.SSLContext | None:
        """The context for a new connection's handshake: the TLS-ALPN-01
        challenge's if the client asks for it, else the certificate's (the
        placeholder's until there is one). The edge bounds the wait for the
        ClientHello by the connection's request-head deadline (edge/tls.py)."""
        served = self._placeholder if self._held is None else self._held.context
        pending = self._pending_alpn()
        if not pending:
            return served
        offered = await _peek_hello(connection)
        if offered is None or hello.ACME_TLS_ALPN not in offered.protocols:
            return served
        name = offered.server_name
        if name not in pending:
            return served
        return await trio.to_thread.run_sync(self._alpn_context, name)

    # --- the work ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the stored certificate, report started, then keep the
        certificate valid: order and renew while holding the order lock, else
        follow the files the holder writes."""
        await trio.to_thread.run_sync(self._reload)
        task_status.started()
        try:
            while True:
                if await self._share.try_lead():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._order_and_renew)
                        await self._share.keep_leading()
                        nursery.cancel_scope.cancel()
                await self._share.follow()
                await trio.to_thread.run_sync(self._reload)
                await trio.sleep(self._share.follow_seconds)
        finally:
            with trio.CancelScope(shield=True):
                await self._share.release()

    async def _order_and_renew(self) -> None:
        """Order and renew, for as long as the broker runs. Calls to the ACME
        server (each bounded by the library's timeouts) are abandoned to their
        thread when the broker stops: shutdown does not wait for them."""
        from .order import OrderFailed  # the acme library loads only with ACME on

        retry = RETRY_FIRST_SECONDS
        session = None
        while True:
            now = time.time()
            try:
                if session is None:
                    session = await self._open_session()
                reason = await self._why_order(session, now)
                if reason is not None:
                    log.info(
                        "ordering a certificate for %s from %s: %s",
                        ", ".join(sorted(self._names)),
                        self._config.acme_directory,
                        reason,
                        extra={"event": "acme_order", "names": sorted(self._names)},
                    )
                    await self._order(session)
            except OrderFailed as failure:
                session = None  # a new nonce pool, directory and account next time
                self._failures += 1
                self._last_error = str(failure)
                log.error(  # noqa: TRY400 (one line: the failure says it all)
                    "ACME for %s failed, %s; serving %s; retrying in %g s",
                    ", ".join(sorted(self._names)),
                    failure,
                    "no certificate" if self._held is None else f"serial {self._held.serial}",
                    retry,
                    extra={
                        "event": "acme_failed",
                        "names": sorted(self._names),
                        "problem": failure.problem,
                        "retry_seconds": retry,
                    },
                )
                await trio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)
                continue
            retry = RETRY_FIRST_SECONDS
            self._last_error = None
            await trio.sleep_until(trio.current_time() + max(0.0, self._wake - time.time()))

    async def _open_session(self) -> Any:
        from .order import OrderFailed, Session, new_key_pem

        own = await trio.to_thread.run_sync(self._storage.read, "account.key")
        if own is None:
            own = await trio.to_thread.run_sync(new_key_pem)
            await trio.to_thread.run_sync(self._storage.write, "account.key", own)
        try:
            key = await self._share.account_key(own)
        except _SHARE_ERRORS as error:
            raise OrderFailed(f"sharing the account key: {type(error).__name__}") from None
        if key != own:
            await trio.to_thread.run_sync(self._storage.write, "account.key", key)

        def open_session() -> Session:
            return Session(
                self._config.acme_directory,
                key,
                email=self._config.acme_email,
                ca_bundle=self._config.acme_ca_bundle,
            )

        return await trio.to_thread.run_sync(open_session, abandon_on_cancel=True)

    async def _why_order(self, session: Any, now: float) -> str | None:
        """Why a certificate must be ordered now (``None``: not now); sets
        :attr:`_wake`, when to look again, and :attr:`_next_renewal`."""
        held = self._held
        if held is None:
            self._wake = now
            return "none is stored"
        if not self._names <= held.names:
            self._wake = now
            return f"the stored one is for {', '.join(sorted(held.names))}"
        renew_at = held.not_after - held.lifetime * RENEW_REMAINING
        pem = await trio.to_thread.run_sync(self._storage.read, "certificate.pem")
        window, ask_again = await trio.to_thread.run_sync(
            session.renewal_window, pem or b"", abandon_on_cancel=True
        )
        if window is not None:  # the server's word, but no later than the rule
            renew_at = min(renew_at, window.timestamp())
        self._next_renewal = renew_at
        if renew_at <= now:
            self._wake = now
            return (
                f"the renewal information of the ACME server says renew at {_when(renew_at)}"
                if window is not None
                else f"a third of its lifetime remains (expires at {_when(held.not_after)})"
            )
        check = min(
            ask_again or CHECK_MAX_SECONDS, CHECK_MAX_SECONDS, max(1.0, held.lifetime / 10)
        )
        self._wake = min(renew_at, now + check)
        return None

    async def _order(self, session: Any) -> None:
        from .order import HTTP01, TLS_ALPN01, OrderFailed, new_key_pem, tls_alpn_certificate

        key = await trio.to_thread.run_sync(new_key_pem)
        names = sorted(self._names)
        order = await trio.to_thread.run_sync(
            session.new_order, names, key, abandon_on_cancel=True
        )
        # HTTP-01 first where its port is served (it works behind a TLS-terminating
        # load balancer), and the other one after a failure.
        kinds = [TLS_ALPN01, HTTP01] if self.http01 else [TLS_ALPN01]
        if self.http01 and self._failures % 2 == 0:
            kinds.reverse()
        chosen = session.choose(order, kinds)
        files = []
        try:
            for challenge in chosen:
                if challenge.kind == HTTP01:
                    name = f"challenges/http-01/{challenge.token}"
                    data = challenge.key_authorization.encode()
                else:
                    name = tls_alpn_name(challenge.name)
                    data = tls_alpn_certificate(challenge.name, challenge.key_authorization)
                await trio.to_thread.run_sync(self._storage.write, name, data)
                files.append(name)
                try:
                    await self._share.share(name, data)
                except _SHARE_ERRORS as error:
                    raise OrderFailed(f"sharing a challenge: {type(error).__name__}") from None
            await self._share.settle()
            for challenge in chosen:
                await trio.to_thread.run_sync(session.answer, challenge, abandon_on_cancel=True)
            chain = await trio.to_thread.run_sync(session.finalize, order, abandon_on_cancel=True)
        finally:
            with trio.CancelScope(shield=True):
                for name in files:
                    self._storage.remove(name)
                    with contextlib.suppress(*_SHARE_ERRORS):
                        await self._share.share(name, None)
        await trio.to_thread.run_sync(self._storage.write, "certificate.pem", key + chain)
        with contextlib.suppress(*_SHARE_ERRORS):  # the others get it from the files, or later
            await self._share.share("certificate.pem", key + chain)
        before = self._held
        await trio.to_thread.run_sync(self._reload)
        held = self._held
        assert held is not None
        log.info(
            "certificate for %s issued (serial %s, expires %s)%s",
            ", ".join(names),
            held.serial,
            _when(held.not_after),
            "" if before is None else f"; replaces serial {before.serial}",
            extra={"event": "acme_issued", "names": names, "serial": held.serial},
        )

    # --- blocking helpers (worker thread) ----------------------------------------

    def _reload(self) -> None:
        """Load the stored certificate if it changed since last loaded."""
        modified = self._storage.modified()
        if modified is None or modified == self._modified:
            return
        try:
            held = _load(self._config, str(self._storage.certificate_path))
        except ConfigError as problem:
            log.error(  # noqa: TRY400 (one line)
                "the stored certificate cannot be used: %s",
                problem,
                extra={"event": "acme_failed", "names": sorted(self._names), "problem": None},
            )
            self._modified = modified
            return
        if self._held is None:
            log.info(
                "serving the certificate for %s (serial %s, expires %s)",
                ", ".join(sorted(held.names)),
                held.serial,
                _when(held.not_after),
                extra={"event": "acme_loaded", "serial": held.serial},
            )
        self._held, self._modified = held, modified

    def _make_placeholder(self) -> ssl.SSLContext:
        from .order import tls_alpn_certificate

        # Made with the challenge's builder, whose digest nobody can match.
        name = min(self._names)
        data = tls_alpn_certificate(name, os.urandom(16).hex())
        # A file of this process's own, gone once loaded: with --threads each
        # worker makes one, and a file they shared could be replaced by
        # another's between reading its certificate and reading its key.
        file = f"placeholder-{os.getpid()}.pem"
        self._storage.write(file, data)
        try:
            placeholder = load_tls_context(
                replace(
                    self._config,
                    certfile=str(self._storage.path / file),
                    keyfile=str(self._storage.path / file),
                    acme_domains=(),
                )
            )
        finally:
            self._storage.remove(file)
        assert placeholder is not None
        return placeholder

    def _pending_alpn(self) -> frozenset[str]:
        """The names with a TLS-ALPN-01 challenge on disk (the directory's
        listing, read again when its mtime changes)."""
        try:
            changed = self._alpn_directory.stat().st_mtime_ns
        except FileNotFoundError:
            return frozenset()
        if changed != self._alpn_listing[0]:
            names = frozenset(
                entry.removesuffix(".pem")
                for entry in os.listdir(self._alpn_directory)
                if entry.endswith(".pem")
            )
            self._alpn_listing = (changed, names & self._names)
        return self._alpn_listing[1]

    def _alpn_context(self, name: str) -> ssl.SSLContext | None:
        path = self._storage.path / tls_alpn_name(name)
        try:
            modified = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        cached = self._alpn.get(name)
        if cached is not None and cached[0] == modified:
            return cached[1]
        try:
            context = load_tls_context(
                replace(self._config, certfile=str(path), keyfile=str(path), acme_domains=())
            )
        except ConfigError:
            return None
        assert context is not None
        context.set_alpn_protocols([hello.ACME_TLS_ALPN.decode()])
        self._alpn[name] = (modified, context)
        return context


async def _peek_hello(connection: Connection) -> hello.Hello | None:
    """The connection's ClientHello, read without taking it off the socket
    (the handshake reads it again); ``None`` if it is not one, or the peer
    closed or broke. The caller bounds the wait (the handshake's timeout)."""
    while True:
        try:
            data = await connection.peek(hello.MAX_RECORD_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not data:
            return None
        parsed = hello.parse_client_hello(data)
        if parsed is not hello.NEED_DATA:
            return parsed if isinstance(parsed, hello.Hello) else None
        await trio.sleep(PEEK_SECONDS)


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")
