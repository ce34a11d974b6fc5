"""Prometheus metrics, through prometheus-client: one registry per broker.

Label sets are fixed whatever clients do: no metric has a topic or address
label; the ``status`` label of error answers takes HTTP status codes only
(the few the broker and Hypercorn answer with), and ``kind`` of connection
errors one of :data:`CONNECTION_ERRORS`.

Counts the hub keeps anyway (subscriptions, published, delivered, ...) are
read from it at scrape time by a collector, so the hot paths pay nothing for
them; the publish histograms are observed per publish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .hub import Hub

#: Kinds of connection failure the edge counts.
CONNECTION_ERRORS = ("failure", "refused")
#: Publish latency: storing (a SQLite commit included) and handing to the topic.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
#: Subscribers a publish reached.
FANOUT_BUCKETS = (0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The broker's metrics. The edge reports answers and connection errors
    to it; the hub reports publishes (:attr:`Hub.observe_publish`)."""

    def __init__(self, hub: Hub, connections: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._publish_seconds = Histogram(
            "trio_esper_publish_duration_seconds",
            "Time to store a publish and hand it to every subscriber of its topic.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._fanout = Histogram(
            "trio_esper_publish_fanout_subscribers",
            "Subscribers of the topic when a publish was handed to it.",
            buckets=FANOUT_BUCKETS,
            registry=self.registry,
        )
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
            ("topics", "Topics with at least one subscriber.", stats.topics),
            (
                "known_topics",
                "Topics in the catalog (created or used lately).",
                stats.known_topics,
            ),
            ("history_topics", "Topics with retained events.", history.topics),
            ("history_events", "Retained events, all topics.", history.events),
            ("history_bytes", "History size: memory held, or file size.", history.bytes),
        ):
            yield GaugeMetricFamily(f"trio_esper_{name}", help_text, value=value)
        for name, help_text, value in (
            ("events_published", "Events accepted from publishers.", stats.published),
            ("events_delivered", "Events handed to subscriber connections.", stats.delivered),
            ("subscribers_dropped", "Subscribers dropped for a full queue.", stats.dropped),
        ):
            yield CounterMetricFamily(f"trio_esper_{name}", help_text, value=value)
