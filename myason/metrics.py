"""Prometheus metrics endpoint shared by the daemons: counters are read from a stats function at
scrape time, so the hot paths keep plain integer counters and pay nothing for metrics."""
import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("myason.metrics")


def flatten(stats, prefix="myason"):
    """Nested stats dicts -> [(name, labels, value)]; dicts keyed by a label become labels.

    {"rejects": {"bad_token": 3}} -> ("myason_rejects", {"key": "bad_token"}, 3);
    {"agents": {"a1": {"gaps": 2}}} -> ("myason_agents_gaps", {"key": "a1"}, 2).
    """
    out = []
    for name, value in stats.items():
        full = "%s_%s" % (prefix, name)
        if isinstance(value, dict):
            for key, sub in value.items():
                if isinstance(sub, dict):
                    for field, v in sub.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            out.append(("%s_%s" % (full, field), {"key": str(key)}, v))
                elif isinstance(sub, (int, float)) and not isinstance(sub, bool):
                    out.append((full, {"key": str(key)}, sub))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((full, {}, value))
    return out


class StatsCollector:
    """A prometheus_client collector over a stats() callable; names in `gauges` are gauges."""

    def __init__(self, stats_fn, gauges=(), prefix="myason"):
        self.stats_fn = stats_fn
        self.gauges = set(gauges)
        self.prefix = prefix

    def collect(self):
        """Called by prometheus_client on every scrape."""
        try:
            items = flatten(self.stats_fn(), self.prefix)
        except Exception as exc:  # noqa: BLE001 - a scrape must never take the daemon down
            log.warning("metrics: stats failed: %s", exc)
            return
        families = {}
        for name, labels, value in items:
            fam = families.get(name)
            if fam is None:
                short = name[len(self.prefix) + 1:]
                label_names = sorted(labels)
                if short in self.gauges or short.split("_")[0] in self.gauges:
                    fam = GaugeMetricFamily(name, "myason %s" % short, labels=label_names)
                else:
                    fam = CounterMetricFamily(name, "myason %s" % short, labels=label_names)
                families[name] = fam
            fam.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


def serve(endpoint, stats_fn, gauges=()):
    """Start the HTTP endpoint ('host:port') in a daemon thread; returns (server, thread)."""
    from prometheus_client import start_http_server
    host, _, port = endpoint.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats_fn, gauges))
    return start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
