"""Fuzzing live brokers over real sockets.

Hypothesis draws each request's bytes (sent on a raw socket, so no client
normalises them on the way): tokens with random headers, claims,
algorithms and signatures (signed with the right key, another key, the public
key's text as an HMAC secret, or garbage), carried in the Authorization
header, the query or the auth cookie; topic ids, event ids, query strings
(percent-escapes that do not decode included), header fields and bodies. Two
brokers take them: one serving the edge's fast forms, one only Quart-Trio, with
public-key and secret sides each. Whatever arrives:

- every answer is below 500;
- no log record at INFO or above carries a traceback;
- a 2xx on a guarded route means the request carried a token signed with a
  key of that side (an HMAC token over public-key text never opens a side).

The default run tries 150 examples; ``nox -s fuzz`` sets
``TRIO_ESPER_FUZZ_EXAMPLES`` to many more.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import socket
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_esper.config import Config

from .authclient import PUB_SECRET, SUB_SECRET
from .conftest import TOPIC, Broker, start_from_config

EXAMPLES = int(os.environ.get("TRIO_ESPER_FUZZ_EXAMPLES", "150"))
COOKIE = "esper_token"
AUDIENCE = "esper-fuzz"
#: An answer's head comes at once; a broker silent this long has hung.
READ_TIMEOUT_SECONDS = 10.0

RSA_FAMILY = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
HMAC_FAMILY = ("HS256", "HS384", "HS512")
HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
#: What each signer signs with; a header naming another algorithm still gets
#: a signature, by the signer's first algorithm.
FAMILY: dict[str, tuple[str, ...]] = {
    "rsa": RSA_FAMILY,
    "other-rsa": RSA_FAMILY,
    "ec": ("ES256",),
    "other-ec": ("ES256",),
    "ed25519": ("EdDSA",),
    "other-ed25519": ("EdDSA",),
    "sub-secret": HMAC_FAMILY,
    "pub-secret": HMAC_FAMILY,
    "other-secret": HMAC_FAMILY,
    # Algorithm confusion: HMAC with the public key's text as the secret.
    "rsa-pem-text": HMAC_FAMILY,
    "ed25519-pem-text": HMAC_FAMILY,
    "jwks-text": HMAC_FAMILY,
}
ALGORITHM_NAMES = (*RSA_FAMILY, *HMAC_FAMILY, "ES256", "ES384", "ES512", "EdDSA", "none", "None")
#: Fields whose fuzzing would change the request's framing, not its meaning.
FRAMING_FIELDS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te"}
)
#: Route -> the side whose token guards it.
GUARDED = {
    "subscribe": "subscribe",
    "history": "subscribe",
    "publish": "publish",
    "stats": "publish",
}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "other-rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "other-ec": ec.generate_private_key(ec.SECP256R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "other-ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


def _public_pem(private_key: Any) -> bytes:
    return bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _jwk(private_key: Any, alg: str, kid: str) -> dict[str, Any]:
    jwk = jwt.get_algorithm_by_name(alg).to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid}


@dataclass(frozen=True)
class Target:
    """A broker under fuzz and which signers may open each side."""

    broker: Broker
    genuine: dict[str, frozenset[str]]


@dataclass(frozen=True)
class Token:
    text: str
    #: The signer whose signature over exactly these bytes the token carries;
    #: ``None`` (or ``"tampered"``) when it carries none.
    signer: str | None = None


@dataclass
class Case:
    """One request: the bytes sent, and what the oracle needs to judge the answer."""

    target: int
    method: str
    route: str
    raw: bytes
    tokens: list[Token] = field(default_factory=list)


async def _start_targets(
    nursery: trio.Nursery, tmp_path: Path, keys: dict[str, Any]
) -> tuple[list[Target], bytes]:
    """Both brokers, and the JWKS file's text (for the confusion signer)."""
    jwks_path = tmp_path / "subscribers.jwks"
    jwks_path.write_text(
        json.dumps(
            {
                "keys": [
                    _jwk(keys["rsa"], "RS256", "r1"),
                    _jwk(keys["ec"], "ES256", "e1"),
                    _jwk(keys["ed25519"], "EdDSA", "d1"),
                ]
            }
        )
    )
    pem_path = tmp_path / "publishers.pem"
    pem_path.write_bytes(_public_pem(keys["rsa"]) + _public_pem(keys["ed25519"]))
    fast = Config.from_env(
        {
            "ESPER_SUBSCRIBER_KEY_FILE": str(jwks_path),
            "ESPER_PUBLISHER_SECRET": PUB_SECRET,
            "ESPER_JWT_ALGORITHMS": "HS256,RS256,PS256,ES256,EdDSA",
            "ESPER_JWT_AUDIENCE": AUDIENCE,
            "ESPER_AUTH_COOKIE": COOKIE,
        }
    )
    quart_only = Config.from_env(
        {
            "ESPER_SUBSCRIBER_SECRET": SUB_SECRET,
            "ESPER_PUBLISHER_KEY_FILE": str(pem_path),
            "ESPER_JWT_ALGORITHMS": "HS256,HS512,RS256,EdDSA",
            "ESPER_AUTH_COOKIE": COOKIE,
            "ESPER_FAST_LANE": "0",
        }
    )
    targets = [
        Target(
            await start_from_config(nursery, fast),
            {
                "subscribe": frozenset({"rsa", "ec", "ed25519"}),
                "publish": frozenset({"pub-secret"}),
            },
        ),
        Target(
            await start_from_config(nursery, quart_only),
            {"subscribe": frozenset({"sub-secret"}), "publish": frozenset({"rsa", "ed25519"})},
        ),
    ]
    return targets, jwks_path.read_bytes()


