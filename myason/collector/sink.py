"""A writer thread: claims batches from its own spool and stores them, retrying with backoff.

One spool and one thread per writer, so a slow or dead database never holds back another.
A batch leaves the spool only once its writer has committed it; a batch the writer declares
permanently unwritable goes to the spool's errors/ folder. Nothing is ever dropped here.
"""
import logging
import threading
import time

from myason.logs import RateLimiter
from myason.store.base import WriterError, decode_batch_events, decode_prepared

log = logging.getLogger("myason.collector.sink")


class WriterThread(threading.Thread):
    """Drains one Spool into one Writer until stopped and the spool is empty."""

    def __init__(self, writer, spool, stop, poll=0.05, backoff=(0.2, 10.0), claim=8, drain=5.0):
        super().__init__(name="writer-%s" % writer.name, daemon=True)
        self.writer, self.spool, self.stop = writer, spool, stop
        self.poll = poll
        self.backoff_min, self.backoff_max = backoff
        self.claim_limit = claim
        self.drain = drain
        self.batches = 0
        self.rows = 0
        self.events = 0
        self.errors = 0
        self.failed_batches = 0
        self.latency = 0.0          # seconds the last successful write took
        self.write_seconds = 0.0    # all successful writes together (per-row cost over time)
        self.connected = False
        self._limiter = RateLimiter(10.0)
        self.error = None

    def run(self):
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - surfaced through the app's exit code
            self.error = exc
            log.exception("%s failed", self.name)
        finally:
            try:
                self.writer.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the real outcome
                log.warning("%s: close failed: %s", self.name, exc)

    def _loop(self):
        delay = self.backoff_min
        stop_deadline = None
        while True:
            if self.stop.is_set():
                # Shutdown: keep draining for up to `drain` seconds; what is left stays on disk
                # for the next start, so nothing is lost either way.
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + self.drain
                if time.monotonic() >= stop_deadline or not self.spool.depth()[0]:
                    self._report_left()
                    return
            if not self.connected:
                if not self._try(self.writer.open):
                    delay = self._sleep(delay)
                    continue
                self.connected = True
            claimed = self.spool.claim(self.claim_limit)
            if not claimed:
                time.sleep(self.poll)
                continue
            for i, (name, data) in enumerate(claimed):
                if not self._store(name, data):
                    # Hand this one and the rest back in order; they are retried first.
                    for later, _ in claimed[i:]:
                        self.spool.unclaim(later)
                    self.connected = False
                    delay = self._sleep(delay)
                    break
            else:
                delay = self.backoff_min

    def _store(self, name, data):
        try:
            prepared = decode_prepared(data)
            if prepared is not None:
                header, payload = prepared
                t0 = time.monotonic()
                self.writer.write_prepared(name, header, payload)
                self.latency = time.monotonic() - t0
                self.write_seconds += self.latency
                rows, events = range(header["rows"]), header.get("events", ())
            else:
                rows, events = decode_batch_events(data)
                if events and not self.writer.stores_events:
                    events = []
            if prepared is None and (rows or events):
                t0 = time.monotonic()
                if events:
                    self.writer.write(name, rows, events=events)
                else:
                    self.writer.write(name, rows)
                self.latency = time.monotonic() - t0
                self.write_seconds += self.latency
        except WriterError as exc:
            self.errors += 1
            if exc.permanent:
                self.failed_batches += 1
                log.error("%s: batch %s cannot be stored, moved to errors/: %s", self.name, name, exc)
                self.spool.fail(name)
                return True
            self._warn(exc)
            return False
        self.spool.done(name)
        self.batches += 1
        self.rows += len(rows)
        self.events += len(events)
        return True

    def _try(self, fn):
        try:
            fn()
            return True
        except WriterError as exc:
            self.errors += 1
            self._warn(exc)
            return False

    def _warn(self, exc):
        if self._limiter.allow("error"):
            log.warning("%s: %s (retrying; %d errors so far)", self.name, exc, self.errors)

    def _sleep(self, delay):
        # Wake early on stop so shutdown does not wait out a long backoff.
        self.stop.wait(delay)
        return min(delay * 2, self.backoff_max)

    def _report_left(self):
        waiting = self.spool.depth()[0]
        if waiting:
            log.warning("%s: stopping with %d batches left in the spool for the next start", self.name, waiting)
