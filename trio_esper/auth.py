"""JWT verification (pure: takes a token, a key and a topic; returns claims or raises).

Accepted algorithms come from configuration, never from the token's header:
trusting the header is how ``alg: none`` and HS/RS key-confusion attacks work.
``exp`` and ``sub`` are required; PyJWT only checks ``exp`` when present, so we
ask it to require both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from .errors import Forbidden, InvalidTopic, Unauthorized
from .topics import normalise_topic

#: Default accepted algorithms; HS256 is what esper uses.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("HS256",)


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    """Pick the token from ``Authorization: Bearer ...`` or the ``?token=`` query.

    A browser ``EventSource`` cannot set headers, hence the query parameter.
    The header wins when both are present.

    Raises:
        Unauthorized: if an Authorization header is present but not a Bearer one.
    """
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        return credentials.strip()
    return query_token or None


def verify_token(
    token: str | None,
    key: str,
    *,
    topic: str | None,
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    leeway_seconds: float = 0.0,
) -> Mapping[str, Any]:
    """Verify ``token`` with ``key`` and return its claims.

    Arguments:
        token: the compact JWT, or ``None`` when the request carried none.
        key: the shared secret (HS*) or public key.
        topic: the normalised topic the token must be for (its ``sub``), or
            ``None`` where any topic will do (``/stats``).
        algorithms: accepted ``alg`` values.
        leeway_seconds: clock skew allowed on ``exp``.

    Raises:
        Unauthorized: no token (HTTP 401).
        Forbidden: bad signature, wrong algorithm, expired, no ``exp`` or
            ``sub``, or ``sub`` names another topic (HTTP 403).
    """
    if not token:
        raise Unauthorized("a token is required (Authorization: Bearer or ?token=)")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=list(algorithms),
            leeway=leeway_seconds,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise Forbidden("token has expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Forbidden(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidAlgorithmError:
        raise Forbidden("token algorithm is not accepted") from None
    except jwt.InvalidSignatureError:
        raise Forbidden("token signature does not verify") from None
    except jwt.InvalidTokenError as exc:
        raise Forbidden(f"token is invalid: {_first_line(str(exc))}") from None
    # PyJWT accepts any int()-able exp, "1795351563" included; RFC 7519 says
    # NumericDate, and we promise an integer.
    exp = claims["exp"]
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise Forbidden("token exp must be an integer")
    if topic is not None:
        sub = claims["sub"]
        try:
            if not isinstance(sub, str) or normalise_topic(sub) != topic:
                raise Forbidden("token is for another topic (sub)")
        except InvalidTopic:
            raise Forbidden("token is for another topic (sub)") from None
    return claims


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else "malformed"
