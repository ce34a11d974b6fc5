"""JWT verification (pure: takes a token, a key and a topic; returns claims or raises).

Accepted algorithms come from configuration, never from the token's header:
trusting the header is how ``alg: none`` and HS/RS key-confusion attacks work.
``exp`` and ``sub`` are required; PyJWT only checks ``exp`` when present, so we
ask it to require both.

A side verifies with one of two kinds of key, never both:

- a shared secret (a plain ``str``): only the HMAC algorithms (``HS*``) of the
  configured list apply to it;
- :class:`PublicKeys`, read from a PEM or JWKS file by :func:`load_public_keys`
  for deployments where the token issuers keep the private key: each key is a
  :class:`jwt.PyJWK` bound to one public-key algorithm its type can verify
  (RFC 7518 section 3.1, RFC 8037 for EdDSA), so an HMAC token is never
  checked with public-key text as its secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import (
    AllowedPublicKeys,
    ECAlgorithm,
    HMACAlgorithm,
    OKPAlgorithm,
    RSAAlgorithm,
)

from .errors import Forbidden, InvalidTopic, Unauthorized
from .topics import normalise_topic

#: Default accepted algorithms; HS256 is what esper uses.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("HS256",)

#: Algorithms that take a shared secret, each with the fewest bytes its
#: secret should have: "A key of the same size as the hash output ... or
#: larger MUST be used with this algorithm" (RFC 7518 section 3.2).
HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
HMAC_ALGORITHMS = frozenset(HMAC_KEY_BYTES)
#: What an RSA key verifies: PKCS#1 v1.5 and PSS (RFC 7518 sections 3.3, 3.5).
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
#: ECDSA binds the curve to the algorithm (RFC 7518 section 3.4; RFC 8812 for secp256k1).
EC_ALGORITHM_BY_CURVE = {
    "P-256": "ES256",
    "P-384": "ES384",
    "P-521": "ES512",
    "secp256k1": "ES256K",
}
#: EdDSA covers both Edwards curves (RFC 8037 section 3.1).
OKP_CURVES = ("Ed25519", "Ed448")
#: RFC 7518 sections 3.3 and 3.5.
RSA_MIN_KEY_BITS = 2048
#: Algorithms that take a public key.
PUBLIC_KEY_ALGORITHMS = frozenset({*RSA_ALGORITHMS, *EC_ALGORITHM_BY_CURVE.values(), "EdDSA"})

#: A PEM block: RFC 7468 section 2 (label, base64 lines, matching END line).
_PEM_BLOCK = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]+)-----\s.*?-----END (?P=label)-----", re.DOTALL
)
#: Labels whose block cryptography's ``load_pem_public_key`` reads
#: (SubjectPublicKeyInfo, RFC 7468 section 13; PKCS#1 RSAPublicKey).
_PUBLIC_LABELS = ("PUBLIC KEY", "RSA PUBLIC KEY")


class KeyFileError(ValueError):
    """A key file cannot be used; the message is a one-line reason."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key bound to one algorithm it verifies."""

    #: The JWK's ``kid``; ``None`` for a PEM key or a JWK without one.
    kid: str | None
    algorithm: str
    #: Bound to ``algorithm``; ``jwk.key`` is the key object handed to ``jwt.decode``.
    jwk: jwt.PyJWK


