"""Automatic TLS certificates through ACME (RFC 8555): ``--acme-domain NAME``.

====================  =========================================================
module                what it does
====================  =========================================================
``manager``           the certificate served: load, order, renew, hot swap;
                      TLS-ALPN-01 answered on the TLS port
``order``             the ACME protocol, through certbot's ``acme`` library
                      (blocking: run in a worker thread)
``http01``            the plain-HTTP port: HTTP-01 answers, redirects to https
``hello``             a ClientHello's name and ALPN protocols (pure)
``storage``           the files in ``--acme-storage``
``shared``            who orders; the certificate and challenges for the others
====================  =========================================================

:func:`open_certificates` runs them for the block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Config, ConfigError
from ..metrics import Metrics
from .http01 import serve_http01
from .manager import Certificates
from .shared import LocalShare, Share, open_redis_share
from .storage import Storage

__all__ = ["Certificates", "open_certificates"]


@asynccontextmanager
async def open_certificates(
    config: Config, metrics: Metrics, tls_port: int
) -> AsyncIterator[Certificates]:
    """The certificate for ``config.acme_domains``, kept valid for the block
    (the stored one loaded before it starts), the HTTP-01 port served beside
    it; its expiry in ``metrics`` (and ``/stats``), its validity in ``/ready``.

    Raises:
        ConfigError: the storage directory cannot be made or written.
    """
    try:
        storage = await trio.to_thread.run_sync(Storage, config.acme_storage)
    except OSError as error:
        raise ConfigError(
            f"--acme-storage {config.acme_storage}: cannot make or write it "
            f"({error.strerror or error})"
        ) from None
    async with AsyncExitStack() as stack:
        share: Share = LocalShare(storage)
        if config.backplane is not None:
            share = await open_redis_share(
                config.backplane,
                storage,
                frozenset(config.acme_domains),
                config.acme_directory,
                stack,
            )
        certificates = await trio.to_thread.run_sync(Certificates, config, storage, share)
        async with _serving(config, metrics, tls_port, storage, certificates) as served:
            yield served


@asynccontextmanager
async def _serving(
    config: Config, metrics: Metrics, tls_port: int, storage: Storage, certificates: Certificates
) -> AsyncIterator[Certificates]:
    metrics.registry.register(_CertificateCollector(certificates))
    metrics.sections["certificate"] = certificates.statistics
    metrics.readiness.append(certificates.readiness)
    async with trio.open_nursery() as nursery:
        if config.acme_http_port:
            bound = await nursery.start(serve_http01, config, storage, tls_port)
            certificates.http01 = bound is not None
        await nursery.start(certificates.run)
        try:
            yield certificates
        finally:
            nursery.cancel_scope.cancel()


class _CertificateCollector(Collector):
    def __init__(self, certificates: Certificates) -> None:
        self._certificates = certificates

    def collect(self) -> Iterator[Metric]:
        held = self._certificates.held
        yield GaugeMetricFamily(
            "trio_esper_tls_certificate_expiry_timestamp_seconds",
            "When the certificate served expires (Unix time); 0 without one.",
            value=0.0 if held is None else held.not_after,
        )
        yield CounterMetricFamily(
            "trio_esper_acme_failures",
            "ACME orders and renewal checks that failed.",
            value=self._certificates.failures,
        )
