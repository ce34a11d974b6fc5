"""What ``trio-esper`` says as it starts, through the real command in a
child process: a refused setting is one line and exit status 2, a warning is
one log line before the start line, and the start line's URL is one a client
can use."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from jwt.warnings import InsecureKeyLengthWarning

from .conftest import STEP_SECONDS, TOPIC, RedisServer, make_token

#: The start line, whatever the address: its URL.
LISTENING = re.compile(r"listening on (\S+) \(")


def _command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m trio_esper ARGS`` run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "trio_esper", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def _environ(**variables: str) -> dict[str, str]:
    """This process's environment without its ``ESPER_*`` variables, plus ``variables``."""
    kept = {k: v for k, v in os.environ.items() if not k.upper().startswith("ESPER_")}
    return {**kept, **variables}


class Started:
    """A broker process that has logged its start line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = b""

    @property
    def lines(self) -> list[str]:
        return self.stderr.decode().splitlines()

    async def read_until(self, pattern: re.Pattern[str]) -> re.Match[str]:
        assert self.process.stderr is not None
        with trio.fail_after(20):
            while (match := pattern.search(self.stderr.decode(errors="replace"))) is None:
                chunk = await self.process.stderr.receive_some()
                assert chunk, f"the broker exited: {self.stderr.decode()}"
                self.stderr += chunk
        return match

    async def stop(self) -> None:
        """SIGTERM; the rest of stderr read; exit status 0."""
        assert self.process.stderr is not None
        self.process.terminate()
        with trio.fail_after(STEP_SECONDS):
            while chunk := await self.process.stderr.receive_some():
                self.stderr += chunk
            assert await self.process.wait() == 0, self.stderr.decode()


@asynccontextmanager
async def _started(*args: str, env: dict[str, str]) -> AsyncIterator[Started]:
    """``python -m trio_esper --port 0 ARGS``, once it has logged its start line."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_esper", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    running = Started(process)
    try:
        await running.read_until(LISTENING)
        yield running
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
        await process.stderr.aclose()


def _json(lines: list[str]) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in entries), lines
    return entries


# --- a refused setting: exit status 2, one line naming it as given --------------


@pytest.mark.parametrize(
    ("args", "variables", "line"),
    [
        pytest.param(
            ["--cors-origin", "http://host:8000/"],
            {},
            "trio-esper: error: --cors-origin 'http://host:8000/': an origin has no path; "
            "did you mean 'http://host:8000'?",
            id="cors-flag",
        ),
        pytest.param(
            [],
            {"ESPER_CORS_ORIGINS": "https://example.com,Example.com"},
            "trio-esper: error: ESPER_CORS_ORIGINS 'Example.com': an origin starts with its "
            "scheme; did you mean 'https://example.com' or 'http://example.com'?",
            id="cors-variable",
        ),
        pytest.param(
            ["--queue", "0"], {}, "trio-esper: error: --queue must be at least 1", id="flag"
        ),
        pytest.param(
            [],
            {"ESPER_QUEUE_EVENTS": "0"},
            "trio-esper: error: ESPER_QUEUE_EVENTS must be at least 1",
            id="variable",
        ),
        pytest.param(
            ["--workers", "0"],
            {},
            "trio-esper: error: --workers must be at least 1, got 0",
            id="alias-as-typed",
        ),
    ],
)
def test_a_refused_setting_exits_2_in_one_line_naming_it(
    args: list[str], variables: dict[str, str], line: str
) -> None:
    result = _command(*args, "--port", "0", env=_environ(**variables))
    assert (result.returncode, result.stderr.splitlines(), result.stdout) == (2, [line], "")


# --- warnings: one log line each, before the start line --------------------------