class PublicKeys(str):
    """The public keys one side verifies tokens with, read from a PEM or JWKS file.

    Kept in ``Config.subscriber_keys`` / ``publisher_keys``; the routes hand
    a side's key (``Config.subscriber_key``: the keys, else the secret) to
    :func:`verify_token`. A ``str`` whose text is the keys in PEM, which
    PyJWT refuses as an HMAC secret: even code that took it for a secret
    could not be led into algorithm confusion. Two equal texts are the same
    keys.

    Attributes:
        source: the file the keys came from, for messages.
        keys: one :class:`VerificationKey` per key and algorithm it verifies.
        algorithms: every algorithm some key verifies.
    """

    source: str
    keys: tuple[VerificationKey, ...]
    algorithms: frozenset[str]

    def __new__(cls, pem: str, *, source: str, keys: Sequence[VerificationKey]) -> PublicKeys:
        self = super().__new__(cls, pem)
        self.source = source
        self.keys = tuple(keys)
        self.algorithms = frozenset(k.algorithm for k in self.keys)
        return self

    def __repr__(self) -> str:
        return f"PublicKeys(source={self.source!r}, algorithms={sorted(self.algorithms)!r})"

    def candidates(
        self, header: Mapping[str, Any], algorithms: Sequence[str]
    ) -> list[VerificationKey]:
        """The keys that may have signed a token with this (unverified) header.

        The token's ``alg`` only picks among the pairs configuration allows;
        with a ``kid``, only the keys with that ``kid`` are candidates (a key
        without a ``kid``, as from a PEM file, is a candidate for any).

        Raises:
            Forbidden: no key of this set verifies the token's ``alg`` under
                the accepted ``algorithms``, or none has its ``kid``.
        """
        alg = header.get("alg")
        accepted = [
            k
            for k in self.keys
            if isinstance(alg, str) and k.algorithm == alg and alg in algorithms
        ]
        if not accepted:
            raise Forbidden("token algorithm is not accepted")
        kid = header.get("kid")
        if kid is None:
            return accepted
        named = [k for k in accepted if k.kid == kid]
        if named:
            return named
        if any(k.kid == kid for k in self.keys):
            raise Forbidden("token algorithm is not accepted for its key (kid)")
        anonymous = [k for k in accepted if k.kid is None]
        if not anonymous:
            raise Forbidden("no key has the token's kid")
        return anonymous


def load_public_keys(path: str) -> PublicKeys:
    """Read public keys from ``path``: PEM (one or more public-key blocks) or
    JWKS (``{"keys": [...]}``, or one JWK).

    JWKs whose ``use`` is not ``sig`` are skipped; every other key must be a
    public key of a type that verifies JWTs (RSA of 2048 bits or more, EC on
    P-256, P-384, P-521 or secp256k1, Ed25519 or Ed448).

    Raises:
        KeyFileError: the file cannot be read, does not parse, holds a private
            or symmetric key, or no usable key; with a one-line reason.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise KeyFileError(f"cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError("not a PEM or JWKS file (not ASCII text)") from None
    stripped = text.strip()
    if stripped.startswith("{"):
        keys = _keys_from_jwks(stripped)
    elif "-----BEGIN " in stripped:
        keys = _keys_from_pem(stripped)
    else:
        raise KeyFileError("not a PEM or JWKS file")
    pems: dict[str, None] = {}
    for key in keys:
        public = key.jwk.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pems[public.decode("ascii")] = None
    return PublicKeys("".join(pems), source=path, keys=keys)


def _keys_from_pem(text: str) -> list[VerificationKey]:
    blocks = list(_PEM_BLOCK.finditer(text))
    if not blocks:
        raise KeyFileError("no complete PEM block")
    keys: list[VerificationKey] = []
    for n, block in enumerate(blocks, 1):
        label = block["label"]
        where = f"PEM block {n} ({label})"
        if "PRIVATE" in label:
            raise KeyFileError(f"{where} is a private key: give the broker the public key only")
        if label not in _PUBLIC_LABELS:
            raise KeyFileError(f"{where} is not a public key")
        try:
            public_key = serialization.load_pem_public_key(block[0].encode("ascii"))
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{where} does not parse: {_first_line(str(exc))}") from None
        keys.extend(_bind(_jwk_of(public_key, where), where))
    return keys


def _jwk_of(public_key: object, where: str) -> dict[str, Any]:
    """The JWK of a key cryptography loaded, by PyJWT's own serialisers."""
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            return RSAAlgorithm.to_jwk(public_key, as_dict=True)
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            return ECAlgorithm.to_jwk(public_key, as_dict=True)
        if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            return OKPAlgorithm.to_jwk(public_key, as_dict=True)
    except jwt.PyJWTError as exc:
        raise KeyFileError(f"{where}: {_first_line(str(exc))}") from None
    raise KeyFileError(f"{where}: a {type(public_key).__name__} cannot verify JWTs")


