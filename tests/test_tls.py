"""TLS and HTTP/2 over TLS (ALPN ``h2``), and h2c, through a real broker on
127.0.0.1:0 with real clients: httpx (``http2=True``), curl, and headless
Chromium, against a CA and a server certificate each test run makes
(trustme). Hostile clients (silent, plaintext, a handshake cut short) end
their own connection only; bad certificate files stop the broker at start-up
with one line and exit status 2.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from selenium import webdriver

from trio_esper.cli import parse_config
from trio_esper.config import Config, ConfigError
from trio_esper.edge import load_tls_context

from .browser import BROWSER_SECONDS, in_thread
from .browser import chrome as chrome  # the fixture
from .conftest import STEP_SECONDS, Broker, SSEStream, open_sse, start_broker
from .h2client import H2Client
from .tlspki import PKI, https, publish, start_tls_broker, tls_client
from .tlspki import pki as pki  # the fixture

SUBSCRIBED = b": subscribed\n\n"
#: EventSources on one page: more than the six HTTP/1.1 connections a browser
#: opens per origin, so they can all be live only if they share HTTP/2.
PAGE_SOURCES = 10
#: Subscriptions on one httpx HTTP/2 connection.
H2_STREAMS = 20
#: Streams on one HTTP/2 connection at shutdown: Hypercorn's limit per connection.
SHUTDOWN_H2_STREAMS = 100


@asynccontextmanager
async def streams(
    client: httpx.AsyncClient, url: str, count: int
) -> AsyncIterator[list[SSEStream]]:
    """``count`` subscriptions to ``url``, each past ``: subscribed``; closed on exit."""
    opened: list[tuple[SSEStream, Any]] = []
    try:
        for _ in range(count):
            stream, ctx = await open_sse(client, url)
            opened.append((stream, ctx))
            assert stream.response.status_code == 200
            assert await stream.next_frame() == SUBSCRIBED
        yield [stream for stream, _ in opened]
    finally:
        with trio.CancelScope(shield=True):
            for stream, ctx in reversed(opened):
                await stream.aclose()
                await ctx.__aexit__(None, None, None)


async def open_connections(broker: Broker, pki: PKI) -> int:
    """The broker's ``trio_esper_connections`` gauge, read over a connection
    of its own (counted too)."""
    async with tls_client(pki, http2=False) as client:
        reply = await client.get(f"{https(broker)}/metrics")
    match = re.search(r"^trio_esper_connections ([0-9.]+)$", reply.text, re.MULTILINE)
    assert match, reply.text
    return int(float(match.group(1)))


async def wait_for_connections(broker: Broker, pki: PKI, expected: int) -> None:
    """Poll until only ``expected`` connections are open besides the probe's."""
    seen = -1
    with trio.move_on_after(STEP_SECONDS):
        while (seen := await open_connections(broker, pki) - 1) != expected:
            await trio.sleep(0.05)
        return
    pytest.fail(f"{seen} connections open, expected {expected}")


async def assert_serves_tls(broker: Broker, pki: PKI, topic: str = "stillserves01") -> None:
    """A subscriber over HTTP/2 and TLS receives what is published."""
    assert not broker.done.is_set(), "the broker's serve task has ended"
    async with (
        tls_client(pki) as client,
        streams(client, f"{https(broker)}/subscribe/{topic}", 1) as [stream],
    ):
        assert await publish(client, broker, topic, "alive") == 1
        assert (await stream.next_event()).endswith(b"data: alive\n\n")


# --- HTTP/2 and HTTP/1.1 over TLS, httpx ---------------------------------------


async def test_publish_and_subscribe_over_h2(nursery: trio.Nursery, pki: PKI) -> None:
    broker = await start_tls_broker(nursery, pki)
    topic = "tlsh2topic01"
    async with (
        tls_client(pki) as client,
        streams(client, f"{https(broker)}/subscribe/{topic}", 1) as [stream],
    ):
        assert stream.response.http_version == "HTTP/2"
        assert stream.response.headers["content-type"] == "text/event-stream"
        reply = await client.post(
            f"{https(broker)}/publish/{topic}", content=b"id: one\ndata: over h2\n"
        )
        assert reply.http_version == "HTTP/2"
        assert reply.json() == {"id": "one", "events": 1, "subscribers": 1}
        assert await stream.next_event() == b"id: one\ndata: over h2\n\n"
    await broker.stop()