async def test_a_variable_not_ours_is_one_warning_line_each() -> None:
    env = _environ(
        ESPER_PROT="4000",
        ESPER_HEARTBEAT="5",
        ESPER_UNRELATED="a-value-never-logged",
        ESPER_PORT="0",
    )
    async with _started("--no-auth", "--log-format", "json", env=env) as running:
        await running.stop()
    entries = _json(running.lines)
    warnings = [e for e in entries if e.get("event") == "config_warning"]
    assert [(e["level"], e["variable"], e["message"]) for e in warnings] == [
        (
            "warning",
            "ESPER_HEARTBEAT",
            "ESPER_HEARTBEAT is not a trio-esper setting: ignored; "
            "did you mean ESPER_HEARTBEAT_SECONDS?",
        ),
        (
            "warning",
            "ESPER_PROT",
            "ESPER_PROT is not a trio-esper setting: ignored; did you mean ESPER_PORT?",
        ),
        ("warning", "ESPER_UNRELATED", "ESPER_UNRELATED is not a trio-esper setting: ignored"),
    ]
    assert entries[3]["event"] == "start"
    assert "a-value-never-logged" not in running.stderr.decode()


async def test_a_short_secret_is_one_warning_line_and_still_verifies() -> None:
    short = "short-secret"  # 12 bytes; HS256 needs 32
    env = _environ(ESPER_SUBSCRIBER_SECRET=short, ESPER_PUBLISHER_SECRET="p" * 64)
    with pytest.warns(InsecureKeyLengthWarning):
        token = make_token(short)
    async with _started("--log-format", "json", env=env) as running:
        url = await running.read_until(LISTENING)
        subscribe = f"{url.group(1)}/subscribe/{TOPIC}?token={token}"
        async with (
            httpx.AsyncClient(timeout=STEP_SECONDS) as client,
            client.stream("GET", subscribe) as stream,
        ):
            assert stream.status_code == 200
        await running.stop()
    # Every line is the log's (JSON): PyJWT's own warning, two lines of
    # Python's format, is not repeated when the token verifies.
    entries = _json(running.lines)
    warnings = [e for e in entries if e.get("event") == "config_warning"]
    assert [(e["variable"], e["message"]) for e in warnings] == [
        (
            "ESPER_SUBSCRIBER_SECRET",
            "ESPER_SUBSCRIBER_SECRET is 12 bytes: HS256 needs 32 or more (RFC 7518 section "
            "3.2); a shorter secret is easier to guess",
        )
    ]
    assert short not in running.stderr.decode()
    assert token.rsplit(".", 1)[-1] not in running.stderr.decode()


@pytest.mark.slow
async def test_threads_warn_once_not_once_per_worker(redis_server: RedisServer) -> None:
    env = _environ(ESPER_PROT="4000")
    args = ("--no-auth", "--threads", "2", "--backplane", redis_server.url, "--log-format", "json")
    async with _started(*args, env=env) as running:
        supervisor = await running.read_until(re.compile(r"listening on (\S+) with 2 workers"))
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", supervisor.group(1))
        await running.stop()
    entries = _json(running.lines)
    # Each worker logs its own start line; the warning is the supervisor's alone.
    assert len([e for e in entries if e.get("event") == "start"]) == 3, entries
    warnings = [e["variable"] for e in entries if e.get("event") == "config_warning"]
    assert warnings == ["ESPER_PROT"]


async def test_no_warning_for_a_config_that_needs_none() -> None:
    env = _environ(ESPER_SUBSCRIBER_SECRET="s" * 32, ESPER_PUBLISHER_SECRET="p" * 32)
    async with _started(env=env) as running:
        await running.stop()
    assert " WARNING " not in running.stderr.decode(), running.lines


# --- the start line's URL ----------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
async def test_an_ipv6_bind_logs_a_url_a_client_can_use() -> None:
    async with _started("--bind", "::1", "--no-auth", env=_environ()) as running:
        url = await running.read_until(LISTENING)
        assert re.fullmatch(r"http://\[::1\]:\d+", url.group(1)), url.group(1)
        async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
            response = await client.get(f"{url.group(1)}/health")
        assert response.status_code == 200
        await running.stop()


def test_help_names_the_section_not_below() -> None:
    result = _command("--help", env=_environ())
    assert result.returncode == 0
    assert "see below" not in result.stdout
    words = " ".join(result.stdout.split())
    assert "--backplane (see Beyond one process in the documentation)" in words
    assert "in the README" not in words