# -- strategies -------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
#: Around now, or anything else a NumericDate could be mistaken for.
TIMES = st.one_of(
    st.integers(-3600, 3600).map(lambda delta: int(time.time()) + delta),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
)
TOPIC_TEXT = st.one_of(
    st.just(TOPIC.upper()),
    st.text(string.ascii_letters + string.digits, max_size=70),
    st.text(max_size=20),
)
#: Header-field text, mostly printable ASCII; never the CR or LF that would end the field.
FIELD_TEXT = st.text(string.printable.strip() + " ", max_size=40) | st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=40
)
#: RFC 9110 section 5.6.2: token = 1*tchar.
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
HEADER_NAMES = st.text(TCHAR, min_size=1, max_size=12).filter(
    lambda name: name.lower() not in FRAMING_FIELDS
)
SSE_LINES = st.one_of(
    st.just("data: x"),
    st.text(max_size=20).map(lambda v: f"data: {v}"),
    st.text(max_size=10).map(lambda v: f"id: {v}"),
    st.text(max_size=10).map(lambda v: f"event: {v}"),
    st.text(max_size=6).map(lambda v: f"retry: {v}"),
    st.text(max_size=20),
)


def weighted(draw: st.DrawFn, *choices: tuple[int, st.SearchStrategy[Any]]) -> Any:
    """Draw from one of ``choices``, picked in proportion to its weight."""
    pick = draw(st.integers(0, sum(weight for weight, _ in choices) - 1))
    for weight, strategy in choices:
        if pick < weight:
            return draw(strategy)
        pick -= weight
    raise AssertionError("weights cover every pick")


Signers = dict[str, Callable[[str, bytes], bytes]]


def _signers(keys: dict[str, Any], jwks_text: bytes) -> Signers:
    """signer name -> sign(alg, signing input)."""
    secrets = {
        "sub-secret": SUB_SECRET.encode(),
        "pub-secret": PUB_SECRET.encode(),
        "other-secret": b"o" * 64,
        "rsa-pem-text": _public_pem(keys["rsa"]),
        "ed25519-pem-text": _public_pem(keys["ed25519"]),
        "jwks-text": jwks_text,
    }

    def hmac_signer(secret: bytes) -> Callable[[str, bytes], bytes]:
        return lambda alg, message: hmac.new(secret, message, HMAC_HASHES[alg]).digest()

    def key_signer(private_key: Any) -> Callable[[str, bytes], bytes]:
        return lambda alg, message: bytes(
            jwt.get_algorithm_by_name(alg).sign(message, private_key)
        )

    signers = {name: hmac_signer(secret) for name, secret in secrets.items()}
    signers.update({name: key_signer(key) for name, key in keys.items()})
    return signers


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signing_input(header: Any, claims: Any) -> bytes:
    return ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims)).encode()