async def test_many_subscriptions_share_one_h2_connection(nursery: trio.Nursery, pki: PKI) -> None:
    broker = await start_tls_broker(nursery, pki)
    topic = "tlsmany0001"
    async with (
        tls_client(pki) as client,
        streams(client, f"{https(broker)}/subscribe/{topic}", H2_STREAMS) as subscribed,
    ):
        assert {s.response.http_version for s in subscribed} == {"HTTP/2"}
        await wait_for_connections(broker, pki, 1)
        for n in range(3):
            assert await publish(client, broker, topic, f"event {n}") == H2_STREAMS
        for stream in subscribed:
            for n in range(3):
                assert (await stream.next_event()).endswith(f"data: event {n}\n\n".encode())
    await broker.stop()


async def test_http11_over_tls(nursery: trio.Nursery, pki: PKI) -> None:
    """A client that offers only http/1.1 is served HTTP/1.1 over TLS, the
    forms the fast lane serves on plaintext included."""
    broker = await start_tls_broker(nursery, pki)
    topic = "tlsh1topic01"
    async with (
        tls_client(pki, http2=False) as client,
        streams(client, f"{https(broker)}/subscribe/{topic}", 2) as subscribed,
    ):
        assert {s.response.http_version for s in subscribed} == {"HTTP/1.1"}
        reply = await client.post(f"{https(broker)}/publish/{topic}", content=b"data: h1\n")
        assert reply.http_version == "HTTP/1.1"
        assert reply.json()["subscribers"] == 2
        for stream in subscribed:
            assert (await stream.next_event()).endswith(b"data: h1\n\n")
        health = await client.get(f"{https(broker)}/health")
        assert health.status_code == 200
    await broker.stop()


async def test_no_fast_lane_over_tls_answers_the_same(nursery: trio.Nursery, pki: PKI) -> None:
    """TLS connections are served by Hypercorn whatever --no-fast-lane says:
    the same answer either way."""
    answers = []
    for fast_lane in (True, False):
        broker = await start_tls_broker(nursery, pki, fast_lane=fast_lane)
        async with tls_client(pki, http2=False) as client:
            reply = await client.post(
                f"{https(broker)}/publish/tlssame00001", content=b"id: x\ndata: y\n"
            )
            headers = {k: v for k, v in reply.headers.items() if k != "date"}
            answers.append((reply.status_code, headers, reply.content))
        await broker.stop()
    assert answers[0] == answers[1]


async def test_shutdown_ends_tls_streams_cleanly(nursery: trio.Nursery, pki: PKI) -> None:
    """At shutdown every stream over HTTP/2 and TLS gets END_STREAM and every
    HTTP/1.1-over-TLS stream its last chunk (httpx raises otherwise), and the
    broker stops within the bound."""
    broker = await start_tls_broker(nursery, pki, shutdown_grace_seconds=5)
    url = f"{https(broker)}/subscribe/tlsshutdown1"
    async with (
        tls_client(pki) as h2_client,
        tls_client(pki, http2=False) as h1_client,
        streams(h2_client, url, SHUTDOWN_H2_STREAMS) as over_h2,
        streams(h1_client, url, 2) as over_h1,
    ):
        assert await publish(h1_client, broker, "tlsshutdown1", "last") == SHUTDOWN_H2_STREAMS + 2
        with trio.fail_after(STEP_SECONDS):
            broker.shutdown.set()
            for stream in [*over_h2, *over_h1]:
                rest = await stream.read_to_end()
                assert b"data: last\n\n" in stream.raw + rest
            await broker.done.wait()


