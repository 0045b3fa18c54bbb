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


def serve(endpoint, stats_fn, gauges=(), status_fn=None):
    """Start the HTTP endpoint ('host:port') in a daemon thread; returns (server, thread).

    GET /metrics: Prometheus text. With status_fn (a callable returning a dict with at least
    "healthy"): GET /status answers that dict as JSON (200), GET /healthz the same with 200
    when healthy and 503 when not, for a supervisor's or load balancer's probe.
    """
    import http.server
    import json
    import socket
    import threading

    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    host, _, port = endpoint.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats_fn, gauges))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            path = self.path.split("?", 1)[0]
            if path in ("/metrics", "/"):
                return self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            if status_fn is not None and path in ("/status", "/healthz"):
                try:
                    status = status_fn()
                except Exception as exc:  # noqa: BLE001 - a probe must get an answer
                    status = {"healthy": False, "error": str(exc)}
                code = 503 if path == "/healthz" and not status.get("healthy") else 200
                return self._send(code, "application/json", json.dumps(status, sort_keys=True).encode())
            return self._send(404, "text/plain", b"not found\n")

        def _send(self, code, ctype, body):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):      # scrapes every few seconds would flood the log
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET

    server = Server((host.strip("[]") or "127.0.0.1", int(port)), Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread
