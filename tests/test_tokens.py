"""``trio-esper token``: the tokens it prints open a real broker's doors, and
bad input ends it with status 2 and one line on stderr, never a token there."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import jwt
import pytest
import trio
from jwt.warnings import InsecureKeyLengthWarning

from trio_esper import tokens
from trio_esper.client import BrokerError, Client, ReceivedEvent, Subscription

from .conftest import STEP_SECONDS, TOPIC, start_broker

PUBLISHER_SECRET = "publisher-secret-of-at-least-32-bytes"
SUBSCRIBER_SECRET = "subscriber-secret-of-at-least-32-bytes"
SECRETS = {
    "ESPER_PUBLISHER_SECRET": PUBLISHER_SECRET,
    "ESPER_SUBSCRIBER_SECRET": SUBSCRIBER_SECRET,
}


def _environ(**variables: str) -> dict[str, str]:
    """This process's environment without any ESPER_ variable, plus ``variables``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    return {**clean, **variables}


async def _token_command(*args: str, **variables: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m trio_esper token ARGS``, the way a shell runs it."""
    with trio.fail_after(STEP_SECONDS * 3):
        return await trio.run_process(
            [sys.executable, "-m", "trio_esper", "token", *args],
            env=_environ(**variables),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def _until_connected(events: Subscription) -> None:
    with trio.fail_after(STEP_SECONDS):
        while events.connections == 0:
            await trio.sleep(0.01)


async def test_minted_tokens_publish_and_subscribe(nursery: trio.Nursery) -> None:
    published = await _token_command("--topic", TOPIC.upper(), "--publisher", **SECRETS)
    subscribed = await _token_command("--topic", TOPIC, "--subscriber", "--ttl", "60", **SECRETS)
    for run in (published, subscribed):
        assert run.returncode == 0, run.stderr
        assert run.stderr == b""
        assert run.stdout.count(b"\n") == 1
    publisher_token = published.stdout.decode().strip()
    subscriber_token = subscribed.stdout.decode().strip()

    claims = jwt.decode(publisher_token, PUBLISHER_SECRET, algorithms=["HS256"])
    assert jwt.get_unverified_header(publisher_token)["alg"] == "HS256"
    assert claims["sub"] == TOPIC  # normalised: lower-case
    assert isinstance(claims["exp"], int)
    assert isinstance(claims["iat"], int)
    assert claims["exp"] - claims["iat"] == tokens.DEFAULT_TTL_SECONDS
    assert "aud" not in claims
    claims = jwt.decode(subscriber_token, SUBSCRIBER_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 60

    broker = await start_broker(
        nursery, publisher_secret=PUBLISHER_SECRET, subscriber_secret=SUBSCRIBER_SECRET
    )
    got: list[ReceivedEvent] = []
    async with (
        Client(broker.url) as esper,
        esper.subscribe(TOPIC, token=subscriber_token) as events,
    ):
        with pytest.raises(BrokerError) as wrong_side:
            await esper.publish(TOPIC, data="x", token=subscriber_token)
        async with trio.open_nursery() as consumers:

            async def consume() -> None:
                async for event in events:
                    got.append(event)
                    return

            consumers.start_soon(consume)
            # /stats needs a publisher token here; a stream is live once its head is in.
            await _until_connected(events)
            answer = await esper.publish(TOPIC, data="minted", token=publisher_token)
    assert wrong_side.value.status == 403  # the sides have different secrets
    assert answer["subscribers"] == 1
    assert [(e.id, e.data) for e in got] == [(answer["id"], "minted")]
    await broker.stop()


async def test_audience_from_the_environment(nursery: trio.Nursery) -> None:
    broker = await start_broker(
        nursery, publisher_secret=PUBLISHER_SECRET, jwt_audience="esper-test"
    )
    with_aud = tokens.mint(PUBLISHER_SECRET, TOPIC, 60, audience="esper-test")
    run = await _token_command(
        "--topic", TOPIC, "--publisher", ESPER_JWT_AUDIENCE="esper-test", **SECRETS
    )
    assert run.returncode == 0, run.stderr
    minted = run.stdout.decode().strip()
    assert jwt.decode(minted, PUBLISHER_SECRET, algorithms=["HS256"], audience="esper-test")[
        "aud"
    ] == ("esper-test")
    async with Client(broker.url) as esper:
        assert (await esper.publish(TOPIC, data="1", token=minted))["events"] == 1
        assert (await esper.publish(TOPIC, data="2", token=with_aud))["events"] == 1
        with pytest.raises(BrokerError) as no_aud:
            await esper.publish(TOPIC, data="3", token=tokens.mint(PUBLISHER_SECRET, TOPIC, 60))
    assert no_aud.value.status == 403
    await broker.stop()


async def test_algorithm_follows_esper_jwt_algorithms(nursery: trio.Nursery) -> None:
    secret = "a-secret-for-hs512-has-64-bytes-or-pyjwt-warns-about-its-length!"
    broker = await start_broker(
        nursery, publisher_secret=secret, jwt_algorithms=("RS256", "HS512")
    )
    environ = {"ESPER_JWT_ALGORITHMS": "RS256, HS512", "ESPER_PUBLISHER_SECRET": secret}
    run = await _token_command("--topic", TOPIC, "--publisher", **environ)
    assert run.returncode == 0, run.stderr
    minted = run.stdout.decode().strip()
    assert jwt.get_unverified_header(minted)["alg"] == "HS512"
    async with Client(broker.url) as esper:
        assert (await esper.publish(TOPIC, data="1", token=minted))["events"] == 1
    await broker.stop()


@pytest.mark.parametrize(
    ("argv", "environ", "reason"),
    [
        (["--topic", TOPIC, "--publisher"], {}, "ESPER_PUBLISHER_SECRET is not set"),
        (
            ["--topic", TOPIC, "--subscriber"],
            {"ESPER_SUBSCRIBER_SECRET": ""},
            "ESPER_SUBSCRIBER_SECRET is not set",
        ),
        (["--topic", "short", "--publisher"], SECRETS, "invalid topic 'short'"),
        (["--topic", "bad-topic-id", "--publisher"], SECRETS, "ASCII letters and digits"),
        (["--topic", "new\nline-topic", "--publisher"], SECRETS, "invalid topic"),
        (
            ["--topic", TOPIC, "--publisher", "--ttl", "0"],
            SECRETS,
            "--ttl must be a positive number",
        ),
        (
            ["--topic", TOPIC, "--publisher", "--ttl", "-5"],
            SECRETS,
            "--ttl must be a positive number",
        ),
        (["--topic", TOPIC, "--publisher", "--ttl", "1.5"], SECRETS, "invalid int value"),
        (["--topic", TOPIC], SECRETS, "give --topic and --publisher or --subscriber"),
        (["--mercure-publish", "*", "--topic", TOPIC], SECRETS, "not with --mercure-*"),
        (["--mercure-publish", "*", "--publisher"], SECRETS, "not allowed with"),
        (["--mercure-publish", ""], SECRETS, "needs a topic selector"),
        (["--mercure-subscribe", "*"], {}, "ESPER_SUBSCRIBER_SECRET is not set"),
        (["--mercure-publish", "*", "--ttl", "0"], SECRETS, "--ttl must be a positive"),
        (["--topic", TOPIC, "--publisher", "--subscriber"], SECRETS, "not allowed with"),
        (["--publisher"], SECRETS, "--topic"),
        (["--topic", TOPIC, "--publisher", "--bogus"], SECRETS, "unrecognized arguments"),
        (
            ["--topic", TOPIC, "--publisher"],
            {"ESPER_JWT_ALGORITHMS": "ES256", **SECRETS},
            "lists no HMAC algorithm",
        ),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], reason: str
) -> None:
    status = tokens.main(argv, environ)
    out, err = capsys.readouterr()
    assert status == tokens.EXIT_USAGE
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("trio-esper token: error: ")
    assert reason in err
    for secret in SECRETS.values():
        assert secret not in err


async def test_mercure_tokens_publish_and_receive_private_updates(nursery: trio.Nursery) -> None:
    book = "https://example.com/books/{id}"
    published = await _token_command("--mercure-publish", book, **SECRETS)
    subscribed = await _token_command(
        "--mercure-subscribe", book, "--mercure-subscribe", "https://example.com/a", **SECRETS
    )
    for run in (published, subscribed):
        assert run.returncode == 0, run.stderr
        assert run.stderr == b""
    publisher = published.stdout.decode().strip()
    subscriber = subscribed.stdout.decode().strip()
    claims = jwt.decode(subscriber, SUBSCRIBER_SECRET, algorithms=["HS256"])
    assert claims["mercure"] == {"subscribe": [book, "https://example.com/a"]}
    assert claims["exp"] - claims["iat"] == tokens.DEFAULT_TTL_SECONDS
    broker = await start_broker(
        nursery, publisher_secret=PUBLISHER_SECRET, subscriber_secret=SUBSCRIBER_SECRET
    )
    hub = f"{broker.url}/.well-known/mercure"
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        url = f"{hub}?topic={quote(book, safe='')}"
        headers = {"Authorization": f"Bearer {subscriber}"}
        async with client.stream("GET", url, headers=headers) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert await anext(lines) == ": subscribed"
            form = {"topic": "https://example.com/books/1", "data": "private", "private": "on"}
            answer = await client.post(
                hub, data=form, headers={"Authorization": f"Bearer {publisher}"}
            )
            assert answer.status_code == 200, answer.text
            outside = await client.post(
                hub,
                data={"topic": "https://example.com/other", "data": "x"},
                headers={"Authorization": f"Bearer {publisher}"},
            )
            assert outside.status_code == 403
            with trio.fail_after(STEP_SECONDS):
                received = [line async for line in _until_blank(lines, skip_first=True)]
            assert received == [f"id: {answer.text}", "data: private"]
    await broker.stop()


async def _until_blank(lines: AsyncIterator[str], *, skip_first: bool) -> AsyncIterator[str]:
    """The lines of the next event (after the blank line that ends the previous one)."""
    if skip_first:
        assert await anext(lines) == ""
    async for line in lines:
        if not line:
            return
        yield line


async def test_bad_input_through_the_command() -> None:
    run = await _token_command("--topic", TOPIC, "--subscriber", "--ttl", "0", **SECRETS)
    assert run.returncode == 2
    assert run.stdout == b""
    assert (
        run.stderr
        == b"trio-esper token: error: --ttl must be a positive number of seconds, got 0\n"
    )
    run = await _token_command("--topic", TOPIC, "--subscriber")
    assert run.returncode == 2
    assert run.stderr.decode().splitlines() == [
        "trio-esper token: error: ESPER_SUBSCRIBER_SECRET is not set: "
        "the subscriber side has no secret to sign with"
    ]


def test_a_short_secret_warns_in_one_line_without_the_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = tokens.main(["--topic", TOPIC, "--publisher"], {"ESPER_PUBLISHER_SECRET": "short"})
    out, err = capsys.readouterr()
    assert status == 0
    token = out.strip()
    with pytest.warns(InsecureKeyLengthWarning):
        assert jwt.decode(token, "short", algorithms=["HS256"])["sub"] == TOPIC
    assert err.count("\n") == 1
    assert err.startswith("trio-esper token: warning: The HMAC key is 5 bytes long")
    assert token not in err
    assert "short" not in err
