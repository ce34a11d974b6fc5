"""ACME (``--acme-domain``) against Pebble, Let's Encrypt's ACME test server, on
loopback, with real validation: Pebble resolves the test names through
``pebble-challtestsrv -defaultIPv4 127.0.0.1`` and really connects to the broker,
on the TLS port for TLS-ALPN-01 and on ``--acme-http-port`` for HTTP-01. Each
test writes its own Pebble configuration (ports, certificate lifetime) and
starts its own Pebble; clients trust only the root Pebble's management API
gives, and reach the broker by name (SNI) over HTTP/2.

The nox sessions build Pebble (noxfile.py, ``_ensure_pebble``) and name its
directory in ``TRIO_ESPER_PEBBLE_BIN``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import trio
import trustme
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages as messages_
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC
from prometheus_client.parser import text_string_to_metric_families

from trio_esper.acme import manager
from trio_esper.acme.hello import NEED_DATA, Hello, parse_client_hello
from trio_esper.acme.http01 import serve_http01
from trio_esper.acme.storage import Storage
from trio_esper.cli import parse_config
from trio_esper.config import Config

from .conftest import (
    STEP_SECONDS,
    Broker,
    RedisServer,
    free_port,
    open_sse,
    start_broker,
)

PEBBLE_BIN = Path(
    os.environ.get(
        "TRIO_ESPER_PEBBLE_BIN",
        Path(__file__).parent.parent / ".nox" / "pebble" / "v2.10.3",
    )
)
ROOT = Path(__file__).resolve().parent.parent
NAMES = ("a.esper.test", "b.esper.test")
#: Issuance against Pebble takes a second or two; generous for a loaded machine.
ISSUE_SECONDS = 45.0
SUBSCRIBED = b": subscribed\n\n"


@pytest.fixture(scope="module")
def pebble_bin() -> Path:
    missing = [c for c in ("pebble", "pebble-challtestsrv") if not (PEBBLE_BIN / c).exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not in {PEBBLE_BIN}: run the tests through nox "
            "(python3 noxfile.py -s tests), which builds Pebble with go install"
        )
    return PEBBLE_BIN


@contextmanager
def running(
    command: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    *,
    start_new_session: bool = False,
) -> Iterator[None]:
    """``command`` running for the block, its output in ``log``; stopped
    (SIGTERM, then SIGKILL), its whole process group if it has its own."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=start_new_session,
        )
        try:
            yield
        finally:
            process.terminate()
            try:
                process.wait(STEP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if start_new_session:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def dns_port(pebble_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """pebble-challtestsrv as a DNS server answering 127.0.0.1 for every name."""
    port, management = free_port(), free_port()
    log = tmp_path_factory.mktemp("challtestsrv") / "log"
    command = [
        str(pebble_bin / "pebble-challtestsrv"),
        *("-dnsserver", f"127.0.0.1:{port}", "-management", f"127.0.0.1:{management}"),
        *("-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
        *("-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""),
    ]
    with running(command, log):
        deadline = time.monotonic() + STEP_SECONDS
        while b"Starting management server" not in log.read_bytes():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port


@dataclass
class Pebble:
    directory: str
    #: PEM of the CA that signed Pebble's own HTTPS certificate (--acme-ca-bundle).
    ca_bundle: Path
    management: str
    log: Path
    #: PEM of the root Pebble issues under (its management API's /roots/0).
    root: bytes = b""

    def orders(self) -> int:
        return self.log.read_text().count("Added order")

    def trusting_root(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.root.decode())


@contextmanager
def pebble_running(
    pebble_bin: Path,
    dns_port: int,
    folder: Path,
    *,
    tls_port: int,
    http_port: int,
    validity_seconds: int = 90 * 86400,
    env: dict[str, str] | None = None,
) -> Iterator[Pebble]:
    """Pebble validating on ``tls_port`` and ``http_port`` of 127.0.0.1."""
    folder.mkdir(exist_ok=True)
    ca = trustme.CA()
    served = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, bundle = folder / "pebble.pem", folder / "pebble.key", folder / "ca.pem"
    served.cert_chain_pems[0].write_to_path(str(cert))
    served.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    port, management = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "retryAfter": {"authz": 1, "order": 1},
            "keyAlgorithm": "ecdsa",
            "profiles": {"default": {"description": "test", "validityPeriod": validity_seconds}},
        }
    }
    (folder / "pebble.json").write_text(json.dumps(config))
    log = folder / "pebble.log"
    command = [
        str(pebble_bin / "pebble"),
        *("-config", str(folder / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}"),
    ]
    # No sleeps before validation, no nonces refused at random, no authorization reused.
    quick = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
    with running(command, log, {**quick, **(env or {})}):
        pebble = Pebble(
            f"https://127.0.0.1:{port}/dir", bundle, f"https://127.0.0.1:{management}", log
        )
        context = ssl.create_default_context(cafile=str(bundle))
        deadline = time.monotonic() + STEP_SECONDS
        while True:
            try:
                pebble.root = httpx.get(f"{pebble.management}/roots/0", verify=context).content
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield pebble


def acme_settings(pebble: Pebble, storage: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "acme_domains": NAMES,
        "acme_directory": pebble.directory,
        "acme_ca_bundle": str(pebble.ca_bundle),
        "acme_storage": str(storage),
        "acme_http_port": 0,
        "acme_email": "ops@esper.test",
        **overrides,
    }


@asynccontextmanager
async def client_for(pebble: Pebble) -> AsyncIterator[httpx.AsyncClient]:
    """httpx over HTTP/2 trusting Pebble's root alone."""
    async with httpx.AsyncClient(
        http2=True, http1=False, verify=pebble.trusting_root(), timeout=STEP_SECONDS
    ) as client:
        yield client


def url(port: int, path: str) -> str:
    return f"https://127.0.0.1:{port}{path}"


def sni(name: str) -> dict[str, Any]:
    """The request reaches 127.0.0.1 but asks for ``name`` (SNI) and checks
    the certificate against it."""
    return {"extensions": {"sni_hostname": name}}


async def wait_for_certificate(
    pebble: Pebble, port: int, other_than: str | None = None, timeout: float = ISSUE_SECONDS
) -> str:
    """Wait until every name is served a certificate that Pebble's root
    vouches for (and whose serial is not ``other_than``); its serial."""
    with trio.fail_after(timeout):
        while True:
            serials = {await handshake_serial(pebble, port, name) for name in NAMES}
            if len(serials) == 1 and None not in serials and other_than not in serials:
                serial = serials.pop()
                assert serial is not None
                return serial
            await trio.sleep(0.1)


async def handshake_serial(pebble: Pebble, port: int, name: str) -> str | None:
    """The serial of the certificate served for ``name`` (SNI) if Pebble's
    root vouches for it for that name; ``None`` if not."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:  # not listening (yet)
        return None
    tls = trio.SSLStream(stream, pebble.trusting_root(), server_hostname=name)
    try:
        with trio.fail_after(STEP_SECONDS):
            await tls.do_handshake()
    except trio.BrokenResourceError:
        await stream.aclose()
        return None
    der = tls.getpeercert(binary_form=True)
    await tls.aclose()
    assert der is not None
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


async def ready(port: int) -> tuple[int, dict[str, Any]]:
    """``/ready``, as a health check that verifies no certificate reads it."""
    async with httpx.AsyncClient(verify=False, timeout=STEP_SECONDS) as client:
        answer = await client.get(url(port, "/ready"))
    return answer.status_code, answer.json()


def gauge(exposition: str, name: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no {name} in {exposition}")


def messages(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "event", None) == event]


async def start_acme_broker(nursery: trio.Nursery, port: int, **settings: Any) -> Broker:
    return await start_broker(nursery, port=port, **settings)


async def test_issues_for_two_names_and_serves_http2_by_name(
    nursery: trio.Nursery, pebble_bin: Path, dns_port: int, tmp_path: Path
) -> None:
    """TLS-ALPN-01 on the TLS port (no HTTP port): one certificate for both
    names; a client trusting Pebble's root alone subscribes by one name and
    publishes by the other, over HTTP/2."""
    port = free_port()
    storage = tmp_path / "acme"
    with pebble_running(
        pebble_bin, dns_port, tmp_path / "pebble", tls_port=port, http_port=1
    ) as pebble:
        started = time.monotonic()
        await start_acme_broker(nursery, port, **acme_settings(pebble, storage))
        serial = await wait_for_certificate(pebble, port)
        async with client_for(pebble) as client:
            stream, ctx = await open_sse(
                client, url(port, "/subscribe/acmetopic01"), **sni(NAMES[0])
            )
            try:
                assert stream.response.http_version == "HTTP/2"
                assert await stream.next_frame() == SUBSCRIBED
                answer = await client.post(
                    url(port, "/publish/acmetopic01"),
                    content=b"data: over https\n",
                    **sni(NAMES[1]),
                )
                assert answer.status_code == 200, answer.text
                assert answer.http_version == "HTTP/2"
                assert b"data: over https\n" in await stream.next_event()
            finally:
                await stream.aclose()
                await ctx.__aexit__(None, None, None)
            first_event = time.monotonic() - started
            stats = (await client.get(url(port, "/stats"), **sni(NAMES[0]))).json()
            metrics = (await client.get(url(port, "/metrics"), **sni(NAMES[0]))).text
            document = (await client.get(url(port, "/openapi.json"), **sni(NAMES[0]))).json()
        print(f"start to first HTTPS event against Pebble: {first_event:.2f} s")
        assert await ready(port) == (200, {"status": "ready"})
        assert stats["certificate"]["serial"] == serial
        # As the OpenAPI document describes it.
        schema = {"$ref": "#/components/schemas/Stats", "components": document["components"]}
        jsonschema.validate(stats, schema)
        assert stats["certificate"]["names"] == sorted(NAMES)
        not_after = x509.load_pem_x509_certificate(
            (storage / "certificate.pem").read_bytes()
        ).not_valid_after_utc.timestamp()
        assert gauge(metrics, "trio_esper_tls_certificate_expiry_timestamp_seconds") == not_after
        assert gauge(metrics, "trio_esper_acme_failures_total") == 0
        assert pebble.orders() == 1
    assert storage.stat().st_mode & 0o777 == 0o700
    for name in ("account.key", "certificate.pem"):
        assert (storage / name).stat().st_mode & 0o777 == 0o600


async def test_http01_on_the_http_port_which_redirects_the_rest(
    nursery: trio.Nursery, pebble_bin: Path, dns_port: int, tmp_path: Path
) -> None:
    """Pebble's TLS-ALPN-01 port is one nothing listens on: the certificate
    can only come through HTTP-01, on --acme-http-port; any other plain-HTTP
    request there is redirected to https:// on the broker's port."""
    port, http_port = free_port(), free_port()
    folder = tmp_path / "pebble"
    with pebble_running(
        pebble_bin, dns_port, folder, tls_port=free_port(), http_port=http_port
    ) as pebble:
        settings = acme_settings(pebble, tmp_path / "acme", acme_http_port=http_port)
        await start_acme_broker(nursery, port, **settings)
        await wait_for_certificate(pebble, port)
        async with httpx.AsyncClient(timeout=STEP_SECONDS) as plain:
            moved = await plain.get(
                f"http://127.0.0.1:{http_port}/subscribe/x?a=1", headers={"host": "b.esper.test"}
            )
            unknown = await plain.get(
                f"http://127.0.0.1:{http_port}/", headers={"host": "elsewhere.example"}
            )
            missing = await plain.get(
                f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/{'x' * 43}"
            )
    assert moved.status_code == 308
    assert moved.headers["location"] == f"https://b.esper.test:{port}/subscribe/x?a=1"
    # Never to a host the broker does not serve: the Host header is the client's.
    assert unknown.headers["location"] == f"https://a.esper.test:{port}/"
    assert missing.status_code == 404


async def test_restart_with_the_stored_certificate_orders_nothing(
    nursery: trio.Nursery,
    pebble_bin: Path,
    dns_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restart serves the stored certificate at once and orders nothing;
    with the directory down it still serves it, logs why it cannot reach the
    ACME server, and is ready (the certificate is valid)."""
    caplog.set_level(logging.INFO, logger="trio_esper")
    port = free_port()
    storage = tmp_path / "acme"
    with pebble_running(
        pebble_bin, dns_port, tmp_path / "pebble", tls_port=port, http_port=1
    ) as pebble:
        first = await start_acme_broker(nursery, port, **acme_settings(pebble, storage))
        serial = await wait_for_certificate(pebble, port)
        await first.stop()
        second = await start_acme_broker(nursery, port, **acme_settings(pebble, storage))
        # At once: the first handshake gets it.
        assert {await handshake_serial(pebble, port, name) for name in NAMES} == {serial}
        assert await ready(port) == (200, {"status": "ready"})
        await trio.sleep(1.0)  # time it would take to order, had it ordered
        assert pebble.orders() == 1
        await second.stop()
    caplog.clear()
    # Pebble is gone now: its directory does not answer.
    await start_acme_broker(nursery, port, **acme_settings(pebble, storage))
    assert {await handshake_serial(pebble, port, name) for name in NAMES} == {serial}
    with trio.fail_after(STEP_SECONDS):
        while not messages(caplog, "acme_failed"):
            await trio.sleep(0.05)
    line = messages(caplog, "acme_failed")[0]
    assert "cannot reach the ACME server" in line
    assert f"serving serial {serial}" in line
    assert await ready(port) == (200, {"status": "ready"})


async def test_directory_down_at_start_up_without_a_certificate(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No certificate and no ACME server: the broker listens, logs the
    failure and retries; /ready says not ready, and why."""
    caplog.set_level(logging.INFO, logger="trio_esper")
    port = free_port()
    settings = {
        "acme_domains": NAMES,
        "acme_directory": f"https://127.0.0.1:{free_port()}/dir",
        "acme_storage": str(tmp_path / "acme"),
        "acme_http_port": 0,
    }
    await start_acme_broker(nursery, port, **settings)
    with trio.fail_after(STEP_SECONDS):
        while not messages(caplog, "acme_failed"):
            await trio.sleep(0.05)
    line = messages(caplog, "acme_failed")[0]
    assert "reading the directory: cannot reach the ACME server" in line
    assert "serving no certificate; retrying in 5 s" in line
    status, body = await ready(port)
    assert status == 503
    assert body["reason"].startswith("no certificate yet for a.esper.test, b.esper.test: ")
    assert "cannot reach the ACME server" in body["reason"]


async def test_a_challenge_that_cannot_complete(
    nursery: trio.Nursery,
    pebble_bin: Path,
    dns_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pebble validates TLS-ALPN-01 on a port the broker does not serve: the
    failure is logged with Pebble's problem document, and /ready says so."""
    caplog.set_level(logging.INFO, logger="trio_esper")
    port, tls_port = free_port(), free_port()
    with pebble_running(
        pebble_bin, dns_port, tmp_path / "pebble", tls_port=tls_port, http_port=1
    ) as pebble:
        await start_acme_broker(nursery, port, **acme_settings(pebble, tmp_path / "acme"))
        with trio.fail_after(ISSUE_SECONDS):
            while not messages(caplog, "acme_failed"):
                await trio.sleep(0.05)
        status, body = await ready(port)
        async with httpx.AsyncClient(verify=False, timeout=STEP_SECONDS) as unverified:
            metrics = (await unverified.get(url(port, "/metrics"))).text
    failure = next(r for r in caplog.records if getattr(r, "event", None) == "acme_failed")
    assert "completing the order: validation failed" in failure.getMessage()
    problems = failure.problem["subproblems"]  # type: ignore[attr-defined]
    assert {p["identifier"] for p in problems} == set(NAMES)
    assert all(p["challenge"] == "tls-alpn-01" for p in problems)
    assert all(p["type"].startswith("urn:ietf:params:acme:error:") for p in problems)
    assert all(f"Failed to connect to 127.0.0.1:{tls_port}" in p["detail"] for p in problems)
    assert status == 503
    assert "validation failed" in body["reason"]
    assert gauge(metrics, "trio_esper_acme_failures_total") >= 1
    assert gauge(metrics, "trio_esper_tls_certificate_expiry_timestamp_seconds") == 0


async def test_renewal_swaps_the_certificate_under_open_streams(
    nursery: trio.Nursery, pebble_bin: Path, dns_port: int, tmp_path: Path
) -> None:
    """Certificates of 12 s: renewed before a third of that remains. A
    stream opened on the first keeps receiving across two renewals, and
    new connections all along are all accepted."""
    port = free_port()
    with pebble_running(
        pebble_bin, dns_port, tmp_path / "pebble", tls_port=port, http_port=1, validity_seconds=12
    ) as pebble:
        await start_acme_broker(nursery, port, **acme_settings(pebble, tmp_path / "acme"))
        first = await wait_for_certificate(pebble, port)
        refused: list[str] = []
        serials = {first}
        async with client_for(pebble) as client:
            stream, ctx = await open_sse(
                client, url(port, "/subscribe/renewal01"), **sni(NAMES[0])
            )
            try:
                assert await stream.next_frame() == SUBSCRIBED
                sent = 0
                with trio.fail_after(ISSUE_SECONDS):
                    while len(serials) < 3:
                        sent += 1
                        answer = await client.post(
                            url(port, "/publish/renewal01"),
                            content=f"data: {sent}\n".encode(),
                            **sni(NAMES[1]),
                        )
                        assert answer.status_code == 200
                        assert f"data: {sent}\n".encode() in await stream.next_event()
                        for name in NAMES:  # a new connection, each time
                            serial = await handshake_serial(pebble, port, name)
                            if serial is None:
                                refused.append(name)
                            else:
                                serials.add(serial)
                        await trio.sleep(0.2)
            finally:
                await stream.aclose()
                await ctx.__aexit__(None, None, None)
        assert pebble.orders() >= 3
    assert refused == []
    assert sent > 10


async def test_a_revoked_certificate_is_replaced(
    nursery: trio.Nursery,
    pebble_bin: Path,
    dns_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Revoked with the broker's own account: Pebble's renewal information
    (ARI) then asks for renewal at once, which the broker reads (every
    second here, six-hourly at most in production) and acts on."""
    monkeypatch.setattr(manager, "CHECK_MAX_SECONDS", 1.0)
    caplog.set_level(logging.INFO, logger="trio_esper")
    port = free_port()
    storage = tmp_path / "acme"
    with pebble_running(
        pebble_bin, dns_port, tmp_path / "pebble", tls_port=port, http_port=1
    ) as pebble:
        await start_acme_broker(nursery, port, **acme_settings(pebble, storage))
        revoked = await wait_for_certificate(pebble, port)
        assert await ready(port) == (200, {"status": "ready"})
        await trio.to_thread.run_sync(revoke, pebble, storage)
        replacement = await wait_for_certificate(pebble, port, other_than=revoked)
        assert await ready(port) == (200, {"status": "ready"})
    orders = messages(caplog, "acme_order")
    assert len(orders) == 2
    assert "the renewal information of the ACME server says renew at" in orders[1]
    issued = messages(caplog, "acme_issued")
    assert f"serial {replacement}" in issued[1]
    assert f"replaces serial {revoked}" in issued[1]


def revoke(pebble: Pebble, storage: Path) -> None:
    """Revoke the stored certificate as its account's holder would."""
    key = serialization.load_pem_private_key((storage / "account.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    net = acme_client.ClientNetwork(JWKEC(key=key), alg=ES256)
    net.verify_ssl = str(pebble.ca_bundle)  # type: ignore[assignment]
    ca = acme_client.ClientV2(acme_client.ClientV2.get_directory(pebble.directory, net), net)
    try:
        ca.new_account(messages_.NewRegistration.from_data(only_return_existing=True))
    except acme_errors.ConflictError as existing:
        net.account = messages_.RegistrationResource(
            uri=existing.location, body=messages_.Registration()
        )
    leaf = x509.load_pem_x509_certificate((storage / "certificate.pem").read_bytes())
    ca.revoke(leaf, 0)


async def test_processes_sharing_the_storage_order_once(
    nursery: trio.Nursery, pebble_bin: Path, dns_port: int, tmp_path: Path
) -> None:
    """Two brokers on one storage directory (as --threads' workers are): one
    holds the order lock and orders, the other loads what it stores; the
    validation reaches the one on Pebble's TLS port whichever ordered."""
    port, other_port = free_port(), free_port()
    storage = tmp_path / "acme"
    with pebble_running(
        pebble_bin, dns_port, tmp_path / "pebble", tls_port=port, http_port=1
    ) as pebble:
        await start_acme_broker(nursery, other_port, **acme_settings(pebble, storage))
        await start_acme_broker(nursery, port, **acme_settings(pebble, storage))
        serial = await wait_for_certificate(pebble, port)
        assert await wait_for_certificate(pebble, other_port) == serial
        assert pebble.orders() == 1


async def test_an_expired_certificate_is_not_ready(
    nursery: trio.Nursery, pebble_bin: Path, dns_port: int, tmp_path: Path
) -> None:
    """A certificate of 3 s and no ACME server left to renew it: once it
    expires /ready says so (the broker still serves it: nothing better)."""
    port = free_port()
    with pebble_running(
        pebble_bin, dns_port, tmp_path / "pebble", tls_port=port, http_port=1, validity_seconds=3
    ) as pebble:
        await start_acme_broker(nursery, port, **acme_settings(pebble, tmp_path / "acme"))
        await wait_for_certificate(pebble, port)
    with trio.fail_after(STEP_SECONDS):
        while (answer := await ready(port))[0] == 200:
            await trio.sleep(0.2)
    status, body = answer
    assert status == 503
    assert body["reason"].startswith("the certificate expired at ")


#: The page's command, as an operator types it.
DOCUMENTED = re.compile(r"^trio-esper --acme-domain .*--acme-email .*$", re.MULTILINE)


async def test_the_documented_command_with_two_workers(
    pebble_bin: Path, dns_port: int, tmp_path: Path, redis_server: RedisServer
) -> None:
    """docs/acme.md's command, run as a process (the CLI's flags, repeatable
    --acme-domain) on loopback against Pebble, with --threads 2: the two
    workers make one order between them (validated by HTTP-01, on the port
    both workers serve) and serve one certificate."""
    found = DOCUMENTED.search((ROOT / "docs" / "acme.md").read_text())
    assert found is not None
    port, http_port = free_port(), free_port()
    line = found.group(0).replace("events.example.com", f"{NAMES[0]} --acme-domain {NAMES[1]}")
    with pebble_running(
        pebble_bin, dns_port, tmp_path / "pebble", tls_port=free_port(), http_port=http_port
    ) as pebble:
        argv = [
            sys.executable,
            "-m",
            "trio_esper",
            *line.split()[1:],
            *("--acme-directory", pebble.directory, "--acme-ca-bundle", str(pebble.ca_bundle)),
            *("--acme-storage", str(tmp_path / "acme"), "--acme-http-port", str(http_port)),
            *("--threads", "2", "--backplane", redis_server.url, "--no-auth"),
            # Not the defaults ACME brings, 0.0.0.0:443: loopback, a free port.
            *("--bind", "127.0.0.1", "--port", str(port)),
        ]
        with running(argv, tmp_path / "broker.log", start_new_session=True):
            serial = await wait_for_certificate(pebble, port)
            # Connections go to both workers in turn: each serves the one certificate.
            for _ in range(4):
                assert await handshake_serial(pebble, port, NAMES[0]) == serial
            assert pebble.orders() == 1
            async with httpx.AsyncClient(timeout=STEP_SECONDS) as plain:
                for _ in range(4):
                    moved = await plain.get(f"http://127.0.0.1:{http_port}/health")
                    assert moved.headers["location"] == f"https://a.esper.test:{port}/health"
    log = (tmp_path / "broker.log").read_text()
    assert f"listening on https://127.0.0.1:{port} with 2 workers" in log
    assert log.count("ordering a certificate for a.esper.test, b.esper.test") == 1
    assert "cannot listen" not in log


async def test_validation_that_needs_no_answer(
    nursery: trio.Nursery, pebble_bin: Path, dns_port: int, tmp_path: Path
) -> None:
    """The one test with PEBBLE_VA_ALWAYS_VALID: Pebble marks each challenge
    valid at once, without connecting (its TLS-ALPN port is closed here). The
    broker does not depend on when validation happens: it gets the
    certificate all the same, and cleans its challenge files up."""
    port = free_port()
    storage = tmp_path / "acme"
    with pebble_running(
        pebble_bin,
        dns_port,
        tmp_path / "pebble",
        tls_port=free_port(),
        http_port=1,
        env={"PEBBLE_VA_ALWAYS_VALID": "1"},
    ) as pebble:
        await start_acme_broker(nursery, port, **acme_settings(pebble, storage))
        await wait_for_certificate(pebble, port)
    assert list((storage / "challenges" / "tls-alpn-01").iterdir()) == []


def test_an_unusable_storage_directory_stops_the_broker(tmp_path: Path) -> None:
    """One line and exit status 2, as any setting the broker cannot run with."""
    (tmp_path / "file").write_text("")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "trio_esper", "--port", "0", "--no-auth"),
            *("--acme-domain", NAMES[0], "--acme-storage", str(tmp_path / "file" / "acme")),
        ],
        capture_output=True,
        text=True,
        timeout=STEP_SECONDS * 3,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"trio-esper: error: --acme-storage {tmp_path / 'file' / 'acme'}: cannot make or "
        "write it (Not a directory)"
    )


def _client_hello(server_name: str | None, protocols: list[str]) -> bytes:
    """The first bytes Python's own client sends."""
    context = ssl.create_default_context()
    if protocols:
        context.set_alpn_protocols(protocols)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


HELLOS = [
    (("a.esper.test", ["acme-tls/1"]), Hello("a.esper.test", (b"acme-tls/1",))),
    (("B.Esper.Test", ["h2", "http/1.1"]), Hello("b.esper.test", (b"h2", b"http/1.1"))),
    (("a.esper.test", []), Hello("a.esper.test", ())),
]


@pytest.mark.parametrize(("sent", "read"), HELLOS)
def test_client_hello_is_read(sent: tuple[str, list[str]], read: Hello) -> None:
    data = _client_hello(*sent)
    assert parse_client_hello(data) == read
    # Every cut short of the whole record asks for more.
    for end in (0, 1, 5, len(data) // 2, len(data) - 1):
        assert parse_client_hello(data[:end]) is NEED_DATA


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", b"\x15\x03\x03"]
)
def test_what_is_not_a_client_hello(data: bytes) -> None:
    """Plain HTTP, a handshake message that is not a ClientHello, an alert."""
    assert parse_client_hello(data) is None


async def test_nodes_on_the_backplane_order_once(
    nursery: trio.Nursery,
    pebble_bin: Path,
    dns_port: int,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    """Two nodes on one Redis, each with its own storage directory (no shared
    file system): the first takes the Redis lock and orders; the validation
    reaches the other, which answers with the challenge it copied from Redis;
    both serve the one certificate."""
    port, other_port = free_port(), free_port()
    ordering, answering = tmp_path / "ordering", tmp_path / "answering"
    with pebble_running(
        pebble_bin, dns_port, tmp_path / "pebble", tls_port=port, http_port=1
    ) as pebble:
        # A database of its own: the documented command's test shares the names.
        shared = {"backplane": redis_server.url.replace("/0", "/7")}
        first = await start_acme_broker(
            nursery, other_port, **acme_settings(pebble, ordering), **shared
        )
        second = await start_acme_broker(
            nursery, port, **acme_settings(pebble, answering), **shared
        )
        serial = await wait_for_certificate(pebble, port)
        assert await wait_for_certificate(pebble, other_port) == serial
        assert pebble.orders() == 1
        # Stopped, not cancelled: the Redis history's reader can fail on a cancel
        # (anyio's ClosedResourceError from coredis' pubsub), with or without ACME.
        await first.stop()
        await second.stop()
    # Only the node that ordered made an account key; both hold the certificate.
    assert (ordering / "account.key").exists()
    assert not (answering / "account.key").exists()
    assert (answering / "certificate.pem").read_bytes() == (
        ordering / "certificate.pem"
    ).read_bytes()


def test_acme_makes_the_public_port_the_default() -> None:
    """With --acme-domain, port 443 of every interface unless told otherwise;
    without it, the defaults stay 127.0.0.1:3000."""
    given = Config.from_env({"ESPER_ACME_DOMAINS": "a.esper.test"})
    assert (given.bind, given.port) == ("0.0.0.0", 443)
    told = parse_config(["--acme-domain", "a.esper.test", "--port", "8443"], {})
    assert (told.bind, told.port) == ("0.0.0.0", 8443)
    told = parse_config(["--acme-domain", "a.esper.test"], {"ESPER_BIND": "127.0.0.2"})
    assert (told.bind, told.port) == ("127.0.0.2", 443)
    plain = Config.from_env({})
    assert (plain.bind, plain.port) == ("127.0.0.1", 3000)


async def test_an_http_port_that_cannot_be_bound(
    nursery: trio.Nursery,
    pebble_bin: Path,
    dns_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """--acme-http-port taken by another program: a warning, and the
    certificate comes by TLS-ALPN-01 alone (HTTP-01 is not tried)."""
    caplog.set_level(logging.INFO, logger="trio_esper")
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http_port = taken.getsockname()[1]
        with pebble_running(
            pebble_bin, dns_port, tmp_path / "pebble", tls_port=port, http_port=http_port
        ) as pebble:
            settings = acme_settings(pebble, tmp_path / "acme", acme_http_port=http_port)
            await start_acme_broker(nursery, port, **settings)
            await wait_for_certificate(pebble, port, timeout=STEP_SECONDS)
    [warning] = messages(caplog, "acme_http_unavailable")
    assert f"cannot listen on port {http_port} for ACME HTTP-01" in warning
    assert messages(caplog, "acme_failed") == []


async def start_http01(nursery: trio.Nursery, tmp_path: Path, **settings: Any) -> int:
    """The ACME HTTP port alone (no Pebble: nothing is ordered), on a free
    port; its port number."""
    config = Config(acme_domains=NAMES, acme_storage=str(tmp_path / "acme"), **settings)
    port = await nursery.start(serve_http01, config, Storage(config.acme_storage), 8443)
    assert isinstance(port, int)
    return port


async def held_open(port: int) -> trio.SocketStream:
    """A connection to ``port`` that sent half a request head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHo")
    return stream


async def closed_within(stream: trio.SocketStream, seconds: float) -> bool:
    """Whether the broker closes ``stream`` within ``seconds``, sending nothing."""
    with trio.move_on_after(seconds):
        try:
            return await stream.receive_some() == b""
        except trio.BrokenResourceError:  # reset: the request was unread
            return True
    return False


async def test_the_http_port_limits_connections_per_address(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """--max-connections-per-address holds on the ACME HTTP port too: past
    it, a connection from that address is closed at once (not after the head
    timeout, which half-sent heads would otherwise hold it for), and one
    leaving makes room."""
    port = await start_http01(
        nursery,
        tmp_path,
        max_connections_per_address=3,
        request_head_timeout_seconds=STEP_SECONDS * 3,
    )
    held = [await held_open(port) for _ in range(3)]
    try:
        for _ in range(3):
            async with await held_open(port) as refused:
                assert await closed_within(refused, STEP_SECONDS)
        for stream in held:
            assert not await closed_within(stream, 0.05)
        await held.pop().aclose()
        async with httpx.AsyncClient(timeout=STEP_SECONDS) as plain:
            with trio.fail_after(STEP_SECONDS):
                while True:  # the broker sees the close at its next read
                    try:
                        moved = await plain.get(f"http://127.0.0.1:{port}/health")
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.05)
        assert moved.status_code == 308
    finally:
        for stream in held:
            await stream.aclose()


async def test_the_http_port_closes_a_half_sent_head_after_the_head_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    port = await start_http01(nursery, tmp_path, request_head_timeout_seconds=0.5)
    async with await held_open(port) as stream:
        started = trio.current_time()
        assert await closed_within(stream, STEP_SECONDS)
        assert trio.current_time() - started >= 0.4


async def test_a_silent_client_is_closed_after_one_head_timeout_while_a_challenge_waits(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """With a TLS-ALPN-01 challenge pending, the TLS port peeks at each new
    connection's ClientHello before its handshake: a client that sends
    nothing is still closed after one request-head timeout in all (the wait
    for plain HTTP and the peek share it), as without a challenge."""
    storage = tmp_path / "acme"
    pending = storage / "challenges" / "tls-alpn-01"
    pending.mkdir(parents=True)
    (pending / f"{NAMES[0]}.pem").write_text("a challenge waiting for its validation\n")
    port = free_port()
    await start_acme_broker(
        nursery,
        port,
        acme_domains=NAMES,
        acme_directory=f"https://127.0.0.1:{free_port()}/dir",
        acme_storage=str(storage),
        acme_http_port=0,
        request_head_timeout_seconds=1.0,
    )
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    async with silent:
        started = trio.current_time()
        assert await closed_within(silent, STEP_SECONDS)
        assert 0.9 <= trio.current_time() - started < 1.6
