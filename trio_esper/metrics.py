"""Prometheus metrics, through prometheus-client: one registry per broker.

Label sets are fixed whatever clients do: no metric has a topic or address
label; the ``status`` label of error answers takes HTTP status codes only
(the few the broker and Hypercorn answer with), and ``kind`` of connection
errors one of :data:`CONNECTION_ERRORS`.

Counts the hub keeps anyway (subscriptions, published, delivered, ...) are
read from it at scrape time by a collector, so the hot paths pay nothing for
them. The publish histograms are observed per publish, into plain bucket
counts (:class:`_Histogram`) that a collector exposes: prometheus-client's
``Histogram.observe`` takes a lock per bucket and sum (the broker is one
thread), a share of a publish's instructions worth saving (BENCHMARKS.md).
"""

from __future__ import annotations

import bisect
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .hub import Hub

#: Kinds of connection failure the edge counts.
CONNECTION_ERRORS = ("failure", "refused")
#: Publish latency: storing (a SQLite commit included) and handing to the topic.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
#: Subscribers a publish reached.
FANOUT_BUCKETS = (0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000)
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: A bucket bound as prometheus-client writes its ``le`` label (untyped there).
_le: Callable[[float], str] = floatToGoString


class Metrics:
    """The broker's metrics. The edge reports answers and connection errors
    to it; the hub reports publishes (:attr:`Hub.observe_publish`)."""

    def __init__(self, hub: Hub, connections: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._publish_seconds = _Histogram(
            "trio_esper_publish_duration_seconds",
            "Time to store a publish and hand it to every subscriber of its topic.",
            LATENCY_BUCKETS,
        )
        self._fanout = _Histogram(
            "trio_esper_publish_fanout_subscribers",
            "Subscribers of the topic when a publish was handed to it.",
            FANOUT_BUCKETS,
        )
        self.registry.register(self._publish_seconds)
        self.registry.register(self._fanout)
        self._errors = Counter(
            "trio_esper_http_errors",
            "Requests answered with an error status, by status.",
            ["status"],
            registry=self.registry,
        )
        self._connection_errors = Counter(
            "trio_esper_connection_errors",
            "Connections ended by a failure, or refused (per-address limit).",
            ["kind"],
            registry=self.registry,
        )
        for kind in CONNECTION_ERRORS:
            self._connection_errors.labels(kind)
        #: Counts open client connections (the edge sets it).
        self.connections = connections
        #: More ``/stats`` sections and ``/ready`` checks, from what runs beside the
        #: hub (the ACME certificate: acme/): a section's name and its reader; each
        #: check answers ``None`` if ready, else why not.
        self.sections: dict[str, Callable[[], dict[str, object]]] = {}
        self.readiness: list[Callable[[], str | None]] = []
        self.registry.register(_HubCollector(hub, lambda: self.connections()))
        hub.observe_publish = self.observe_publish

    def observe_publish(self, seconds: float, subscribers: int) -> None:
        self._publish_seconds.observe(seconds)
        self._fanout.observe(subscribers)

    def error_answered(self, status: int) -> None:
        """A request was answered with ``status`` (400 or more)."""
        if 400 <= status <= 599:
            self._errors.labels(str(status)).inc()

    def connection_error(self, kind: str) -> None:
        assert kind in CONNECTION_ERRORS
        self._connection_errors.labels(kind).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _Histogram(Collector):
    """A histogram without labels, exposed as prometheus-client's
    ``Histogram`` exposes one (``_bucket``, ``_count``, ``_sum``, and
    ``_created`` unless ``PROMETHEUS_DISABLE_CREATED_SERIES`` says not to, as
    prometheus-client reads it). Observed from the broker's one thread only."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [float(bound) for bound in buckets]
        # One count per bound (values up to it and above the previous one),
        # then the values above the last bound.
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._created = time.time()
        self._expose_created = os.environ.get(
            "PROMETHEUS_DISABLE_CREATED_SERIES", "False"
        ).lower() not in ("true", "1", "t")

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the
        # first bound >= value.
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*self._bounds, math.inf], self._counts, strict=True):
            total += count
            buckets.append((_le(bound), total))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self._sum
        )
        if self._expose_created:
            yield GaugeMetricFamily(f"{self._name}_created", self._documentation, self._created)


class _HubCollector(Collector):
    """Reads the hub's counts and gauges at scrape time."""

    def __init__(self, hub: Hub, connections: Callable[[], int]) -> None:
        self._hub = hub
        self._connections = connections

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        stats = hub.statistics()
        history = hub.history.statistics()
        for name, help_text, value in (
            ("connections", "Open client connections.", self._connections()),
            ("subscriptions", "Live subscriptions.", stats.clients),
            (
                "mercure_subscriptions",
                "Live subscriptions on /.well-known/mercure (counted in subscriptions too).",
                stats.routed_clients,
            ),
            ("topics", "Topics with at least one subscriber.", stats.topics),
            (
                "known_topics",
                "Topics in the catalog (created or used lately).",
                stats.known_topics,
            ),
            ("history_topics", "Topics with retained events.", history.topics),
            ("history_events", "Retained events, all topics.", history.events),
            ("history_bytes", "History size: memory held, or file size.", history.bytes),
            (
                "queued_bytes",
                "Bytes waiting for subscribers (queued or being written).",
                stats.queued_bytes,
            ),
        ):
            yield GaugeMetricFamily(f"trio_esper_{name}", help_text, value=value)
        for name, help_text, value in (
            ("events_published", "Events accepted from publishers.", stats.published),
            ("events_delivered", "Events handed to subscriber connections.", stats.delivered),
            ("subscribers_dropped", "Subscribers dropped for a full queue.", stats.dropped),
            (
                "mercure_updates_published",
                "Mercure updates accepted (counted in events_published too).",
                stats.routed_published,
            ),
        ):
            yield CounterMetricFamily(f"trio_esper_{name}", help_text, value=value)
