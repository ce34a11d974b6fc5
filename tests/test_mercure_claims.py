"""trio_esper.mercure.claims: Mercure's authorization, as dunglas/mercure v0.24.2 decides it.

The claims tables give, for each token payload, what Mercure's ``validateJWT``
(authorization.go, over golang-jwt v5.3.1) answered for the same token: its
claims, or a refusal (a Go program outside the repository ran it). Where this
hub refuses on purpose what Mercure accepts, the case says so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trio_esper.auth import load_public_keys
from trio_esper.errors import Forbidden, Unauthorized
from trio_esper.mercure.claims import (
    MercureClaims,
    TokenSources,
    authorize,
    authorize_publish,
    can_receive,
    find_token,
    verify_token,
)
from trio_esper.selectors import SelectorMatcher

SECRET = "a-secret-of-at-least-thirty-two-bytes"
NOW = 1_800_000_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(
    payload: bytes, *, header: bytes = b'{"alg":"HS256","typ":"JWT"}', key: str = SECRET
) -> str:
    """An HS256 JWS over exactly these payload bytes (PyJWT would re-encode them)."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def claims(
    publish: tuple[str, ...] | None = None,
    subscribe: tuple[str, ...] | None = None,
    payload: object = None,
    expires_at: int | None = None,
) -> MercureClaims:
    return MercureClaims(publish, subscribe, payload, expires_at)