def _keys_from_jwks(text: str) -> list[VerificationKey]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise KeyFileError(f"not valid JSON: {_first_line(str(exc))}") from None
    if not isinstance(document, dict):
        raise KeyFileError("a JWKS must be a JSON object")
    members = document.get("keys", [document])
    if not isinstance(members, list) or not members:
        raise KeyFileError("the JWKS has no keys")
    keys: list[VerificationKey] = []
    for n, member in enumerate(members, 1):
        where = f"JWK {n}"
        if not isinstance(member, dict):
            raise KeyFileError(f"{where} is not a JSON object")
        if isinstance(member.get("kid"), str):
            where = f"JWK {n} (kid {member['kid']!r})"
        # RFC 7517 section 4.2: "enc" keys are not for signatures.
        if member.get("use", "sig") != "sig":
            continue
        keys.extend(_bind(member, where))
    if not keys:
        raise KeyFileError(
            "the JWKS has no signature key (every key has a 'use' other than 'sig')"
        )
    return keys


def _bind(jwk: dict[str, Any], where: str) -> list[VerificationKey]:
    """``jwk`` bound to each public-key algorithm it verifies, as PyJWKs."""
    kty, kid = jwk.get("kty"), jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyFileError(f"{where}: 'kid' must be a string")
    if kty == "oct":
        raise KeyFileError(
            f"{where} is a symmetric (oct) key: a key file holds public keys; "
            "an HMAC secret goes in the side's secret variable"
        )
    # RFC 7518 sections 6.2.2.1 and 6.3.2.1, RFC 8037 section 2: 'd' is private.
    if "d" in jwk:
        raise KeyFileError(f"{where} is a private key ('d'): give the broker the public key only")
    crv = jwk.get("crv")
    if kty == "RSA":
        family: tuple[str, ...] = RSA_ALGORITHMS
    elif kty == "EC" and isinstance(crv, str) and crv in EC_ALGORITHM_BY_CURVE:
        family = (EC_ALGORITHM_BY_CURVE[crv],)
    elif kty == "OKP" and isinstance(crv, str) and crv in OKP_CURVES:
        family = ("EdDSA",)
    else:
        raise KeyFileError(f"{where}: unsupported key type {kty!r} (curve {crv!r})")
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in family:
            raise KeyFileError(f"{where}: its 'alg' {alg!r} is not one of {', '.join(family)}")
        family = (alg,)
    bound: list[VerificationKey] = []
    for algorithm in family:
        try:
            key = jwt.PyJWK(jwk, algorithm=algorithm)
            # What PyJWT checks on every verification, checked once here:
            # the key's type (and curve) against the algorithm.
            key.Algorithm.prepare_key(key.key)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            # PyJWT wraps most malformed members in InvalidKeyError; what it
            # does not (a member of the wrong JSON type) is the same mistake.
            raise KeyFileError(f"{where}: {_first_line(str(exc))}") from None
        # RFC 7518 section 3.3: "A key of size 2048 bits or larger MUST be
        # used with these algorithms" (and section 3.5 for PS*).
        if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < RSA_MIN_KEY_BITS:
            raise KeyFileError(
                f"{where}: the RSA key has {key.key.key_size} bits; RS* and PS* need "
                f"{RSA_MIN_KEY_BITS} or more (RFC 7518 section 3.3)"
            )
        bound.append(VerificationKey(kid, algorithm, key))
    return bound


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
    audience: str | None = None,
    leeway_seconds: float = 0.0,
) -> Mapping[str, Any]:
    """Verify ``token`` with ``key`` and return its claims.

    Arguments:
        token: the compact JWT, or ``None`` when the request carried none.
        key: the shared secret (checked with the HMAC algorithms among
            ``algorithms`` only) or :class:`PublicKeys` (checked with the
            public-key algorithms among them only).
        topic: the normalised topic the token must be for (its ``sub``), or
            ``None`` where any topic will do (``/stats``).
        algorithms: accepted ``alg`` values.
        audience: the ``aud`` the token must carry; ``None``: a token that
            names any audience is refused (PyJWT's rule: it was minted for
            someone else).
        leeway_seconds: clock skew allowed on ``exp``, ``nbf`` and ``iat``.

    Raises:
        Unauthorized: no token (HTTP 401).
        Forbidden: bad signature, wrong algorithm, expired, not valid yet
            (``nbf``), another audience, no ``exp`` or ``sub``, or ``sub``
            names another topic (HTTP 403).
    """
    if not token:
        raise Unauthorized("a token is required (Authorization: Bearer or ?token=)")
    claims = _decode(token, key, algorithms, audience, leeway_seconds)
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