@asynccontextmanager
async def open_h2_tls(broker: Broker, pki: PKI, nursery: trio.Nursery) -> AsyncIterator[H2Client]:
    """test_h2's raw HTTP/2 client over TLS (ALPN h2), its reader in ``nursery``."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.set_alpn_protocols(["h2"])
    tls = trio.SSLStream(
        await trio.open_tcp_stream(*broker.host_port), context, server_hostname="127.0.0.1"
    )
    await tls.do_handshake()
    assert tls.selected_alpn_protocol() == "h2"
    client = H2Client(tls)  # annotated for a SocketStream; it uses send_all, receive_some
    try:
        await client.start(nursery)
        yield client
    finally:
        await client.aclose()


async def test_streams_reset_by_the_client_do_not_hold_shutdown(
    nursery: trio.Nursery, pki: PKI
) -> None:
    """Shutdown waits for HTTP/2 streams to be written out, but not for
    streams the client reset (RST_STREAM) while they were open."""
    broker = await start_tls_broker(nursery, pki, shutdown_grace_seconds=5)
    topic = "tlsreset0001"
    async with open_h2_tls(broker, pki, nursery) as client:
        for stream_id in await client.subscribe(topic, 5):
            client.reset(stream_id)
        await client.ping()  # the server has read the resets
        with trio.fail_after(STEP_SECONDS):
            while broker.hub.statistics().clients:
                await trio.sleep(0.02)
        [live] = await client.subscribe(topic, 1)
        start = trio.current_time()
        with trio.fail_after(STEP_SECONDS):
            broker.shutdown.set()
            await broker.done.wait()
        assert trio.current_time() - start < 2, "shutdown waited for the reset streams"
        await client.wait_for(lambda: client.eof, what="the connection to close")
        assert client.streams[live].ended, client.describe()


# --- curl -----------------------------------------------------------------------


def _curl() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.fail("curl is not installed (apt-get install -y curl)", pytrace=False)
    return found


async def curl_subscribe(
    url: str, *options: str, client: httpx.AsyncClient, publish_url: str
) -> str:
    """Run ``curl -N -i OPTIONS url``, publish to ``publish_url`` once it is
    subscribed, and return what curl printed up to the event."""
    process = await trio.lowlevel.open_process(
        [_curl(), "-sS", "-N", "-i", "--max-time", str(STEP_SECONDS), *options, url],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(STEP_SECONDS):
            while SUBSCRIBED not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, f"curl ended: {output!r}"
                output += chunk
            reply = await client.post(publish_url, content=b"data: curl\n")
            assert reply.status_code == 200, reply.text
            while b"data: curl\n\n" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, f"curl ended: {output!r}"
                output += chunk
    finally:
        process.kill()
        await process.wait()
        await process.stdout.aclose()
    return output.decode()


async def test_curl_subscribes_over_h2_and_tls(nursery: trio.Nursery, pki: PKI) -> None:
    broker = await start_tls_broker(nursery, pki)
    topic = "tlscurl0001"
    async with tls_client(pki) as client:
        output = await curl_subscribe(
            f"{https(broker)}/subscribe/{topic}",
            *("--http2", "--cacert", str(pki.ca_file)),
            client=client,
            publish_url=f"{https(broker)}/publish/{topic}",
        )
    assert output.startswith("HTTP/2 200"), output
    await broker.stop()


@pytest.mark.parametrize("how", ["--http2-prior-knowledge", "--http2"])
async def test_curl_subscribes_over_h2c(nursery: trio.Nursery, how: str) -> None:
    """h2c on the plaintext listener: with prior knowledge, and by
    ``Upgrade: h2c`` (curl --http2 on an http:// URL)."""
    broker = await start_broker(nursery)
    topic = "h2ccurl0001"
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        output = await curl_subscribe(
            f"{broker.url}/subscribe/{topic}",
            how,
            client=client,
            publish_url=f"{broker.url}/publish/{topic}",
        )
    assert "HTTP/2 200" in output, output
    await broker.stop()


# --- Chromium -------------------------------------------------------------------

#: Opens PAGE_SOURCES EventSources to the page's own origin; each records what it gets.
OPEN_SOURCES_JS = """
const [topic, count] = arguments;
window.received = [];
window.sources = [];
for (let i = 0; i < count; i++) {
  window.received.push([]);
  const source = new EventSource(`/subscribe/${topic}`);
  source.onmessage = (e) => window.received[i].push(e.data);
  window.sources.push(source);
}
"""
SOURCES_STATE_JS = """
return {
  open: window.sources.map((s) => s.readyState === EventSource.OPEN),
  received: window.received,
  protocol: performance.getEntriesByType('navigation')[0].nextHopProtocol,
};
"""


async def test_chromium_shares_one_h2_connection(
    nursery: trio.Nursery, pki: PKI, chrome: webdriver.Chrome
) -> None:
    """A page served over HTTPS opens more EventSources than the six HTTP/1.1
    connections Chromium allows an origin: over HTTP/2 all are live on one
    connection and all receive the event."""
    # Test-only: trust the broker's certificate by its key (the CA is not in
    # Chromium's store); Chromium then negotiates as for any trusted site.
    await in_thread(
        chrome.execute_cdp_cmd, "Security.setIgnoreCertificateErrors", {"ignore": True}
    )
    broker = await start_tls_broker(nursery, pki)
    topic = "tlschromium1"
    try:
        with trio.fail_after(BROWSER_SECONDS):
            await in_thread(chrome.get, f"{https(broker)}/health")
            await in_thread(chrome.execute_script, OPEN_SOURCES_JS, topic, PAGE_SOURCES)
            state: dict[str, Any] = {}
            while not (state and all(state["open"])):
                await trio.sleep(0.05)
                state = await in_thread(chrome.execute_script, SOURCES_STATE_JS)
            assert state["protocol"] == "h2", state
            async with tls_client(pki) as client:
                # The page's connection carries every EventSource (the probe is the other).
                await wait_for_connections(broker, pki, 1)
                assert await publish(client, broker, topic, "to every source") == PAGE_SOURCES
            while not all(state["received"]):
                await trio.sleep(0.05)
                state = await in_thread(chrome.execute_script, SOURCES_STATE_JS)
            assert state["received"] == [["to every source"]] * PAGE_SOURCES
    finally:
        with trio.CancelScope(shield=True):
            await in_thread(chrome.get, "about:blank")
    await broker.stop()


# --- Hostile clients --------------------------------------------------------------


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    received = b""
    while True:
        try:
            chunk = await stream.receive_some()
        except trio.BrokenResourceError:
            return received
        if not chunk:
            return received
        received += chunk


async def test_silent_clients_are_timed_out_and_block_no_one(
    nursery: trio.Nursery, pki: PKI
) -> None:
    """Connections that never start the handshake are closed after the
    request-head timeout; meanwhile others are served."""
    broker = await start_tls_broker(nursery, pki, request_head_timeout_seconds=1)
    silent = [await trio.open_tcp_stream(*broker.host_port) for _ in range(20)]
    start = trio.current_time()
    try:
        await assert_serves_tls(broker, pki)  # while all 20 wait
        with trio.fail_after(STEP_SECONDS):
            for stream in silent:
                assert await read_until_closed(stream) == b""
        assert trio.current_time() - start >= 0.9
    finally:
        for stream in silent:
            await trio.aclose_forcefully(stream)
    await wait_for_connections(broker, pki, 0)
    await broker.stop()


async def test_silent_after_the_handshake_is_closed_when_idle(
    nursery: trio.Nursery, pki: PKI
) -> None:
    """A client that completes the handshake and sends no request is closed,
    with close_notify, after the keep-alive timeout (Hypercorn's idle
    timeout: it serves every TLS connection)."""
    broker = await start_tls_broker(nursery, pki, keep_alive_seconds=1)
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    tls = trio.SSLStream(
        await trio.open_tcp_stream(*broker.host_port),
        context,
        server_hostname="127.0.0.1",
        # Strict: b"" only after the server's close_notify (an EOF without it raises).
        https_compatible=False,
    )
    try:
        with trio.fail_after(STEP_SECONDS):
            await tls.do_handshake()
            start = trio.current_time()
            assert await tls.receive_some() == b""
        assert trio.current_time() - start >= 0.9
    finally:
        await trio.aclose_forcefully(tls)
    await wait_for_connections(broker, pki, 0)
    await broker.stop()


#: What nginx answers plain HTTP on its TLS port with (its 400's reason).
PLAIN_HTTP_REASON = b"The plain HTTP request was sent to HTTPS port"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /subscribe/plaintext01 HTTP/1.1\r\nHost: x\r\n\r\n",
        # A body the broker never reads: the answer still arrives, not a reset.
        b"POST /publish/plaintext01 HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
        + b"data: x\n" * 25_000,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # h2c prior knowledge
    ],
    ids=["get", "post-with-body", "h2c"],
)
async def test_plaintext_http_to_the_tls_port(
    nursery: trio.Nursery, pki: PKI, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    # Issue 22, point 13: a 400 that says to use https, as nginx answers, then the close.
    caplog.set_level(logging.DEBUG, logger="trio_esper")
    broker = await start_tls_broker(nursery, pki)
    stream = await trio.open_tcp_stream(*broker.host_port)
    await stream.send_all(request_bytes)
    with trio.fail_after(STEP_SECONDS):
        reply = await read_until_closed(stream)
    await stream.aclose()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), reply
    assert b"\r\nConnection: close" in head
    assert re.search(rb"\r\ncontent-length: %d(\r|$)" % len(body), head), reply
    assert PLAIN_HTTP_REASON in body
    assert b"https://" in body
    await assert_serves_tls(broker, pki)
    noted = [r for r in caplog.records if "plain HTTP" in r.getMessage()]
    assert len(noted) == 1, [r.getMessage() for r in caplog.records]
    assert noted[0].levelno == logging.DEBUG
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await wait_for_connections(broker, pki, 0)
    await broker.stop()


