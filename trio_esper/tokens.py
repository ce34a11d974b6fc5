"""``trio-esper token``: mint a JWT the broker accepts, for curl users and scripts.

::

    trio-esper token --topic myTopic123 --publisher [--ttl SECONDS]
    trio-esper token --mercure-publish 'https://example.com/books/{id}' [--ttl SECONDS]
    trio-esper token --mercure-subscribe '*' [--ttl SECONDS]

signs ``{"sub": <normalised topic>, "iat": <now>, "exp": <now + ttl>}`` (and
``"aud"`` when ``ESPER_JWT_AUDIENCE`` is set, since the broker then requires
it) with ``ESPER_PUBLISHER_SECRET`` or ``ESPER_SUBSCRIBER_SECRET`` from the
environment, and prints it on standard output, nothing else. The algorithm is
HS256, or the first HMAC algorithm ``ESPER_JWT_ALGORITHMS`` lists when it does
not list HS256, so the broker reading the same environment accepts the token.

The Mercure forms sign ``{"mercure": {"publish": [...]}, "iat", "exp"}`` with
``ESPER_PUBLISHER_SECRET`` (``"subscribe"`` and ``ESPER_SUBSCRIBER_SECRET`` for
``--mercure-subscribe``): the claim the Mercure hub at ``/.well-known/mercure``
reads, one selector per repeated flag.

A secret that is unset or empty, a topic the broker would refuse, or a TTL
that is not a positive integer ends the command with exit status 2 and one
line on standard error; neither the secret nor a token is ever written there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import NoReturn

import jwt

from .auth import HMAC_ALGORITHMS
from .errors import InvalidTopic
from .topics import normalise_topic

__all__ = ["DEFAULT_TTL_SECONDS", "EXIT_USAGE", "TokenError", "main", "mint", "mint_mercure"]

#: A token for a person at a terminal: an hour, then mint another.
DEFAULT_TTL_SECONDS = 3600
EXIT_USAGE = 2
PROG = "trio-esper token"
#: The broker's default; HMAC is the only kind a shared secret can sign.
DEFAULT_ALGORITHM = "HS256"


class TokenError(Exception):
    """The inputs cannot make a token the broker accepts; the message says why."""


def mint(
    secret: str,
    topic: str,
    ttl_seconds: int,
    *,
    audience: str | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
    now: float | None = None,
) -> str:
    """A JWT for ``topic`` signed with ``secret``: ``sub`` is the normalised
    topic, ``iat`` now and ``exp`` ``ttl_seconds`` later (both integers, as
    the broker requires for ``exp``), ``aud`` when ``audience`` is given.

    Raises:
        TokenError: empty secret, invalid topic, ``ttl_seconds`` not
            positive, or ``algorithm`` not an HMAC one.
    """
    if not secret:
        raise TokenError("the secret is empty")
    try:
        subject = normalise_topic(topic)
    except InvalidTopic as exc:
        raise TokenError(f"invalid topic {topic[:80]!r}: {exc.reason}") from None
    return _signed({"sub": subject}, secret, ttl_seconds, audience, algorithm, now)


def mint_mercure(
    secret: str,
    claim: str,
    selectors: Sequence[str],
    ttl_seconds: int,
    *,
    audience: str | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
    now: float | None = None,
) -> str:
    """A Mercure JWT signed with ``secret``: ``{"mercure": {claim: selectors}}``
    (``claim`` is ``"publish"`` or ``"subscribe"``), ``iat``, ``exp`` and
    ``aud`` as :func:`mint` gives them.

    Raises:
        TokenError: as :func:`mint`, or no selector, or an empty one.
    """
    if not secret:
        raise TokenError("the secret is empty")
    if not selectors or not all(selectors):
        raise TokenError(f"--mercure-{claim} needs a topic selector (a topic, a template or *)")
    claims: dict[str, object] = {"mercure": {claim: list(selectors)}}
    return _signed(claims, secret, ttl_seconds, audience, algorithm, now)


def _signed(
    claims: dict[str, object],
    secret: str,
    ttl_seconds: int,
    audience: str | None,
    algorithm: str,
    now: float | None,
) -> str:
    """``claims`` with ``iat``, ``exp`` (integers) and ``aud``, signed.

    Raises:
        TokenError: ``ttl_seconds`` not positive, or ``algorithm`` not an HMAC one.
    """
    if ttl_seconds < 1:
        raise TokenError(f"--ttl must be a positive number of seconds, got {ttl_seconds}")
    if algorithm not in HMAC_ALGORITHMS:
        raise TokenError(
            f"{algorithm} is not an HMAC algorithm ({', '.join(sorted(HMAC_ALGORITHMS))})"
        )
    issued = int(time.time() if now is None else now)
    claims = {**claims, "iat": issued, "exp": issued + ttl_seconds}
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm)


def _algorithm(environ: Mapping[str, str]) -> str:
    """HS256 unless ``ESPER_JWT_ALGORITHMS`` leaves it out (parsed as the
    broker parses it: comma-separated, spaces ignored)."""
    listed = [a.strip() for a in environ.get("ESPER_JWT_ALGORITHMS", "").split(",") if a.strip()]
    if not listed or DEFAULT_ALGORITHM in listed:
        return DEFAULT_ALGORITHM
    for algorithm in listed:
        if algorithm in HMAC_ALGORITHMS:
            return algorithm
    raise TokenError(
        f"ESPER_JWT_ALGORITHMS ({', '.join(listed)}) lists no HMAC algorithm: the broker "
        "would refuse any token signed with a secret"
    )


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the usage and then the error; one line is the contract.
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Print a JWT for one topic, signed with ESPER_PUBLISHER_SECRET or "
        "ESPER_SUBSCRIBER_SECRET from the environment (and carrying ESPER_JWT_AUDIENCE "
        "as aud when set).",
    )
    parser.add_argument("--topic", help="the topic the token is for")
    side = parser.add_mutually_exclusive_group()
    side.add_argument(
        "--publisher",
        dest="side",
        action="store_const",
        const="publisher",
        help="a token to publish (and read /stats) with ESPER_PUBLISHER_SECRET",
    )
    side.add_argument(
        "--subscriber",
        dest="side",
        action="store_const",
        const="subscriber",
        help="a token to subscribe with ESPER_SUBSCRIBER_SECRET",
    )
    side.add_argument(
        "--mercure-publish",
        action="append",
        metavar="SELECTOR",
        help="a Mercure token whose mercure.publish claim holds SELECTOR (repeatable), "
        "signed with ESPER_PUBLISHER_SECRET; no --topic",
    )
    side.add_argument(
        "--mercure-subscribe",
        action="append",
        metavar="SELECTOR",
        help="a Mercure token whose mercure.subscribe claim holds SELECTOR (repeatable), "
        "signed with ESPER_SUBSCRIBER_SECRET; no --topic",
    )
    parser.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL_SECONDS,
        metavar="SECONDS",
        help=f"lifetime: exp is now plus this (default {DEFAULT_TTL_SECONDS})",
    )
    return parser


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, read and checked: esper's form or a Mercure one."""
    args = _parser().parse_args(argv)
    mercure = args.mercure_publish or args.mercure_subscribe
    if mercure and args.topic is not None:
        raise _UsageError("--topic is for esper's tokens, not with --mercure-*")
    if not mercure and (args.topic is None or args.side is None):
        raise _UsageError(
            "give --topic and --publisher or --subscriber, "
            "or --mercure-publish or --mercure-subscribe"
        )
    return args


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Run ``trio-esper token ARGV``; print the token; return the exit status
    (0, or :data:`EXIT_USAGE` after one line on standard error).
    ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    try:
        args = _arguments(argv)
        mercure = args.mercure_publish or args.mercure_subscribe
        audience = env.get("ESPER_JWT_AUDIENCE") or None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if mercure:
                publish = args.mercure_publish is not None
                token = mint_mercure(
                    _secret(env, "publisher" if publish else "subscriber"),
                    "publish" if publish else "subscribe",
                    mercure,
                    args.ttl,
                    audience=audience,
                    algorithm=_algorithm(env),
                )
            else:
                token = mint(
                    _secret(env, args.side),
                    args.topic,
                    args.ttl,
                    audience=audience,
                    algorithm=_algorithm(env),
                )
    except (_UsageError, TokenError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in caught:
        # PyJWT's advice on a short secret, one line instead of Python's
        # two-line warning format; it names the length, never the secret.
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    print(token)
    return 0


def _secret(environ: Mapping[str, str], side: str) -> str:
    variable = f"ESPER_{side.upper()}_SECRET"
    secret = environ.get(variable, "")
    if not secret:
        raise TokenError(f"{variable} is not set: the {side} side has no secret to sign with")
    return secret
