"""Structured logs: a real broker with ``--log-format json`` at debug level
writes one JSON object per line, one line per event of interest (start, auth
failures on both front ends, a dropped subscriber, shutdown) with the client
and the topic, and never a token or a secret; the text format stays one line
per event."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_esper import logs
from trio_esper.config import LOG_LEVELS

from .conftest import STEP_SECONDS, TOPIC, BrokerProcess, broker_process, make_token
from .faults import WRITE_FAILED, broker_command

SECRETS = {
    "ESPER_SUBSCRIBER_SECRET": "subscriber-" + "s" * 40,
    "ESPER_PUBLISHER_SECRET": "publisher-" + "p" * 40,
    "ESPER_API_TOKEN": "api-token-" + "a" * 30,
    "ESPER_METRICS_TOKEN": "metrics-token-" + "m" * 30,
}
SUB_SECRET = SECRETS["ESPER_SUBSCRIBER_SECRET"]
PUB_SECRET = SECRETS["ESPER_PUBLISHER_SECRET"]
OTHER_TOPIC = "othertopic01"
#: RFC 3339, UTC, to the millisecond.
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
#: The text format's line start: whatever a line holds, it begins so.
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) trio_esper\S*: "
)
#: A receive buffer this small fills after a few events.
STALLED_RCVBUF = 2048
#: Events of this size fill the socket buffers between broker and stalled reader fast.
PAD = "x" * 200_000


def _broker(*args: str) -> Any:
    """A broker with every secret set and debug logging."""
    argv = [sys.executable, "-m", "trio_esper", "--port", "0", "--log-level", "debug", *args]
    return broker_process(argv=argv, env={**os.environ, **SECRETS})


async def _stalled_subscriber(url: str, token: str) -> trio.socket.SocketType:
    """A subscriber (token in the query) that reads its response head, then never reads."""
    host, _, port = url.removeprefix("http://").partition(":")
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    await sock.connect((host, int(port)))
    await sock.send(f"GET /subscribe/{TOPIC}?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    with trio.fail_after(STEP_SECONDS):
        while b"\r\n\r\n" not in head:
            data = await sock.recv(1)
            assert data, head
            head += data
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


async def _auth_failures(client: httpx.AsyncClient, url: str) -> list[str]:
    """Requests refused for their credentials, on both front ends; the tokens sent."""
    wrong_key = make_token("another-secret-" + "o" * 40)
    other_topic = make_token(PUB_SECRET, sub=OTHER_TOPIC)
    # The edge's fast forms: publish and subscribe over plain HTTP/1.1.
    bearer = {"Authorization": f"Bearer {wrong_key}"}
    response = await client.post(f"{url}/publish/{TOPIC}", content="data: x\n", headers=bearer)
    assert response.status_code == 403
    response = await client.post(f"{url}/publish/{TOPIC}?token={other_topic}", content="data: x\n")
    assert response.status_code == 403
    async with client.stream("GET", f"{url}/subscribe/{TOPIC}?token={wrong_key}") as stream:
        assert stream.status_code == 403
    # Quart-Trio's routes: history, and the topic API.
    response = await client.get(f"{url}/history/{TOPIC}", params={"access_token": wrong_key})
    assert response.status_code == 403
    response = await client.get(f"{url}/history/{TOPIC}")
    assert response.status_code == 401
    response = await client.delete(f"{url}/api/v1/pubsubs/{TOPIC}", headers=bearer)
    assert response.status_code == 403
    return [wrong_key, other_topic]


async def _drop_a_subscriber(client: httpx.AsyncClient, running: BrokerProcess) -> list[str]:
    """A subscriber that stops reading is dropped; the tokens sent."""
    subscriber = make_token(SUB_SECRET)
    publisher = make_token(PUB_SECRET)
    sock = await _stalled_subscriber(running.url, subscriber)
    with sock, trio.fail_after(STEP_SECONDS * 3):
        for _ in range(200):
            response = await client.post(
                f"{running.url}/publish/{TOPIC}",
                content=f"data: {PAD}\n",
                headers={"Authorization": f"Bearer {publisher}"},
            )
            assert response.status_code == 200
            if running.log_lines("subscriber_dropped"):
                break
            await trio.sleep(0.01)
    return [subscriber, publisher]


def _json_lines(stderr: bytes) -> list[dict[str, Any]]:
    """Every line of ``stderr``, each a JSON object with the four fields."""
    entries = []
    for line in stderr.decode("ascii").splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert RFC3339_UTC.fullmatch(entry["time"]), line
        assert entry["level"] in LOG_LEVELS, line
        assert entry["logger"].startswith("trio_esper"), line
        assert isinstance(entry["message"], str), line
        entries.append(entry)
    return entries


def _assert_nothing_secret(stderr: bytes, tokens: list[str]) -> None:
    text = stderr.decode()
    for secret in [*SECRETS.values(), *tokens]:
        assert secret not in text
        signature = secret.rsplit(".", 1)[-1]
        assert signature not in text


async def test_json_lines_for_every_event_and_never_a_secret() -> None:
    async with (
        _broker("--log-format", "json", "--queue", "2", "--max-body", "1000000") as running,
        httpx.AsyncClient(timeout=STEP_SECONDS) as client,
    ):
        tokens = await _auth_failures(client, running.url)
        tokens += await _drop_a_subscriber(client, running)
        api = {"Authorization": f"Bearer {SECRETS['ESPER_API_TOKEN']}"}
        response = await client.get(f"{running.url}/api/v1/pubsubs/unknowntopic01", headers=api)
        assert response.status_code == 404
        assert await running.stop() == 0

    entries = _json_lines(bytes(running.stderr))
    events: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        events.setdefault(entry.get("event", ""), []).append(entry)

    [start] = events["start"]
    assert start["address"] == running.url
    assert start["message"] == (
        f"listening on {running.url} (subscribers: secret, publishers: secret, history: memory)"
    )
    assert (start["subscriber_auth"], start["publisher_auth"]) == ("secret", "secret")
    assert start["history"] == "memory"

    failures = events["auth_failed"]
    assert all(f["level"] == "debug" and f["client"] == "127.0.0.1" for f in failures), failures
    assert all(f["topic"] == TOPIC for f in failures), failures
    # Publish, subscribe (the edge), history and the topic API (Quart-Trio).
    assert sorted((f["status"], f["reason"]) for f in failures) == sorted(
        [(403, "token signature does not verify")] * 4
        + [(403, "token is for another topic (sub)")]
        + [(401, "a token is required (Authorization: Bearer or ?token=)")]
    )

    [dropped] = events["subscriber_dropped"]
    assert (dropped["client"], dropped["topic"], dropped["level"]) == ("127.0.0.1", TOPIC, "info")
    [signal] = events["signal"]
    assert signal["signal"] == "SIGTERM"
    [stop] = events["stop"]
    assert isinstance(stop["connections"], int)
    assert [e["event"] for e in entries if "event" in e][-2:] == ["signal", "stop"]

    _assert_nothing_secret(bytes(running.stderr), tokens)


async def test_text_lines_are_one_per_event() -> None:
    async with (
        _broker() as running,
        httpx.AsyncClient(timeout=STEP_SECONDS) as client,
    ):
        tokens = await _auth_failures(client, running.url)
        assert await running.stop() == 0
    lines = bytes(running.stderr).decode().splitlines()
    for line in lines:
        assert TEXT_LINE.match(line), line
    assert lines[0].endswith(
        f"listening on {running.url} (subscribers: secret, publishers: secret, history: memory)"
    )
    failures = [line for line in lines if "auth failed" in line]
    assert len(failures) == 6, lines
    assert any(
        f"DEBUG trio_esper: auth failed (403) for 127.0.0.1 on {TOPIC}: token signature" in line
        for line in failures
    )
    assert "shutting down: " in lines[-1]
    _assert_nothing_secret(bytes(running.stderr), tokens)


async def test_a_store_error_is_one_json_line(tmp_path: Path) -> None:
    history = ("--history", f"sqlite:{tmp_path / 'history.db'}", "--log-format", "json")
    body = b"data: " + b"x" * 60_000 + b"\n"
    async with (
        broker_process(*history, command=broker_command(fsize_limit=256 * 1024)) as running,
        httpx.AsyncClient(timeout=STEP_SECONDS) as client,
    ):
        for _ in range(30):
            if (await client.post(f"{running.url}/publish/{TOPIC}", content=body)).is_error:
                break
        assert await running.stop() == 0
    errors = [e for e in _json_lines(bytes(running.stderr)) if e.get("event") == "store_error"]
    assert errors
    assert (errors[0]["level"], errors[0]["kind"]) == ("error", "commit")
    assert WRITE_FAILED.search(errors[0]["message"])


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_message_with_line_breaks_stays_one_line(log_format: str) -> None:
    formatter: logging.Formatter = logs.TextFormatter(logs.TEXT_FORMAT)
    if log_format == "json":
        formatter = logs.JsonFormatter()
    for breaking in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029":
        record = logging.makeLogRecord(
            {"name": "trio_esper", "levelno": 20, "levelname": "INFO", "msg": f"a{breaking}b"}
        )
        [line] = formatter.format(record).splitlines()
        assert "a" in line
        assert "b" in line


def test_json_fields_extra_and_exception() -> None:
    logger = logging.getLogger("trio_esper.test")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(keep := Keep())
    try:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logger.error(
                "failed %s", "here", exc_info=True, extra={"event": "x", "topic": TOPIC, "n": 3}
            )
    finally:
        logger.removeHandler(keep)
    [line] = logs.JsonFormatter().format(records[0]).splitlines()
    entry = json.loads(line)
    assert entry["message"] == "failed here"
    assert (entry["level"], entry["logger"]) == ("error", "trio_esper.test")
    assert (entry["event"], entry["topic"], entry["n"]) == ("x", TOPIC, 3)
    assert "ValueError: bad\nthing" in entry["exception"]
    assert RFC3339_UTC.fullmatch(entry["time"])


def test_rfc3339_is_utc_to_the_millisecond() -> None:
    assert logs.rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert logs.rfc3339(1_795_947_234.9519) == "2026-11-29T10:13:54.951Z"