@st.composite
def near_tokens(
    draw: st.DrawFn, signers: Signers, genuine: frozenset[str], audience: str | None
) -> Token:
    """A valid token for the side, mostly by one of its own signers, or one
    thing away from valid."""
    signer = weighted(
        draw, (3, st.sampled_from(sorted(genuine))), (1, st.sampled_from(sorted(FAMILY)))
    )
    alg = draw(st.sampled_from(FAMILY[signer]))
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if draw(st.integers(0, 2)) == 0:
        header["kid"] = draw(st.sampled_from(["r1", "e1", "d1", "x1"]))
    now = int(time.time())
    claims: dict[str, Any] = {"sub": TOPIC, "exp": now + 60}
    if audience is not None and draw(st.integers(0, 3)):
        claims["aud"] = audience
    flaw = draw(
        st.sampled_from(
            [None] * 8
            + ["nbf-future", "nbf-past", "iat-future", "exp-past", "aud", "sub", "alg", "sig"]
        )
    )
    if flaw == "nbf-future":
        claims["nbf"] = now + 60
    elif flaw == "nbf-past":
        claims["nbf"] = now - 60
    elif flaw == "iat-future":
        claims["iat"] = now + 60
    elif flaw == "exp-past":
        claims["exp"] = now - 1
    elif flaw == "aud":
        claims["aud"] = draw(JSON_VALUES)
    elif flaw == "sub":
        claims["sub"] = draw(TOPIC_TEXT)
    elif flaw == "alg":
        header["alg"] = draw(st.sampled_from(ALGORITHM_NAMES))
    signing_input = _signing_input(header, claims)
    signature = signers[signer](alg, signing_input)
    if flaw == "sig":
        at = draw(st.integers(0, len(signature) - 1))
        signature = signature[:at] + bytes([signature[at] ^ 1]) + signature[at + 1 :]
        signer = "tampered"
    return Token(f"{signing_input.decode()}.{_b64url(signature)}", signer)


@st.composite
def wild_tokens(draw: st.DrawFn, signers: Signers) -> Token:
    """Anything from a JWT with random header and claims by any signer to text
    that is no JWT at all."""
    if draw(st.integers(0, 9)) == 0:
        return Token(draw(st.text(max_size=60)))
    signer = draw(st.sampled_from(sorted(FAMILY)))
    alg = draw(
        st.one_of(st.sampled_from(FAMILY[signer]), st.sampled_from(ALGORITHM_NAMES), JSON_VALUES)
    )
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    header.update(
        draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "kid": st.sampled_from(["r1", "e1", "d1", "x1", ""]) | JSON_VALUES,
                    "crit": JSON_VALUES | st.just(["b64"]),
                    "b64": st.booleans(),
                    "typ": JSON_VALUES,
                },
            )
        )
    )
    claims: Any = {"sub": draw(st.just(TOPIC) | TOPIC_TEXT | JSON_VALUES), "exp": draw(TIMES)}
    claims.update(
        draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "nbf": TIMES,
                    "iat": TIMES,
                    "aud": st.just(AUDIENCE)
                    | st.lists(st.sampled_from([AUDIENCE, "x"]))
                    | JSON_VALUES,
                    "jti": JSON_VALUES,
                    "iss": JSON_VALUES,
                },
            )
        )
    )
    for name in draw(st.lists(st.sampled_from(["sub", "exp"]), max_size=2, unique=True)):
        del claims[name]
    if draw(st.integers(0, 19)) == 0:
        claims = draw(JSON_VALUES)
    signing_input = _signing_input(header, claims)
    forged = draw(st.sampled_from(["signed", "signed", "signed", "random", "empty"]))
    if forged == "random":
        signature = draw(st.binary(max_size=300))
    elif forged == "empty":
        signature = b""
    else:
        sign_alg = alg if isinstance(alg, str) and alg in FAMILY[signer] else FAMILY[signer][0]
        signature = signers[signer](sign_alg, signing_input)
    text = f"{signing_input.decode()}.{_b64url(signature)}"
    mangle = draw(st.sampled_from(["none"] * 6 + ["pad", "cut", "extra", "spaces"]))
    if mangle == "pad":
        text += "=="
    elif mangle == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif mangle == "extra":
        text += "." + _b64url(draw(st.binary(max_size=8)))
    elif mangle == "spaces":
        text = f" {text} "
    # The signer is named only for a signature it really made over these bytes.
    return Token(text, signer if forged == "signed" and mangle in ("none", "spaces") else None)


