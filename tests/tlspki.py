"""A throw-away PKI for the TLS tests (trustme), a broker serving TLS with
it, and a client that trusts only its CA."""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .conftest import STEP_SECONDS, Broker, start_broker


@dataclass(frozen=True)
class PKI:
    """A throw-away CA and a certificate it issued for 127.0.0.1 and localhost."""

    ca: trustme.CA
    ca_file: Path
    certfile: Path
    keyfile: Path
    #: A valid key that is not the certificate's.
    other_keyfile: Path
    #: base64(SHA-256(SubjectPublicKeyInfo)): what Chromium's
    #: --ignore-certificate-errors-spki-list takes.
    spki_hash: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, certfile, keyfile = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    other_keyfile = folder / "other-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server.private_key_pem.write_to_path(str(keyfile))
    with certfile.open("wb") as chain:
        for blob in server.cert_chain_pems:
            chain.write(blob.bytes())
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(other_keyfile))
    certificate = x509.load_pem_x509_certificate(server.cert_chain_pems[0].bytes())
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_hash = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return PKI(ca, ca_file, certfile, keyfile, other_keyfile, spki_hash)


def https(broker: Broker) -> str:
    return broker.url.replace("http://", "https://", 1)


async def start_tls_broker(nursery: trio.Nursery, pki: PKI, **overrides: Any) -> Broker:
    return await start_broker(
        nursery, certfile=str(pki.certfile), keyfile=str(pki.keyfile), **overrides
    )


@asynccontextmanager
async def tls_client(pki: PKI, *, http2: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """httpx trusting only the test CA; ``http2``: it offers ``h2`` by ALPN."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    async with httpx.AsyncClient(
        http2=http2, http1=not http2, verify=context, timeout=STEP_SECONDS
    ) as client:
        yield client


async def publish(client: httpx.AsyncClient, broker: Broker, topic: str, data: str) -> int:
    reply = await client.post(f"{https(broker)}/publish/{topic}", content=f"data: {data}\n")
    assert reply.status_code == 200, reply.text
    subscribers: int = reply.json()["subscribers"]
    return subscribers