async def test_httpx_over_plain_http_to_the_tls_port_reads_the_400(
    nursery: trio.Nursery, pki: PKI
) -> None:
    broker = await start_tls_broker(nursery, pki)
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        reply = await client.get(f"{broker.url}/health")
    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("text/plain")
    assert PLAIN_HTTP_REASON.decode() in reply.text
    await broker.stop()


async def test_a_tls_connection_closes_when_its_client_does(
    nursery: trio.Nursery, pki: PKI
) -> None:
    # Issue 22, point 13: a client that closes between requests leaves no
    # socket behind for the keep-alive wait (60 s here), over HTTP/1.1 and h2.
    broker = await start_tls_broker(nursery, pki, keep_alive_seconds=60)
    for http2 in (False, True):
        async with tls_client(pki, http2=http2) as client:
            for path in ("/health", "/stats", "/history/closingtopic1"):
                assert (await client.get(f"{https(broker)}{path}")).status_code == 200
            await trio.sleep(0.2)  # the broker waits for the next request by now
        await wait_for_connections(broker, pki, 0)
    await broker.stop()


async def test_handshake_cut_short_by_a_reset(
    nursery: trio.Nursery, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """A client sends its ClientHello, reads part of the server's answer,
    then resets the connection: that connection ends, logged at debug."""
    caplog.set_level(logging.DEBUG, logger="trio_esper")
    broker = await start_tls_broker(nursery, pki)
    client_side = ssl.create_default_context(cafile=str(pki.ca_file))
    outgoing = ssl.MemoryBIO()
    tls = client_side.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    stream = await trio.open_tcp_stream(*broker.host_port)
    try:
        await stream.send_all(outgoing.read())  # the ClientHello
        with trio.fail_after(STEP_SECONDS):
            assert await stream.receive_some(16)  # the ServerHello has begun
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        await stream.aclose()  # RST
    await wait_for_connections(broker, pki, 0)
    await assert_serves_tls(broker, pki)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await broker.stop()


async def test_over_the_connection_limit_closed_without_a_handshake(
    nursery: trio.Nursery, pki: PKI
) -> None:
    """Past --max-connections-per-address a TLS connection is closed at once:
    a plaintext 503 would be garbage to a TLS client, and a handshake is the
    CPU the limit is there to save."""
    broker = await start_tls_broker(nursery, pki, max_connections_per_address=1)
    held = await trio.open_tcp_stream(*broker.host_port)  # the address's one connection
    try:
        refused = await trio.open_tcp_stream(*broker.host_port)
        with trio.fail_after(STEP_SECONDS / 2):
            assert await read_until_closed(refused) == b""
        await refused.aclose()
    finally:
        await held.aclose()
    # Once the broker has seen the held connection go, the address is served again.
    with trio.fail_after(STEP_SECONDS):
        while True:
            try:
                await assert_serves_tls(broker, pki)
                break
            except httpx.TransportError:
                await trio.sleep(0.05)
    await broker.stop()


async def test_shutdown_cuts_pending_handshakes(nursery: trio.Nursery, pki: PKI) -> None:
    """A connection still in its handshake does not hold shutdown for the
    head timeout."""
    broker = await start_tls_broker(nursery, pki, request_head_timeout_seconds=60)
    stream = await trio.open_tcp_stream(*broker.host_port)
    await wait_for_connections(broker, pki, 1)
    with trio.fail_after(STEP_SECONDS / 2):
        await broker.stop()
        assert await read_until_closed(stream) == b""
    await stream.aclose()


# --- Configuration ------------------------------------------------------------------


def test_flags_set_the_files() -> None:
    config = parse_config(["--certfile", "c.pem", "--keyfile", "k.pem"], {})
    assert (config.certfile, config.keyfile) == ("c.pem", "k.pem")
    config = parse_config([], {"ESPER_CERTFILE": "c.pem", "ESPER_KEYFILE": "k.pem"})
    assert (config.certfile, config.keyfile) == ("c.pem", "k.pem")


def bad_configurations(pki: PKI, folder: Path) -> list[tuple[dict[str, str], str]]:
    """(certfile and keyfile, what the one line must say)."""
    cert, key = str(pki.certfile), str(pki.keyfile)
    junk = folder / "junk.pem"
    junk.write_text("not a certificate\n")
    return [
        ({"certfile": cert}, "certfile is set but keyfile is not (--keyfile, ESPER_KEYFILE)"),
        ({"keyfile": key}, "keyfile is set but certfile is not (--certfile, ESPER_CERTFILE)"),
        ({"certfile": str(folder / "absent.pem"), "keyfile": key}, "cannot read"),
        ({"certfile": cert, "keyfile": str(folder)}, "cannot read"),
        ({"certfile": str(junk), "keyfile": key}, "holds no PEM certificate"),
        ({"certfile": cert, "keyfile": str(junk)}, "holds no PEM private key"),
        ({"certfile": cert, "keyfile": str(pki.other_keyfile)}, "is not the key of"),
        ({"certfile": key, "keyfile": key}, "holds no PEM certificate"),
        ({"certfile": cert, "keyfile": cert}, "holds no PEM private key"),
    ]


def test_bad_tls_files_are_named_in_one_line(pki: PKI, tmp_path: Path) -> None:
    for files, expected in bad_configurations(pki, tmp_path):
        with pytest.raises(ConfigError) as raised:
            load_tls_context(Config(**files))
        assert expected in str(raised.value), (files, raised.value)
        assert "\n" not in str(raised.value)


def test_an_encrypted_key_is_refused_without_a_prompt(pki: PKI, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.keyfile.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        load_tls_context(Config(certfile=str(pki.certfile), keyfile=str(encrypted)))


@pytest.mark.parametrize(
    ("case", "extra"),
    [
        (0, ()),
        (6, ()),
        # Checked once, before worker processes start (no Redis is reached).
        (6, ("--threads", "2", "--backplane", "redis://127.0.0.1:1/0")),
    ],
    ids=["keyfile missing", "key of another certificate", "with workers"],
)
async def test_bad_tls_files_stop_the_broker_with_status_2(
    pki: PKI, tmp_path: Path, case: int, extra: tuple[str, ...]
) -> None:
    files, expected = bad_configurations(pki, tmp_path)[case]
    args = [arg for name, path in files.items() for arg in (f"--{name}", path)]
    result = await trio.run_process(
        [sys.executable, "-m", "trio_esper", "--port", "0", "--no-auth", *args, *extra],
        stdin=subprocess.DEVNULL,
        capture_stderr=True,
        check=False,
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2, lines
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1, lines
    assert errors[0].startswith("trio-esper: error: "), errors
    assert expected in errors[0], errors
    assert not [line for line in lines if "listening" in line], lines


async def test_broker_process_serves_tls_from_the_environment(pki: PKI) -> None:
    """ESPER_CERTFILE and ESPER_KEYFILE make the CLI broker speak TLS."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_esper", "--port", "0", "--no-auth"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "ESPER_CERTFILE": str(pki.certfile), "ESPER_KEYFILE": str(pki.keyfile)},
    )
    assert process.stderr is not None
    stderr = b""
    try:
        with trio.fail_after(20):
            while not (match := re.search(rb"listening on https://([\d.]+):(\d+)", stderr)):
                chunk = await process.stderr.receive_some()
                assert chunk, stderr.decode()
                stderr += chunk
        url = f"https://{match.group(1).decode()}:{match.group(2).decode()}"
        async with tls_client(pki) as client:
            reply = await client.get(f"{url}/health")
        assert (reply.status_code, reply.http_version) == (200, "HTTP/2")
    finally:
        process.terminate()
        with trio.fail_after(STEP_SECONDS):
            await process.wait()
        await process.stderr.aclose()
    assert process.returncode == 0