# (payload bytes, the claims Mercure read, or a fragment of our reason for refusing).
CLAIMS_CASES = [
    pytest.param(
        b'{"mercure": {"publish": ["*"], "subscribe": ["a"], "payload": {"user": 1}}}',
        claims(("*",), ("a",), {"user": 1}),
        id="full",
    ),
    pytest.param(b"{}", claims(), id="no-mercure-claim"),
    pytest.param(b"null", claims(), id="null-claims"),
    pytest.param(b"[]", "not a JSON object", id="array-claims"),
    pytest.param(b'"x"', "not a JSON object", id="string-claims"),
    pytest.param(b"{", "not valid JSON", id="broken-json"),
    pytest.param(b'{"mercure": null}', claims(), id="mercure-null"),
    pytest.param(b'{"mercure": "x"}', "mercure must be an object", id="mercure-string"),
    pytest.param(b'{"mercure": []}', "mercure must be an object", id="mercure-array"),
    # A non-array publish claim makes the whole token invalid (Go's
    # json.Unmarshal fails), not merely a token without the right.
    pytest.param(b'{"mercure": {"publish": "x"}}', "array of strings", id="publish-string"),
    pytest.param(b'{"mercure": {"publish": [1]}}', "array of strings", id="publish-number"),
    pytest.param(b'{"mercure": {"subscribe": {}}}', "array of strings", id="subscribe-object"),
    pytest.param(b'{"mercure": {"publish": ["a", null]}}', claims(("a", "")), id="null-element"),
    pytest.param(b'{"mercure": {"publish": []}}', claims(()), id="publish-empty"),
    pytest.param(
        b'{"mercure": {"publish": null, "subscribe": []}}', claims(None, ()), id="null-and-empty"
    ),
    # Go's encoding/json matches keys case-insensitively (fold.go).
    pytest.param(b'{"Mercure": {"PUBLISH": ["a"]}}', claims(("a",)), id="key-case"),
    pytest.param('{"mercure": {"publi\u017fh": ["a"]}}'.encode(), claims(("a",)), id="key-long-s"),
    pytest.param('{"mercure": {"publi\u0131sh": ["a"]}}'.encode(), claims(), id="key-dotless-i"),
    pytest.param(
        b'{"mercure": {"payload": 1, "PAYLOAD": 2}}', claims(payload=2), id="key-last-wins"
    ),
    pytest.param(
        b'{"mercure": {"publish": ["a"]}, "mercure": {"subscribe": ["b"]}}',
        claims(("a",), ("b",)),
        id="duplicate-merges",
    ),
    pytest.param(
        b'{"mercure": {"publish": ["a"]}, "MERCURE": {"publish": null}}',
        claims(),
        id="duplicate-null-clears",
    ),
    pytest.param(
        b'{"mercure": {"publish": ["a"]}, "mercure": 5}', "must be an object", id="duplicate-bad"
    ),
    # "https://mercure.rocks/" replaces "mercure" whole when present.
    pytest.param(
        b'{"mercure": {"publish": ["a"]}, "https://mercure.rocks/": {"subscribe": ["b"]}}',
        claims(None, ("b",)),
        id="namespaced-replaces",
    ),
    pytest.param(
        b'{"https://mercure.rocks/": {"publish": ["a"]}, "https://mercure.rocks/": null}',
        claims(),
        id="namespaced-null",
    ),
    pytest.param(
        b'{"HTTPS://MERCURE.ROCKS/": {"publish": ["n"]}, "mercure": {"publish": ["m"]}}',
        claims(("n",)),
        id="namespaced-case",
    ),
    pytest.param(b'{"https://mercure.rocks/": 1}', "must be an object", id="namespaced-number"),
    pytest.param(b'{"mercure": {"payload": 1e400}}', "out of range", id="payload-overflow"),
    pytest.param(
        b'{"other": 1e400, "mercure": {"publish": ["a"]}}', claims(("a",)), id="unread-overflow"
    ),
    pytest.param(b'{"mercure": {"payload": NaN}}', "NaN", id="nan"),
    pytest.param(
        b'{"mercure": {"payload": {"a": 1, "a": 2}}}', claims(payload={"a": 2}), id="payload-dup"
    ),
    pytest.param(b'{"mercure": {"payload": "\xff"}}', claims(payload="\ufffd"), id="bad-utf8"),
    pytest.param(
        b'{"mercure": {"payload": "\\ud800"}}', claims(payload="\ufffd"), id="lone-surrogate"
    ),
    pytest.param(
        b'{"mercure": {"payload": [1, 2.5, true, null, "s", {"k": []}]}}',
        claims(payload=[1, 2.5, True, None, "s", {"k": []}]),
        id="payload-json",
    ),
    pytest.param(
        json.dumps({"mercure": {"publish": ["a"] * 1001}}).encode(),
        "too many matchers",
        id="1001-publish",
    ),
    pytest.param(
        json.dumps({"mercure": {"subscribe": ["a"] * 1000}}).encode(),
        claims(None, ("a",) * 1000),
        id="1000-subscribe",
    ),
    # exp is optional, and honoured (golang-jwt: valid while now < exp, truncated to the second).
    pytest.param(b'{"exp": 1700000000}', "expired", id="exp-past"),
    pytest.param(b'{"exp": 1800000000}', "expired", id="exp-now"),
    pytest.param(b'{"exp": 1800000000.9}', "expired", id="exp-fraction"),
    pytest.param(b'{"exp": 1800000001}', claims(expires_at=1800000001), id="exp-next-second"),
    pytest.param(b'{"exp": "1900000000"}', claims(expires_at=1900000000), id="exp-string"),
    pytest.param(b'{"exp": "1e10"}', claims(expires_at=10**10), id="exp-string-float"),
    pytest.param(b'{"exp": "01"}', "exp must be a number", id="exp-bad-number"),
    pytest.param(b'{"exp": ""}', "exp must be a number", id="exp-empty"),
    pytest.param(b'{"exp": true}', "exp must be a number", id="exp-bool"),
    pytest.param(b'{"exp": null}', claims(), id="exp-null"),
    pytest.param(b'{"exp": -1.5}', "expired", id="exp-negative"),
    # Go turns 1e300 into whatever int64 the CPU makes of it: expired on amd64.
    pytest.param(b'{"exp": 1e300}', "out of range", id="exp-huge"),
    pytest.param(b'{"exp": 1900000000, "exp": null}', claims(), id="exp-then-null"),
    pytest.param(b'{"EXP": 1700000000}', "expired", id="exp-key-case"),
    # nbf is honoured too (valid from nbf on); iat is not checked, only its type.
    pytest.param(b'{"nbf": 1900000000}', "not valid yet", id="nbf-future"),
    pytest.param(b'{"nbf": 1800000000}', claims(), id="nbf-now"),
    pytest.param(b'{"nbf": 1800000000.5}', claims(), id="nbf-fraction"),
    pytest.param(b'{"nbf": "x"}', "nbf must be a number", id="nbf-string"),
    pytest.param(b'{"iat": 1900000000}', claims(), id="iat-future"),
    pytest.param(b'{"iat": "x"}', "iat must be a number", id="iat-string"),
    # The other registered claims are type-checked, not interpreted.
    pytest.param(b'{"aud": 5}', "aud must be", id="aud-number"),
    pytest.param(b'{"aud": ["a", null]}', "aud must be", id="aud-null-element"),
    pytest.param(b'{"aud": "x"}', claims(), id="aud-ignored"),
    pytest.param(b'{"aud": []}', claims(), id="aud-empty"),
    pytest.param(b'{"iss": 5}', "iss must be a string", id="iss-number"),
    pytest.param(b'{"sub": {}}', "sub must be a string", id="sub-object"),
    pytest.param(b'{"jti": []}', "jti must be a string", id="jti-array"),
    pytest.param(b'{"sub": "x", "iss": "y", "jti": "z"}', claims(), id="registered-strings"),
]