@st.composite
def cases(draw: st.DrawFn, targets: list[Target], signers: Signers) -> Case:
    index = draw(st.integers(0, len(targets) - 1))
    target = targets[index]
    host, port = target.broker.host_port
    route = draw(st.sampled_from(["subscribe", "publish", "history", "stats", "other"]))
    natural = "POST" if route == "publish" else "GET"
    method = weighted(
        draw,
        (6, st.just(natural)),
        (1, st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE"])),
    )
    if route == "stats":
        path = "/stats"
    elif route == "other":
        path = "/" + quote(draw(st.text(max_size=20)), safe="/")
    else:
        topic = weighted(draw, (3, st.just(TOPIC)), (1, TOPIC_TEXT))
        path = f"/{route}/{quote(topic, safe='')}"
    genuine = target.genuine[GUARDED.get(route, "subscribe")]

    placed: list[Token] = []
    query: list[str] = []
    fields: list[tuple[str, str]] = []
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        token = weighted(
            draw,
            (1, near_tokens(signers, genuine, target.broker.config.jwt_audience)),
            (1, wild_tokens(signers)),
        )
        placed.append(token)
        place = draw(st.sampled_from(["header", "query", "cookie"]))
        if place == "header":
            fields.append(("Authorization", f"Bearer {token.text}"))
        elif place == "query":
            query.append("token=" + quote(token.text, safe=""))
        else:
            fields.append(("Cookie", f"{COOKIE}={token.text}"))
    if draw(st.integers(0, 9)) == 0:
        scheme = st.sampled_from(["Basic dXNlcjpwYXNz", "Bearer", ""]) | FIELD_TEXT
        fields.append(("Authorization", draw(scheme)))
    names = st.sampled_from(["lastEventId", "since", "event", "id", "after", "limit"])
    values = st.sampled_from(["earliest", "0", "-1", "10001", "abc", ""]) | st.text(max_size=20)
    pairs = st.lists(st.tuples(names | st.text(max_size=8), values), max_size=3)
    for name, value in weighted(draw, (3, st.just([])), (1, pairs)):
        query.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    request_target = (path + ("?" + "&".join(query) if query else "")).encode("ascii")
    # Escapes that do not decode, and bytes h11 must refuse in a request target.
    junk = [b"%", b"%zz", b"%ff%fe", b"&&=&", b"%00", b"\xc3\xa9", b"\xff", b"?#"]
    request_target += weighted(draw, (9, st.just(b"")), (1, st.sampled_from(junk)))

    optional = {
        "Last-Event-ID": FIELD_TEXT,
        "Content-Type": st.sampled_from(
            ["text/plain", "text/event-stream", "application/json", "text/plain; charset=utf-8"]
        )
        | FIELD_TEXT,
        "Accept": st.sampled_from(
            ["application/x-ndjson", "text/tab-separated-values", "*/*", "text/html"]
        )
        | FIELD_TEXT,
        "Origin": st.sampled_from(["https://a.example", "null"]) | FIELD_TEXT,
    }
    chosen = weighted(draw, (1, st.just({})), (1, st.fixed_dictionaries({}, optional=optional)))
    fields.extend(chosen.items())
    extra = st.lists(st.tuples(HEADER_NAMES, FIELD_TEXT), max_size=3)
    fields.extend(weighted(draw, (3, st.just([])), (1, extra)))

    body = b""
    if method in ("POST", "PUT"):
        body = weighted(
            draw,
            (2, st.just(b"data: fuzz\n")),
            (1, st.binary(max_size=300)),
            (2, st.lists(SSE_LINES, max_size=6).map(lambda lines: "\n".join(lines).encode())),
        )
    head = [f"{method} ".encode() + request_target + b" HTTP/1.1"]
    if draw(st.integers(0, 19)):
        head.append(f"Host: {host}:{port}".encode())
    head.extend(f"{name}: {value}".encode() for name, value in fields)
    if method in ("POST", "PUT"):
        head.append(f"Content-Length: {len(body)}".encode())
    head.append(b"Connection: close")
    return Case(index, method, route, b"\r\n".join(head) + b"\r\n\r\n" + body, placed)


def _status(address: tuple[str, int], raw: bytes) -> tuple[int, bytes]:
    """Send ``raw`` on a new connection; the answer's status and head."""
    with socket.create_connection(address, timeout=READ_TIMEOUT_SECONDS) as sock:
        sock.sendall(raw)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer, "the broker closed the connection without an answer"
    status_line = answer.split(b"\r\n", 1)[0]
    version, _, rest = status_line.partition(b" ")
    assert version == b"HTTP/1.1", status_line
    return int(rest[:3]), answer.split(b"\r\n\r\n", 1)[0]


def _tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in records
        if r.levelno >= logging.INFO and (r.exc_info or "Traceback" in r.getMessage())
    ]