_T = TypeVar("_T")


def decode_with_key(
    token: str,
    key: str | PublicKeys,
    algorithms: Sequence[str],
    decode: Callable[[str | AllowedPublicKeys, list[str]], _T],
) -> _T:
    """``decode(candidate, accepted)`` with what ``key`` offers for ``token``:
    a secret with the HMAC algorithms among ``algorithms``; else each public
    key that may have signed it, with its one algorithm (the key object, not
    the PyJWK: that algorithm is the only one ``jwt.decode`` accepts, whatever
    the token's header says), until a signature verifies.

    Raises:
        jwt.PyJWTError: as ``decode`` raises it (for the last candidate).
        Forbidden: no key of the set may have signed it (:meth:`PublicKeys.candidates`).
    """
    if not isinstance(key, PublicKeys):
        return decode(key, [a for a in algorithms if a in HMAC_ALGORITHMS])
    *others, last = key.candidates(jwt.get_unverified_header(token), algorithms)
    for candidate in others:
        try:
            return decode(candidate.jwk.key, [candidate.algorithm])
        except jwt.InvalidSignatureError:
            continue
    return decode(last.jwk.key, [last.algorithm])


def _decode(
    token: str,
    key: str,
    algorithms: Sequence[str],
    audience: str | None,
    leeway_seconds: float,
) -> dict[str, Any]:
    """PyJWT's decode with each candidate key, its errors as :class:`Forbidden`."""

    def decode(candidate: str | AllowedPublicKeys, accepted: list[str]) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            candidate,
            algorithms=accepted,
            audience=audience,
            leeway=leeway_seconds,
            options={"require": ["exp", "sub"]},
        )
        return claims

    try:
        claims = decode_with_key(token, key, algorithms, decode)
    except jwt.ExpiredSignatureError:
        raise Forbidden("token has expired") from None
    except jwt.ImmatureSignatureError as exc:
        claim = "nbf" if "nbf" in str(exc) else "iat"
        raise Forbidden(f"token is not valid yet ({claim})") from None
    except jwt.InvalidAudienceError:
        if audience is None:
            raise Forbidden("token names an audience (aud) and none is accepted here") from None
        raise Forbidden("token is for another audience (aud)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Forbidden(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidAlgorithmError:
        raise Forbidden("token algorithm is not accepted") from None
    except jwt.InvalidSignatureError:
        raise Forbidden("token signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise Forbidden(f"token is invalid: {_first_line(str(exc))}") from None
    if audience is None and "aud" in claims:
        # An empty aud ([] or ""), which PyJWT takes for none, is an aud all
        # the same (RFC 7519, section 4.1.3: one this broker is not in).
        raise Forbidden("token names an audience (aud) and none is accepted here")
    return claims


def hmac_secret_problem(secret: str) -> str | None:
    """Why PyJWT would refuse ``secret`` as an HMAC key (empty, or a PEM, SSH
    or DER key), or ``None`` if it takes it."""
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError as exc:
        return _first_line(str(exc))
    return None


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else "malformed"