@pytest.mark.parametrize(("payload", "expected"), CLAIMS_CASES)
def test_claims_as_mercure_reads_them(payload: bytes, expected: MercureClaims | str) -> None:
    token = sign(payload)
    if isinstance(expected, MercureClaims):
        assert verify_token(token, SECRET, now=NOW) == expected
    else:
        with pytest.raises(Unauthorized, match=expected) as refused:
            verify_token(token, SECRET, now=NOW)
        assert token not in refused.value.reason


GOOD = b'{"mercure": {"publish": ["*"]}}'
ALG_NONE = b'{"alg":"none"}'

# (token, fragment of the reason it is refused); Mercure refuses each too,
# except where the id says "mercure-accepts".
BAD_TOKENS = [
    pytest.param(sign(GOOD, key="another-secret-of-thirty-two-bytes"), "signature", id="key"),
    pytest.param(sign(GOOD, header=b'{"alg":"HS384"}'), "algorithm", id="alg-not-configured"),
    pytest.param(sign(GOOD, header=b'{"alg":"none"}'), "algorithm", id="alg-none"),
    pytest.param(f"{_b64(ALG_NONE)}.{_b64(GOOD)}.", "algorithm", id="unsigned"),
    pytest.param(sign(GOOD) + "=", "compact", id="padded"),
    pytest.param(" " + sign(GOOD), "compact", id="leading-space"),
    pytest.param(sign(GOOD) + ".x", "compact", id="four-segments"),
    pytest.param("", "compact", id="empty"),
    pytest.param(sign(GOOD)[:-2], "padding", id="truncated"),
    # RFC 7515: a kid is a string, and an unknown "crit" extension MUST be refused.
    pytest.param(
        sign(GOOD, header=b'{"alg":"HS256","kid":5}'), "Key ID", id="mercure-accepts-kid"
    ),
    pytest.param(
        sign(GOOD, header=b'{"alg":"HS256","crit":["x"]}'), "critical", id="mercure-accepts-crit"
    ),
]


@pytest.mark.parametrize(("token", "reason"), BAD_TOKENS)
def test_bad_tokens_are_unauthorized(token: str, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason) as refused:
        verify_token(token, SECRET, now=NOW)
    assert not token or token not in refused.value.reason


@pytest.mark.parametrize(
    ("payload", "options", "expected"),
    [
        (b'{"exp": 1799999995}', {"leeway_seconds": 10}, claims(expires_at=1799999995)),
        (b'{"nbf": 1800000005}', {"leeway_seconds": 10}, claims()),
        (b'{"aud": "hub"}', {"audience": "hub"}, claims()),
        (b'{"aud": ["x", "hub"]}', {"audience": "hub"}, claims()),
        (b'{"aud": "other"}', {"audience": "hub"}, "audience"),
        (b"{}", {"audience": "hub"}, "audience"),
        (b'{"mercure": {"publish": ["a"]}}', {"algorithms": ("HS512",)}, "algorithm"),
        (b'{"mercure": {"publish": ["a"]}}', {"algorithms": ("HS512", "HS256")}, claims(("a",))),
    ],
)
def test_verification_options(
    payload: bytes, options: dict[str, Any], expected: MercureClaims | str
) -> None:
    token = sign(payload)
    if isinstance(expected, MercureClaims):
        assert verify_token(token, SECRET, now=NOW, **options) == expected
    else:
        with pytest.raises(Unauthorized, match=expected):
            verify_token(token, SECRET, now=NOW, **options)