# -- the test ---------------------------------------------------------------------------------


async def test_live_brokers_answer_every_fuzzed_request_below_500(
    nursery: trio.Nursery,
    tmp_path: Path,
    keys: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    targets, jwks_text = await _start_targets(nursery, tmp_path, keys)
    signers = _signers(keys, jwks_text)
    seen = {"answers": 0, "admitted": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(case=cases(targets, signers))
    def one_request(case: Case) -> None:
        before = len(caplog.records)
        target = targets[case.target]
        status, head = _status(target.broker.host_port, case.raw)
        seen["answers"] += 1
        assert status < 500, (status, head, case.raw)
        side = GUARDED.get(case.route)
        if 200 <= status < 300 and side is not None and case.method != "OPTIONS":
            seen["admitted"] += 1
            genuine = target.genuine[side]
            assert any(t.signer in genuine for t in case.tokens), (status, case.raw)
        assert not _tracebacks(caplog.records[before:]), case.raw

    await trio.to_thread.run_sync(one_request)
    # The oracle above judges the fuzzed requests that got in (how many varies
    # with the examples drawn); a genuine token must get in on every side of
    # every target, or a broker refusing everything would pass.
    for target in targets:
        for side, route in (("subscribe", "history"), ("publish", "stats")):
            signer = sorted(target.genuine[side])[0]
            claims: dict[str, Any] = {"sub": TOPIC, "exp": int(time.time()) + 60}
            if target.broker.config.jwt_audience is not None:
                claims["aud"] = target.broker.config.jwt_audience
            header = {"alg": FAMILY[signer][0], "typ": "JWT"}
            signing_input = _signing_input(header, claims)
            signature = signers[signer](header["alg"], signing_input)
            token = f"{signing_input.decode()}.{_b64url(signature)}"
            path = f"/{route}/{TOPIC}" if route == "history" else "/stats"
            raw = (
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            status, head = await trio.to_thread.run_sync(_status, target.broker.host_port, raw)
            assert status == 200, (side, signer, head)
    for target in targets:
        await target.broker.stop()
    assert seen["answers"] >= EXAMPLES
    assert not _tracebacks(caplog.records)
