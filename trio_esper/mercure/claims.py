"""Mercure authorization (pure): where a request carries its JWS, what the JWS
says, and what it allows.

draft-dunglas-mercure, "Authorization": a JWS from the ``Authorization: Bearer``
header, a cookie (``mercureAuthorization``) or the ``authorization`` query
parameter, whose ``mercure`` claim holds ``publish`` and ``subscribe`` arrays
of topic selectors and an optional ``payload``. This module follows the
reference hub, dunglas/mercure v0.24.2, where the draft leaves room:

- precedence (authorization.go:79-100): the header, else the query parameter,
  else the cookie; a present header or query parameter is used even when it
  is malformed (a 401, not a fall-back to the next carrier);
- the header must be one field, ``Bearer `` (case and single space as
  written) then the token, 48 characters at least; the query parameter must
  be given once, 41 characters at least (authorization.go:81, 89);
- a cookie on a ``POST`` needs an ``Origin`` (or else a ``Referer``) among
  the allowed publish origins: the CSRF rule (authorization.go:102-137);
- the token is checked as github.com/golang-jwt/jwt v5 checks it with
  Mercure's claims struct: the algorithm from configuration only, ``exp`` and
  ``nbf`` honoured when present (``iat`` is not checked), ``aud`` ignored
  unless the caller asks for one, and every claim Mercure reads decoded with
  Go's ``encoding/json`` rules (authorization.go:15-28, 144-165): a claim of
  the wrong JSON type makes the whole token invalid, ``null`` leaves a claim
  unset, keys match case-insensitively, and ``https://mercure.rocks/``
  replaces ``mercure`` when present; more than 1000 selectors in ``publish``
  or ``subscribe`` is refused (publish.go:29).

Errors: every failure to present a valid token is :class:`Unauthorized`
(Mercure answers 401 to all of them); a valid token that does not allow the
operation is :class:`Forbidden` (the draft: "a 403 HTTP status code SHOULD be
returned"; the hub itself answers 401 there too). Reasons are one line and
never contain the token.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from jwt.algorithms import AllowedPublicKeys

from ..auth import DEFAULT_ALGORITHMS, decode_with_key
from ..errors import Forbidden, Unauthorized
from ..selectors import ANY_TOPIC, SelectorMatcher

#: The cookie name the draft recommends and Mercure uses by default (authorization.go:33).
DEFAULT_COOKIE_NAME: Final = "mercureAuthorization"
#: Mercure's bound on ``mercure.publish`` and ``mercure.subscribe`` (publish.go:29).
MAX_CLAIM_SELECTORS: Final = 1000
#: authorization.go:81: shorter header values are refused before any parsing.
MIN_HEADER_CHARS: Final = 48
#: authorization.go:89: the same for the query parameter.
MIN_QUERY_CHARS: Final = 41
_BEARER: Final = "Bearer "
#: Go's net/http keeps no cookies at all from a request with more (GODEBUG httpcookiemaxnum).
_MAX_COOKIES: Final = 3000
#: RFC 7515 section 7.1, with Go's base64.RawURLEncoding: three segments, no padding.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
#: RFC 9110 section 5.6.2 tchar, which Go's net/http requires of a cookie name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: RFC 8259 section 6 number, which a json.Number in a JSON string must be.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INT64 = 2**63
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Go's url.Parse: a port is digits, or nothing after the colon.
_PORT = re.compile(r"[0-9]*")


@dataclass(frozen=True, slots=True)
class MercureClaims:
    """The ``mercure`` claim of a verified token.

    Attributes:
        publish: the selectors the token may publish to; ``None`` when the
            claim is absent or ``null`` (no publishing at all).
        subscribe: the selectors of the private updates it may receive;
            ``None`` when absent or ``null``.
        payload: ``mercure.payload`` as JSON decodes it (``None`` when absent
            or ``null``); shown in subscription events. Do not mutate it.
        expires_at: ``exp`` in seconds since the epoch, truncated to the
            second as golang-jwt does, or ``None``: a subscription must end
            then (draft: "the connection MUST be closed by the hub at that time").
    """

    publish: tuple[str, ...] | None
    subscribe: tuple[str, ...] | None
    payload: object = None
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class TokenSources:
    """Where a request may carry its token, as the route read it.

    Attributes:
        authorization: every ``Authorization`` header field value, in order.
        query: every value of the ``authorization`` query parameter, in order
            (Go's ``URL.Query()`` drops a pair whose escapes are malformed).
        cookies: every ``Cookie`` header field value, in order.
        method: the request method (the CSRF rule applies to ``POST``).
        origin: the ``Origin`` header (the first, if several), or ``None``.
        referer: the ``Referer`` header (the first), or ``None``.
    """

    authorization: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()
    method: str = "GET"
    origin: str | None = None
    referer: str | None = None


def find_token(
    sources: TokenSources,
    *,
    cookie_name: str = DEFAULT_COOKIE_NAME,
    publish_origins: Sequence[str] = (),
) -> str | None:
    """The token the request presents, or ``None`` when it presents none
    (anonymous), as Mercure's ``Hub.authorize`` picks it (authorization.go:71-138).

    ``publish_origins`` are the origins allowed to publish with a cookie:
    ``*`` for any, ``https://*.example.com`` with one ``*`` for a prefix and a
    suffix, else exact (lower-cased, as Mercure does, before comparing with the
    request's ``Origin`` as sent).

    Raises:
        Unauthorized: a header or query parameter of the wrong form, or a
            cookie on a ``POST`` from no origin or an origin not allowed.
    """
    if sources.authorization:
        header = sources.authorization[0]
        if (
            len(sources.authorization) != 1
            or len(header) < MIN_HEADER_CHARS
            or not header.startswith(_BEARER)
        ):
            raise Unauthorized('invalid "Authorization" HTTP header')
        return header[len(_BEARER) :]
    if sources.query:
        value = sources.query[0]
        if len(sources.query) != 1 or len(value.encode()) < MIN_QUERY_CHARS:
            raise Unauthorized('invalid "authorization" Query parameter')
        return value
    token = _cookie(sources.cookies, cookie_name)
    if token is None:
        return None
    # "CSRF attacks cannot occur when using safe methods" (authorization.go:102).
    if sources.method != "POST":
        return token
    origin = sources.origin or _origin_of(sources.referer)
    if not _origin_allowed(origin, publish_origins):
        raise Unauthorized(f"origin {origin[:100]!r} not allowed to post updates")
    return token


def _cookie(lines: Sequence[str], name: str) -> str | None:
    """The first valid cookie ``name``, as Go's ``Request.Cookie`` finds it
    (net/http cookie.go readCookies, parseCookieValue)."""
    if not lines or not _TOKEN.fullmatch(name):
        return None
    if sum(line.count(";") + 1 for line in lines) > _MAX_COOKIES:
        return None
    for line in lines:
        for part in line.split(";"):
            key, _, value = part.strip(" \t\r\n").partition("=")
            if key.strip(" \t\r\n") != name:
                continue
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            # cookie-octet, as Go checks it: 0x20 to 0x7E but '"', ';' and '\'.
            if all(" " <= c <= "~" and c not in '"\\' for c in value):
                return value
    return None


def _origin_of(referer: str | None) -> str:
    """``scheme://host`` of a ``Referer``, as authorization.go:108-121 derives it."""
    if not referer:
        raise Unauthorized(
            'an "Origin" or a "Referer" HTTP header must be present to use the '
            "cookie-based authorization mechanism"
        )
    unparsable = Unauthorized("unable to parse referer")
    if _CONTROL.search(referer):  # Go's url.Parse: "invalid control character in URL"
        raise unparsable
    try:
        url = urlsplit(referer)
    except ValueError:  # an unclosed IPv6 bracket
        raise unparsable from None
    host = url.netloc.rpartition("@")[2]
    if not _PORT.fullmatch(host.rpartition("]")[2].partition(":")[2]):
        raise unparsable
    return f"{url.scheme}://{host}"


def _origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    # hub.go:190-220 (wildcards from rs/cors): configured origins are lower-cased.
    for entry in (a.lower() for a in allowed):
        if entry == ANY_TOPIC:
            return True
        prefix, star, suffix = entry.partition("*")
        if star:
            if (
                len(origin) >= len(prefix) + len(suffix)
                and origin.startswith(prefix)
                and origin.endswith(suffix)
            ):
                return True
        elif origin == entry:
            return True
    return False


def verify_token(
    token: str,
    key: str,
    *,
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    audience: str | None = None,
    leeway_seconds: float = 0.0,
    now: float | None = None,
) -> MercureClaims:
    """Verify ``token`` and return its Mercure claims.

    Arguments:
        key: the shared secret (checked with the HMAC algorithms among
            ``algorithms`` only) or :class:`~trio_esper.auth.PublicKeys`
            (checked with the public-key algorithms among them only), as
            :func:`trio_esper.auth.verify_token` takes it.
        algorithms: accepted ``alg`` values; the token's header only chooses among them.
        audience: an ``aud`` the token must name; ``None``: ``aud`` is not
            checked, as Mercure does not check it.
        leeway_seconds: clock skew allowed on ``exp`` and ``nbf``.
        now: the time to check against, in seconds since the epoch (tests).

    Raises:
        Unauthorized: the token does not verify, has expired, is not valid
            yet, or a claim Mercure reads has the wrong type.
    """
    if not _COMPACT_JWS.fullmatch(token):
        raise Unauthorized("invalid JWT: not a compact JWS")
    payload = _verified_payload(token, key, algorithms)
    claims = _GoClaims.decode(payload)
    current = time.time() if now is None else now
    # golang-jwt v5 validator.go: valid while now < exp; from now >= nbf; iat unchecked.
    if claims.exp is not None and not current < claims.exp + leeway_seconds:
        raise Unauthorized("invalid JWT: token is expired")
    if claims.nbf is not None and current < claims.nbf - leeway_seconds:
        raise Unauthorized("invalid JWT: token is not valid yet")
    if audience is not None and audience not in (claims.aud or ()):
        raise Unauthorized("invalid JWT: token has invalid audience")
    mercure = claims.namespaced if claims.namespaced is not None else claims.mercure
    publish, subscribe = mercure.get("publish"), mercure.get("subscribe")
    if len(publish or ()) > MAX_CLAIM_SELECTORS or len(subscribe or ()) > MAX_CLAIM_SELECTORS:
        raise Unauthorized("invalid JWT: too many matchers in mercure claim")
    return MercureClaims(
        publish=None if publish is None else tuple(publish),
        subscribe=None if subscribe is None else tuple(subscribe),
        payload=mercure.get("payload"),
        expires_at=claims.exp,
    )


_JWS = jwt.PyJWS()


def _verified_payload(token: str, key: str, algorithms: Sequence[str]) -> bytes:
    """The payload bytes of ``token`` once its signature verifies with ``key``."""

    def decode(candidate: str | AllowedPublicKeys, accepted: list[str]) -> bytes:
        payload: bytes = _JWS.decode_complete(token, candidate, algorithms=accepted)["payload"]
        return payload

    try:
        return decode_with_key(token, key, algorithms, decode)
    except Forbidden as exc:  # no key of the set may have signed it
        raise Unauthorized(f"invalid JWT: {exc.reason}") from None
    except jwt.InvalidAlgorithmError:
        raise Unauthorized("invalid JWT: token algorithm is not accepted") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("invalid JWT: token signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid JWT: {_first_line(str(exc))}") from None


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else "malformed"


# -- Mercure's claims struct, decoded as Go's encoding/json decodes it --------


class _Object(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, duplicates kept."""


class _InvalidClaims(Exception):
    pass


def _refuse_constant(name: str) -> None:
    raise _InvalidClaims(f"{name} is not JSON")


def _go_fold(name: str) -> str:
    """encoding/json's foldName (fold.go), as far as it can make a key equal
    to an ASCII field name: ASCII letters in upper case, and the only two
    non-ASCII letters whose fold set holds an ASCII one, U+017F (s) and U+212A (k)."""
    if not name.isascii():
        name = name.translate(_FOLD_INTO_ASCII)
        if not name.isascii():
            return name  # equal to no field name
    return name.upper()


_FOLD_INTO_ASCII = str.maketrans({"\u017f": "S", "\u212a": "K"})
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _plain(value: Any) -> Any:
    """A JSON value as Go decodes it into ``any``: objects as maps (the last
    duplicate key wins), lone surrogates as U+FFFD, numbers as float64 (one
    out of its range is an error; an integer stays exact here)."""
    if isinstance(value, _Object):
        return {_plain_str(k): _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return _plain_str(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            if math.isfinite(float(value)):
                return value
        except OverflowError:
            pass
        raise _InvalidClaims("a number in mercure.payload is out of range")
    return value


def _plain_str(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


@dataclass(slots=True)
class _GoClaims:
    """authorization.go's ``claims``: jwt.RegisteredClaims, ``mercure`` and
    ``https://mercure.rocks/``, filled as ``json.Unmarshal`` fills them."""

    exp: int | None = None
    nbf: int | None = None
    aud: list[str] | None = None
    mercure: dict[str, Any] = field(default_factory=dict)
    namespaced: dict[str, Any] | None = None

    @classmethod
    def decode(cls, payload: bytes) -> _GoClaims:
        try:
            document = json.loads(
                payload.decode("utf-8", "replace"),
                object_pairs_hook=_Object,
                parse_constant=_refuse_constant,
            )
            claims = cls()
            claims._fill(document)
        except _InvalidClaims as exc:
            raise Unauthorized(f"invalid JWT: {exc}") from None
        except (ValueError, RecursionError):
            raise Unauthorized("invalid JWT: the claims are not valid JSON") from None
        return claims

    def _fill(self, document: Any) -> None:
        if document is None:  # null into a struct leaves it as it is
            return
        if not isinstance(document, _Object):
            raise _InvalidClaims("the claims are not a JSON object")
        for key, value in document:
            self._set(_go_fold(key), value)

    def _set(self, field: str, value: Any) -> None:
        if field in ("ISS", "SUB", "JTI"):
            if value is not None and not isinstance(value, str):
                raise _InvalidClaims(f"{field.lower()} must be a string")
        elif field == "AUD":
            # jwt.ClaimStrings.UnmarshalJSON: a string or an array of strings; null leaves it.
            if isinstance(value, str):
                self.aud = [value]
            elif isinstance(value, list) and not isinstance(value, _Object):
                if not all(isinstance(v, str) for v in value):
                    raise _InvalidClaims("aud must be a string or an array of strings")
                self.aud = list(value)
            elif value is not None:
                raise _InvalidClaims("aud must be a string or an array of strings")
        elif field in ("EXP", "NBF", "IAT"):
            # *jwt.NumericDate: null clears it; else a number, or a string holding one.
            date = None if value is None else _numeric_date(field.lower(), value)
            if field == "EXP":
                self.exp = date
            elif field == "NBF":
                self.nbf = date
        elif field == "MERCURE":
            # A struct: null leaves it as it is; another object merges into it.
            if value is not None:
                _merge_claim(self.mercure, value, "mercure")
        elif field == "HTTPS://MERCURE.ROCKS/":
            # A pointer to a struct: null sets it to nil.
            if value is None:
                self.namespaced = None
            else:
                if self.namespaced is None:
                    self.namespaced = {}
                _merge_claim(self.namespaced, value, "https://mercure.rocks/")


def _numeric_date(name: str, value: Any) -> int:
    """golang-jwt's NumericDate.UnmarshalJSON, then truncated to the second."""
    if not (
        (isinstance(value, str) and _JSON_NUMBER.fullmatch(value))
        or (isinstance(value, int | float) and not isinstance(value, bool))
    ):
        raise _InvalidClaims(f"{name} must be a number")
    try:
        number = float(value)  # strconv.ParseFloat: out of float64's range is an error
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or not -_INT64 <= math.floor(number) < _INT64:
        # Go converts such a float to int64 as the CPU does; refuse it instead.
        raise _InvalidClaims(f"{name} is out of range")
    return math.floor(number)


def _merge_claim(claim: dict[str, Any], value: Any, name: str) -> None:
    """Decode the object ``value`` into ``mercureClaim`` ``claim``
    ({publish, subscribe: []string, payload: any})."""
    if not isinstance(value, _Object):
        raise _InvalidClaims(f"{name} must be an object")
    for key, member in value:
        field = _go_fold(key)
        if field in ("PUBLISH", "SUBSCRIBE"):
            claim[field.lower()] = _selectors(f"{name}.{key}", member)
        elif field == "PAYLOAD":
            claim["payload"] = _plain(member)


def _selectors(name: str, value: Any) -> list[str] | None:
    """A Go ``[]string``: null is nil, and a null element is ""."""
    if value is None:
        return None
    if not isinstance(value, list) or isinstance(value, _Object):
        raise _InvalidClaims(f"{name} must be an array of strings")
    if not all(v is None or isinstance(v, str) for v in value):
        raise _InvalidClaims(f"{name} must be an array of strings")
    return ["" if v is None else _plain_str(v) for v in value]


# -- What a verified token allows ----------------------------------------------

#: The matcher :func:`authorize_publish` and :func:`can_receive` use when given none.
DEFAULT_MATCHER: Final = SelectorMatcher()


def authorize(
    sources: TokenSources,
    key: str,
    *,
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    audience: str | None = None,
    leeway_seconds: float = 0.0,
    cookie_name: str = DEFAULT_COOKIE_NAME,
    publish_origins: Sequence[str] = (),
    now: float | None = None,
) -> MercureClaims | None:
    """:func:`find_token` then :func:`verify_token`: the request's claims, or
    ``None`` when it presents no token (whether that is allowed is the caller's
    question: Mercure's ``anonymous`` for subscribers, never for publishers).

    Raises:
        Unauthorized: as those two raise it.
    """
    token = find_token(sources, cookie_name=cookie_name, publish_origins=publish_origins)
    if token is None:
        return None
    return verify_token(
        token,
        key,
        algorithms=algorithms,
        audience=audience,
        leeway_seconds=leeway_seconds,
        now=now,
    )


def authorize_publish(
    claims: MercureClaims | None,
    topics: Sequence[str],
    *,
    matcher: SelectorMatcher = DEFAULT_MATCHER,
) -> None:
    """Allow an update to ``topics`` only if every one of them matches a
    selector of ``mercure.publish`` (Mercure's ``canDispatch``,
    authorization.go:179-201; draft: "every topic of the update to dispatch
    matches at least one of the topic selectors").

    Raises:
        Unauthorized: no token (``claims`` is ``None``).
        Forbidden: no ``mercure.publish`` claim, or a topic none of its
            selectors matches (the first such topic is named).
    """
    if claims is None:
        raise Unauthorized("a token is required to publish")
    if claims.publish is None:
        raise Forbidden('the token has no "mercure.publish" claim')
    if ANY_TOPIC in claims.publish:
        return
    for topic in topics:
        if not any(matcher.match(selector, topic) for selector in claims.publish):
            raise Forbidden(f'"mercure.publish" does not allow the topic {topic[:100]!r}')


def can_receive(
    subscribe: Sequence[str] | None,
    topics: Sequence[str],
    private: bool,
    *,
    matcher: SelectorMatcher = DEFAULT_MATCHER,
) -> bool:
    """Whether a subscriber whose ``mercure.subscribe`` claim is ``subscribe``
    may receive an update to ``topics``: a public one always; a private one
    when a claimed selector matches one of its topics, canonical or alternate
    (subscriber.go:51-87, draft "Subscribers"). Whether the subscription's own
    selectors match the update is the other half of Mercure's ``Match``, and
    may be met by another of its topics: ``matcher.matches_any(subscribed,
    topics) and can_receive(...)``.
    """
    if not private:
        return True
    return subscribe is not None and matcher.matches_any(subscribe, topics)
