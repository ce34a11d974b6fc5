"""The ACME protocol, through certbot's ``acme`` library: blocking calls, which
:mod:`.manager` runs in a worker thread (``trio.to_thread.run_sync``).

The library has no TLS-ALPN-01 challenge type since its 4.0 release: it is
declared here (:class:`TLSALPN01`) in the library's own registry, so the
directory's challenges parse as such and the answer is the library's.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from ..version import __version__

#: RFC 8737, section 3: the critical extension holding SHA-256 of the key authorization.
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
#: How long one order may take, validation and finalization included.
ORDER_SECONDS = 90
#: One HTTP request to the ACME server.
REQUEST_SECONDS = 30
#: The challenge types answered (RFC 8555, section 8.3; RFC 8737).
HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The answer to a TLS-ALPN-01 challenge: ``{}`` (RFC 8555, section 7.5.1)."""

    typ = TLS_ALPN01


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """RFC 8737's challenge: a certificate for the name, with the key
    authorization's digest, answered to ALPN ``acme-tls/1``."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **unused_kwargs: Any) -> str:
        return str(self.key_authorization(account_key))


class OrderFailed(Exception):
    """An ACME step failed. ``str()`` says which and why, with the ACME
    server's problem document (RFC 8555, section 6.7) when it sent one."""

    def __init__(self, message: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message if problem is None else f"{message}: {json.dumps(problem)}")
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge chosen to answer."""

    kind: str
    name: str
    token: str
    key_authorization: str
    body: messages.ChallengeBody


def new_key_pem() -> bytes:
    """A fresh P-256 private key, PEM (PKCS#8)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def tls_alpn_certificate(name: str, key_authorization: str) -> bytes:
    """RFC 8737, section 3: a self-signed certificate for ``name`` alone with
    the critical acmeIdentifier extension, and its key, as one PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # The extension's value is the DER OCTET STRING of the digest.
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM)


def _problem(error: BaseException) -> dict[str, Any] | None:
    if isinstance(error, messages.Error):
        document: dict[str, Any] = error.to_partial_json()
        return document
    return None


def _failed(step: str, error: BaseException) -> OrderFailed:
    """``error`` from the library or the network as :class:`OrderFailed`."""
    if isinstance(error, errors.ValidationError):
        problems = []
        for authzr in error.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    problems.append(
                        {
                            "identifier": authzr.body.identifier.value,
                            "challenge": challb.chall.typ,
                            **challb.error.to_partial_json(),
                        }
                    )
        return OrderFailed(f"{step}: validation failed", {"subproblems": problems})
    if isinstance(error, messages.Error):
        return OrderFailed(f"{step}: the ACME server refused", _problem(error))
    if isinstance(error, requests.RequestException):
        return OrderFailed(
            f"{step}: cannot reach the ACME server ({error.__class__.__name__}: {error})"
        )
    return OrderFailed(f"{step}: {error.__class__.__name__}: {error}")


class Session:
    """An ACME account at one directory, ready to order. Blocking.

    Raises (every method): :class:`OrderFailed`.
    """

    def __init__(
        self, directory: str, account_key_pem: bytes, *, email: str | None, ca_bundle: str | None
    ) -> None:
        key = serialization.load_pem_private_key(account_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise OrderFailed("the stored account key is not a P-256 key")
        self.account_key = JWKEC(key=key)
        self._net = client.ClientNetwork(
            self.account_key,
            alg=ES256,
            user_agent=f"trio-esper/{__version__}",
            timeout=REQUEST_SECONDS,
        )
        if ca_bundle is not None:
            # requests takes a CA bundle's path where the library passes its switch.
            self._net.verify_ssl = ca_bundle  # type: ignore[assignment]
        try:
            self._client = client.ClientV2(
                client.ClientV2.get_directory(directory, self._net), self._net
            )
        except Exception as error:
            raise _failed("reading the directory", error) from None
        registration = messages.NewRegistration.from_data(
            email=email, terms_of_service_agreed=True
        )
        try:
            self._net.account = self._client.new_account(registration)
        except errors.ConflictError as existing:  # the key's account exists: use it
            self._net.account = messages.RegistrationResource(
                uri=existing.location, body=messages.Registration()
            )
        except Exception as error:
            raise _failed("registering the account", error) from None

    def new_order(self, names: Sequence[str], key_pem: bytes) -> messages.OrderResource:
        try:
            return self._client.new_order(crypto_util.make_csr(key_pem, list(names)))
        except Exception as error:
            raise _failed("placing the order", error) from None

    def choose(self, order: messages.OrderResource, kinds: Sequence[str]) -> list[Challenge]:
        """For each authorization still pending, the challenge of the first of
        ``kinds`` it offers. Pure (no request)."""
        chosen = []
        for authzr in order.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue
            offered = {challb.chall.typ: challb for challb in authzr.body.challenges}
            kind = next((k for k in kinds if k in offered), None)
            name = authzr.body.identifier.value
            if kind is None:
                raise OrderFailed(
                    f"the ACME server offers {', '.join(sorted(offered))} for {name}: "
                    f"the broker answers {' or '.join(kinds)}"
                )
            challb = offered[kind]
            assert isinstance(challb.chall, challenges.KeyAuthorizationChallenge)
            chosen.append(
                Challenge(
                    kind,
                    name,
                    challb.chall.encode("token"),
                    str(challb.chall.key_authorization(self.account_key)),
                    challb,
                )
            )
        return chosen

    def answer(self, challenge: Challenge) -> None:
        """Tell the server the challenge is ready to validate."""
        assert isinstance(challenge.body.chall, challenges.KeyAuthorizationChallenge)
        response = challenge.body.chall.response(self.account_key)
        try:
            self._client.answer_challenge(challenge.body, response)
        except Exception as error:
            raise _failed(
                f"answering the {challenge.kind} challenge for {challenge.name}", error
            ) from None

    def finalize(self, order: messages.OrderResource) -> bytes:
        """Wait for validation, finalize, download: the full chain, PEM."""
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_SECONDS)
        try:
            done = self._client.poll_and_finalize(order, deadline)
        except Exception as error:
            raise _failed("completing the order", error) from None
        return str(done.fullchain_pem).encode()

    def renewal_window(self, certificate_pem: bytes) -> tuple[datetime.datetime | None, float]:
        """ACME Renewal Information (RFC 9773) where the server offers it: when
        to renew (``None``: the server says nothing), and in how many seconds
        to ask again."""
        try:
            when, ask_again = self._client.renewal_time(certificate_pem)
        except errors.ARIError as error:
            ask_again = error.retry_after
            when = None
        except Exception as error:
            raise _failed("reading the renewal information", error) from None
        # The library gives the next time to ask as a naive local time.
        return when, max(0.0, (ask_again - datetime.datetime.now()).total_seconds())
