"""Prometheus metrics of the API: request counts and latencies by route, cache counters."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry

from myason.metrics import StatsCollector

# Latency buckets (seconds): cached answers take about a millisecond, big searches seconds.
# The method is whatever the client sent (any token up to the header limit, answered 405 without
# a token): only these are labels, every other method counts as OTHER, so the series stay few.
METHODS = ("GET", "HEAD")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Telemetry:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, stats_fn):
        self.registry = CollectorRegistry(auto_describe=True)
        # Labelled by route template, never by the raw path: the label set stays small.
        self.requests = Counter("myason_api_requests", "HTTP requests by route, method and status",
                                ("route", "method", "status"), registry=self.registry)
        self.latency = Histogram("myason_api_request_seconds", "HTTP request latency by route",
                                 ("route",), buckets=BUCKETS, registry=self.registry)
        self.registry.register(StatsCollector(stats_fn, gauges=("cache_entries", "cache_bytes"), prefix="myason_api"))

    def observe(self, route, method, status, seconds) -> None:
        """Count one request and its latency."""
        self.requests.labels(route, method if method in METHODS else "OTHER", str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self):
        """(body bytes, content type) of the text exposition format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
