"""Capacity planning: each writer's sustained rate, and a warning long before a spool is full.

A spool that grows now and then is the spool doing its job (a database restart, a slow
minute). A spool that grows steadily means the collector receives more than that writer stores,
and the cap will be reached: then, under `spool_policy: block`, the intake stops and the kernel
drops datagrams. The planner samples every spool's bytes and every writer's stored rows, keeps a
window of them (default 10 minutes), and derives per writer:

- rows_per_second: what it stored per second over the window (its sustained rate now);
- spool_growth_bytes_per_second: the least-squares slope of its spool's bytes over the window;
- spool_seconds_to_full: at that slope, seconds until spool_max_bytes (-1 when not growing).

It warns (log, rate-limited; metric `spool_growing` = 1) when the spool grew over the whole
window (at least `min_window` seconds of samples, each half of the window above the previous
one on average) and would be full within `warn_within` seconds (default an hour).
"""
import collections
import logging
import time

from myason.logs import RateLimiter

log = logging.getLogger("myason.collector")


class CapacityPlanner:
    """Fed with (spool bytes, rows stored) samples per writer; answers rates, slopes and warnings."""

    def __init__(self, max_bytes, window=600.0, min_window=300.0, warn_within=3600.0, clock=time.monotonic):
        self.max_bytes = max_bytes
        self.window, self.min_window, self.warn_within = window, min_window, warn_within
        self.clock = clock
        self._samples = collections.defaultdict(collections.deque)      # name -> (t, bytes, rows)
        self._limiter = RateLimiter(600.0)

    def observe(self, name, spool_bytes, rows):
        """Record one sample of a writer's spool bytes and cumulative rows stored."""
        now = self.clock()
        q = self._samples[name]
        q.append((now, spool_bytes, rows))
        while q and q[0][0] < now - self.window:
            q.popleft()

    def figures(self, name):
        """{rows_per_second, spool_growth_bytes_per_second, spool_seconds_to_full, spool_growing}."""
        q = list(self._samples.get(name, ()))
        out = {"rows_per_second": 0.0, "spool_growth_bytes_per_second": 0.0, "spool_seconds_to_full": -1.0,
               "spool_growing": 0}
        if len(q) < 2:
            return out
        span = q[-1][0] - q[0][0]
        if span <= 0:
            return out
        out["rows_per_second"] = round((q[-1][2] - q[0][2]) / span, 1)
        slope = _slope([t for t, _, _ in q], [b for _, b, _ in q])
        out["spool_growth_bytes_per_second"] = round(slope, 1)
        if slope > 0:
            out["spool_seconds_to_full"] = round(max(0.0, (self.max_bytes - q[-1][1]) / slope), 0)
        half = len(q) // 2
        steady = (span >= self.min_window and slope > 0
                  and _mean(b for _, b, _ in q[half:]) > _mean(b for _, b, _ in q[:half]))
        if steady and 0 <= out["spool_seconds_to_full"] <= self.warn_within:
            out["spool_growing"] = 1
            if self._limiter.allow(name):
                log.warning("spool %s grows steadily: +%.0f kB/s over the last %.0f s while its writer stores "
                            "%.0f flows/s; full in about %.0f min at this rate (spool_max_bytes %d): add "
                            "writers_number, a faster store, or reduce the load", name, slope / 1e3, span,
                            out["rows_per_second"], out["spool_seconds_to_full"] / 60, self.max_bytes)
        return out


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _slope(xs, ys):
    # Least squares, on times relative to the first (large epoch-like values lose precision).
    x0 = xs[0]
    xs = [x - x0 for x in xs]
    mx, my = _mean(xs), _mean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0
