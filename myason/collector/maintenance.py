"""Rollup maintenance, retention and hourly chores of the SQL stores, off the ingest path.

One thread per SQL writer (sqlite, postgresql), each with a writer instance and a database
connection of its own: the writer threads' COPY and INSERT never wait for a maintenance
statement, and a slow or failing maintenance only makes the rollups lag (rollup_lag_seconds
says by how much) while every flow is still stored. Work is done in bounded slices: each call
of the writer's maintain() stops starting new steps after `slice_seconds`, and when work is
left the thread rests in proportion (`duty`) before the next slice, so on a busy machine the
maintenance takes at most that share of its time and the processors and writers keep the rest.
"""
import logging
import threading
import time

from myason.logs import RateLimiter

log = logging.getLogger("myason.collector.maintenance")

HOURLY = 3600.0
# Seconds of maintenance per slice, and the share of wall time slices may take while behind.
SLICE_SECONDS = 5.0
DUTY = 0.5
# Waits after an error (a database away, a statement failing): doubling up to the maximum.
BACKOFF = (1.0, 60.0)


class MaintenanceThread(threading.Thread):
    """Runs writer.maintain() every writer.maintain_interval and writer.housekeeping() hourly."""

    def __init__(self, name, writer, stop, slice_seconds=SLICE_SECONDS, duty=DUTY, clock=time.time):
        super().__init__(name="maintenance-%s" % name, daemon=True)
        self.writer, self.stop = writer, stop
        self.slice_seconds, self.duty = slice_seconds, duty
        self.clock = clock
        self.interval = getattr(writer, "maintain_interval", 60.0) or 0.0
        self.runs = 0
        self.errors = 0
        self.seconds = 0.0          # spent in maintain() and housekeeping()
        self.rollup_lag = 0.0       # seconds the rollups are behind, as of the last run
        self.last_run = 0.0         # Unix time of the last successful maintain()
        self.busy = 0               # another maintainer of the same database held it last time
        self.connected = False
        self._since = None          # monotonic start of the work running now (None: idle)
        self.error = None
        self._limiter = RateLimiter(60.0)

    def run(self):
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the app sees .error and stops non-zero
            self.error = exc
            log.exception("%s failed", self.name)
        finally:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - closing must not hide the outcome
                pass

    def _loop(self):
        next_maintain = time.monotonic()
        next_hourly = time.monotonic()
        delay = BACKOFF[0]
        while not self.stop.is_set():
            now = time.monotonic()
            wake = min(next_maintain if self.interval else float("inf"), next_hourly)
            if now < wake:
                self.stop.wait(min(wake - now, 1.0))
                continue
            try:
                if not self.connected:
                    self._open()
                if self.interval and now >= next_maintain:
                    next_maintain = self._maintain(now)
                if time.monotonic() >= next_hourly:
                    t0 = time.monotonic()
                    self.writer.housekeeping()
                    self.seconds += time.monotonic() - t0
                    next_hourly = time.monotonic() + HOURLY
                delay = BACKOFF[0]
            except Exception as exc:  # noqa: BLE001 - any database trouble: retry later
                self.errors += 1
                self.connected = False
                if self._limiter.allow("error"):
                    log.warning("%s: %s (rollups lag until it works again; retrying in %.0f s)",
                                self.name, " ".join(str(exc).split())[:300], delay)
                try:
                    self.writer.close()
                except Exception:  # noqa: BLE001 - a broken connection may not even close
                    pass
                self.stop.wait(delay)
                delay = min(delay * 2, BACKOFF[1])

    def _open(self):
        # Named, so that pg_stat_activity tells its statements from the writers'.
        self.writer.open(application="myason-maintenance")
        self.connected = True

    def _maintain(self, now):
        """One slice; returns when the next one is due (monotonic)."""
        t0 = self._since = time.monotonic()
        try:
            s = self.writer.maintain(self.clock(), wait=False, deadline=t0 + self.slice_seconds)
        finally:
            self._since = None
        took = time.monotonic() - t0
        self.seconds += took
        self.runs += 1
        self.busy = int(s["busy"])
        if not s["busy"]:
            self.rollup_lag = s["lag"]
            self.last_run = self.clock()
        if s["more"]:
            # Behind: go on after a rest, so that the maintenance takes at most `duty` of the time.
            return time.monotonic() + took * (1 - self.duty) / self.duty
        return t0 + self.interval

    def snapshot(self):
        """Counters and gauges for stats() and the metrics."""
        since = self._since
        return {"runs": self.runs, "errors": self.errors, "seconds": round(self.seconds, 3),
                # A slice stuck in a statement (a lock, a slow disk) shows here while it lasts.
                "running_seconds": round(time.monotonic() - since, 1) if since is not None else 0.0,
                "rollup_lag_seconds": round(self.rollup_lag, 1), "last_run": self.last_run, "busy": self.busy,
                "connected": int(self.connected)}