def test_expiry_is_checked_against_the_clock() -> None:
    assert verify_token(sign(b'{"exp": 4102444800}'), SECRET) == claims(expires_at=4102444800)
    with pytest.raises(Unauthorized, match="expired"):
        verify_token(sign(b'{"exp": 946684800}'), SECRET)


def test_public_keys(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = b"".join(
        k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for k in (rsa_key, ec_key)
    )
    path = tmp_path / "keys.pem"
    path.write_bytes(pem)
    keys = load_public_keys(str(path))
    body = {"mercure": {"subscribe": ["urn:a"]}}
    accepted = ("RS256", "ES256")
    for key, algorithm in ((rsa_key, "RS256"), (ec_key, "ES256")):
        token = jwt.encode(body, key, algorithm=algorithm)
        assert verify_token(token, keys, algorithms=accepted) == claims(None, ("urn:a",))
    # An algorithm configuration does not list is refused, whatever the key.
    with pytest.raises(Unauthorized, match="not accepted"):
        verify_token(jwt.encode(body, rsa_key, algorithm="PS256"), keys, algorithms=accepted)
    # The public key's text is not an HMAC secret (algorithm confusion).
    forged = sign(json.dumps(body).encode(), key=pem.decode())
    with pytest.raises(Unauthorized, match="not accepted"):
        verify_token(forged, keys, algorithms=(*accepted, "HS256"))
    # And a secret verifies no public-key token.
    with pytest.raises(Unauthorized):
        verify_token(jwt.encode(body, rsa_key, algorithm="RS256"), SECRET, algorithms=accepted)


TOKEN = sign(GOOD)  # long enough for Mercure's length checks


@dataclass(frozen=True)
class Refused:
    """An expected Unauthorized, with a fragment of its reason."""

    reason: str


OTHER = sign(b'{"mercure": {"subscribe": ["*"]}}')

# (where the request carries tokens, find_token's options, the token found, or the reason refused).
FIND_TOKEN_CASES = [
    pytest.param(TokenSources(), {}, None, id="anonymous"),
    pytest.param(TokenSources(authorization=(f"Bearer {TOKEN}",)), {}, TOKEN, id="header"),
    pytest.param(TokenSources(query=(TOKEN,)), {}, TOKEN, id="query"),
    pytest.param(TokenSources(cookies=(f"mercureAuthorization={TOKEN}",)), {}, TOKEN, id="cookie"),
    # Precedence: the header, then the query parameter, then the cookie.
    pytest.param(
        TokenSources(
            authorization=(f"Bearer {TOKEN}",),
            query=(OTHER,),
            cookies=(f"mercureAuthorization={OTHER}",),
        ),
        {},
        TOKEN,
        id="header-first",
    ),
    pytest.param(
        TokenSources(query=(TOKEN,), cookies=(f"mercureAuthorization={OTHER}",)),
        {},
        TOKEN,
        id="query-before-cookie",
    ),
    # A malformed carrier is refused, not skipped for the next one.
    pytest.param(
        TokenSources(authorization=("Basic dXNlcjpwYXNz" + "x" * 40,), query=(TOKEN,)),
        {},
        Refused('invalid "Authorization"'),
        id="basic",
    ),
    pytest.param(
        TokenSources(authorization=(f"bearer {TOKEN}",)),
        {},
        Refused('invalid "Authorization"'),
        id="case",
    ),
    pytest.param(
        TokenSources(authorization=("",)), {}, Refused('invalid "Authorization"'), id="empty"
    ),
    pytest.param(
        TokenSources(authorization=("Bearer " + "a" * 40,)),
        {},
        Refused('invalid "Authorization"'),
        id="47-chars",
    ),
    pytest.param(TokenSources(authorization=("Bearer " + "a" * 41,)), {}, "a" * 41, id="48-chars"),
    pytest.param(
        TokenSources(authorization=(f"Bearer {TOKEN}", f"Bearer {TOKEN}")),
        {},
        Refused('invalid "Authorization"'),
        id="two-headers",
    ),
    pytest.param(
        TokenSources(authorization=(f"Bearer  {TOKEN}",)), {}, f" {TOKEN}", id="two-spaces"
    ),
    pytest.param(
        TokenSources(query=("a" * 40,)), {}, Refused('invalid "authorization"'), id="q-40"
    ),
    pytest.param(TokenSources(query=("a" * 41,)), {}, "a" * 41, id="q-41"),
    pytest.param(TokenSources(query=("",)), {}, Refused('invalid "authorization"'), id="q-empty"),
    pytest.param(
        TokenSources(query=(TOKEN, TOKEN)), {}, Refused('invalid "authorization"'), id="q-twice"
    ),
    # Cookies as Go's net/http reads them.
    pytest.param(
        TokenSources(cookies=(f'a=1; mercureAuthorization="{TOKEN}"; b=2',)),
        {},
        TOKEN,
        id="quoted",
    ),
    pytest.param(
        TokenSources(cookies=(f"mercureAuthorization=a\\b; mercureAuthorization={TOKEN}",)),
        {},
        TOKEN,
        id="invalid-value-skipped",
    ),
    pytest.param(
        TokenSources(cookies=("x=1", f"mercureAuthorization={TOKEN}", "mercureAuthorization=b")),
        {},
        TOKEN,
        id="first-of-lines",
    ),
    pytest.param(
        TokenSources(cookies=(f"MercureAuthorization={TOKEN}",)), {}, None, id="name-case"
    ),
    pytest.param(TokenSources(cookies=("mercureAuthorization",)), {}, "", id="no-value"),
    pytest.param(
        TokenSources(cookies=(f"hub={TOKEN}",)), {"cookie_name": "hub"}, TOKEN, id="cookie-name"
    ),
    pytest.param(
        TokenSources(cookies=(f"mercureAuthorization={TOKEN}" + ";" * 3000,)),
        {},
        None,
        id="over-3000-cookies",
    ),
    # On a POST, a cookie needs an allowed origin (CSRF).
    pytest.param(
        TokenSources(cookies=(f"mercureAuthorization={TOKEN}",), method="POST"),
        {"publish_origins": ("*",)},
        Refused('an "Origin" or a "Referer"'),
        id="post-no-origin",
    ),
    pytest.param(
        TokenSources(
            cookies=(f"mercureAuthorization={TOKEN}",), method="POST", origin="https://a.test"
        ),
        {},
        Refused("not allowed"),
        id="post-no-origins-configured",
    ),
    pytest.param(
        TokenSources(
            cookies=(f"mercureAuthorization={TOKEN}",), method="POST", origin="https://a.test"
        ),
        {"publish_origins": ("HTTPS://A.TEST",)},
        TOKEN,
        id="post-origin",
    ),
    pytest.param(
        TokenSources(
            cookies=(f"mercureAuthorization={TOKEN}",), method="POST", origin="HTTPS://A.TEST"
        ),
        {"publish_origins": ("https://a.test",)},
        Refused("not allowed"),
        id="post-origin-case",
    ),
    pytest.param(
        TokenSources(
            cookies=(f"mercureAuthorization={TOKEN}",), method="POST", origin="https://b.a.test"
        ),
        {"publish_origins": ("https://*.a.test",)},
        TOKEN,
        id="post-wildcard",
    ),
    pytest.param(
        TokenSources(
            cookies=(f"mercureAuthorization={TOKEN}",), method="POST", origin="https://a.test"
        ),
        {"publish_origins": ("https://*.a.test",)},
        Refused("not allowed"),
        id="post-wildcard-apex",
    ),
    pytest.param(
        TokenSources(
            cookies=(f"mercureAuthorization={TOKEN}",),
            method="POST",
            referer="https://user:pw@a.test:8443/page?x#y",
        ),
        {"publish_origins": ("https://a.test:8443",)},
        TOKEN,
        id="post-referer",
    ),
    pytest.param(
        TokenSources(
            cookies=(f"mercureAuthorization={TOKEN}",), method="POST", referer="http://[::1/x"
        ),
        {"publish_origins": ("*",)},
        Refused("unable to parse referer"),
        id="post-bad-referer",
    ),
    pytest.param(
        TokenSources(
            cookies=(f"mercureAuthorization={TOKEN}",), method="POST", referer="http://a:b/"
        ),
        {"publish_origins": ("*",)},
        Refused("unable to parse referer"),
        id="post-bad-port",
    ),
    pytest.param(
        TokenSources(authorization=(f"Bearer {TOKEN}",), method="POST"),
        {},
        TOKEN,
        id="post-header-needs-no-origin",
    ),
]


@pytest.mark.parametrize(("sources", "options", "expected"), FIND_TOKEN_CASES)
def test_find_token(
    sources: TokenSources, options: dict[str, Any], expected: str | Refused | None
) -> None:
    if isinstance(expected, Refused):
        with pytest.raises(Unauthorized, match=expected.reason) as refused:
            find_token(sources, **options)
        assert TOKEN not in refused.value.reason
    else:
        assert find_token(sources, **options) == expected


def test_authorize_finds_then_verifies() -> None:
    cookie = TokenSources(cookies=(f"mercureAuthorization={TOKEN}",))
    assert authorize(cookie, SECRET, now=NOW) == claims(("*",))
    assert authorize(TokenSources(), SECRET, now=NOW) is None
    with pytest.raises(Unauthorized):
        authorize(TokenSources(cookies=("mercureAuthorization=x",)), SECRET, now=NOW)


# (mercure.publish, the update's topics, None if allowed or the error).
PUBLISH_CASES = [
    # Mercure's TestCanDispatch (authorization_test.go).
    (("foo", "bar"), ("foo", "bar"), None),
    (("*",), ("foo", "bar"), None),
    ((), ("foo", "bar"), Forbidden),
    (("foo",), ("foo", "bar"), Forbidden),
    (("baz",), ("foo", "bar"), Forbidden),
    (("baz", "bat"), ("foo", "bar"), Forbidden),
    # Every topic, canonical and alternates, must be allowed (draft, "Publishers").
    (("https://example.com/books/{id}",), ("https://example.com/books/1",), None),
    (
        ("https://example.com/books/{id}",),
        ("https://example.com/books/1", "https://example.com/users/1"),
        Forbidden,
    ),
    (
        ("https://example.com/books/{id}", "https://example.com/users/{id}"),
        ("https://example.com/books/1", "https://example.com/users/1"),
        None,
    ),
    (None, ("foo",), Forbidden),
]


@pytest.mark.parametrize(("publish", "topics", "expected"), PUBLISH_CASES)
def test_authorize_publish(
    publish: tuple[str, ...] | None, topics: tuple[str, ...], expected: type[Exception] | None
) -> None:
    for matcher in (SelectorMatcher(), SelectorMatcher(max_results=0)):
        if expected is None:
            authorize_publish(claims(publish), topics, matcher=matcher)
        else:
            with pytest.raises(expected):
                authorize_publish(claims(publish), topics, matcher=matcher)


def test_publishing_needs_a_token() -> None:
    with pytest.raises(Unauthorized):
        authorize_publish(None, ("foo",))


ALTERNATE = "https://example.com/users/foo/?topic=https%3A%2F%2Fexample.com%2Fbooks%2F1"

# (mercure.subscribe, the update's topics, private, whether the subscriber may receive it).
RECEIVE_CASES = [
    (None, ("a",), False, True),
    ((), ("a",), False, True),
    (None, ("a",), True, False),
    ((), ("a",), True, False),
    (("*",), ("a",), True, True),
    (("b",), ("a",), True, False),
    (("b",), ("a", "b"), True, True),
    # The draft's example: the claim names an alternate topic only.
    (
        ("https://example.com/users/foo/{?topic}",),
        ("https://example.com/books/1", ALTERNATE),
        True,
        True,
    ),
    (("https://example.com/users/foo/{?topic}",), ("https://example.com/books/1",), True, False),
]


@pytest.mark.parametrize(("subscribe", "topics", "private", "expected"), RECEIVE_CASES)
def test_can_receive(
    subscribe: tuple[str, ...] | None, topics: tuple[str, ...], private: bool, expected: bool
) -> None:
    assert can_receive(subscribe, topics, private) is expected
    assert can_receive(subscribe, topics, private, matcher=SelectorMatcher()) is expected
