"""`myason collector --status`: ask a running collector whether it runs and has stored everything.

Reads GET /status from the collector's metrics endpoint (`metrics: host:port` in its config;
answered by CollectorApp.status) and turns it into a short report and an exit code a script or
a deployment step can wait on.
"""
import json
import urllib.error
import urllib.request

from myason.options import ConfigError, parse_endpoint

# Exit codes: every stage runs and nothing received waits anywhere; every stage runs and data is
# still on its way to the stores; not reachable, not ready, or a stage stopped.
DRAINED, IN_FLIGHT, UNHEALTHY = 0, 1, 3


def status_url(cfg):
    """The /status URL of the collector configured by cfg; ConfigError without `metrics`."""
    if not cfg.metrics:
        raise ConfigError("metrics", "--status needs the metrics endpoint (host:port) the collector serves")
    host, port = parse_endpoint("metrics", cfg.metrics)
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return "http://%s:%d/status" % ("[%s]" % host if ":" in host else host, port)


def fetch(url, timeout=5.0):
    """The collector's status dict, or None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def exit_code(status):
    """DRAINED, IN_FLIGHT or UNHEALTHY for a status dict (None: unreachable)."""
    if not status or not status.get("ready") or not status.get("healthy"):
        return UNHEALTHY
    return DRAINED if status.get("drained") else IN_FLIGHT


def report(url, status):
    """Lines describing the status for a person."""
    if status is None:
        return ["collector at %s: not reachable (not running, or metrics not served there)" % url]
    verdict = {DRAINED: "running; everything received is stored",
               IN_FLIGHT: "running; data still on its way to the stores",
               UNHEALTHY: "NOT healthy: a stage is not running" if status.get("ready") else "starting"}
    lines = ["collector at %s: %s%s" % (url, verdict[exit_code(status)],
                                        " (stopping)" if status.get("stopping") else "")]
    width = max(len(name) for name in status.get("stages", {"": ""}))
    for name, state in sorted(status.get("stages", {}).items()):
        lines.append("  %-*s  %s" % (width, name, state))
    lines.append("  queued lists %d, datagrams not yet in a batch %d" % (
        status.get("queued_lists", 0), status.get("uncommitted_datagrams", 0)))
    for spool, n in sorted(status.get("spool_batches", {}).items()):
        lines.append("  spool %s: %d batches waiting" % (spool, n))
    return lines
