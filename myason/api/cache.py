"""Result caching for the API: a TTL cache with in-flight deduplication, and the query job list.

Identical requests that arrive while the first is still running wait for it and share its
result (one execution); a finished result is kept for its TTL. Errors are shared with the
waiters of that execution but never cached.

The cache is bounded by entries and by bytes: one flow search may hold max_limit rows, so 256
entries alone allowed gigabytes. Each result's size is estimated once when it is stored
(approx_size); the oldest entries go until both bounds hold, and a result larger than the whole
byte bound is answered but not kept.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
from dataclasses import dataclass, field


class _Flight:
    __slots__ = ("done", "result", "error", "waiters")

    def __init__(self):
        self.done = threading.Event()
        self.result = None
        self.error = None
        self.waiters = 0


SAMPLE = 64     # elements of a long list that are walked; the rest are counted like them


def approx_size(obj) -> int:
    """Bytes `obj` holds, roughly: sys.getsizeof of it and of everything in its dicts, lists and tuples.

    A list longer than 4 * SAMPLE is counted from SAMPLE evenly spaced elements (result rows are
    alike, and walking 10,000 rows of 18 values took 0.2 s). Objects shared between rows (None,
    small ints) are counted each time, so this errs high.
    """
    getsizeof = sys.getsizeof
    total, stack = 0, [obj]
    while stack:
        o = stack.pop()
        total += getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            n = len(o)
            if n > 4 * SAMPLE:
                step = n / SAMPLE
                total += sum(approx_size(o[int(k * step)]) for k in range(SAMPLE)) * n // SAMPLE
            else:
                stack.extend(o)
    return total


class Memo:
    """get_or_run(key, ttl, fn): a cached result, the result of a running identical call, or fn()."""

    def __init__(self, maxsize=256, maxbytes=64 << 20, clock=time.monotonic, sizeof=approx_size):
        self.maxsize = maxsize
        self.maxbytes = maxbytes
        self.clock = clock
        self.sizeof = sizeof
        self._lock = threading.Lock()
        self._items = collections.OrderedDict()    # key -> (expires, value, bytes), oldest first
        self._bytes = 0
        self._flights = {}
        self.hits = 0
        self.misses = 0
        self.shared = 0
        self.executions = 0

    def get(self, key):
        """(True, value) for a fresh cached value, else (False, None)."""
        with self._lock:
            return self._get(key)

    def _get(self, key):
        item = self._items.get(key)
        if item is None:
            return False, None
        if item[0] <= self.clock():
            self._drop(key)
            return False, None
        self._items.move_to_end(key)
        return True, item[1]

    def waiters(self, key) -> int:
        """How many callers wait for the running execution of `key` (0 when none runs)."""
        with self._lock:
            flight = self._flights.get(key)
            return flight.waiters if flight else 0

    def get_or_run(self, key, ttl, fn):
        """The value for `key`: cached, shared with a running call, or computed by fn() now.

        Returns (value, how) with how in 'cached', 'shared', 'executed'.
        """
        with self._lock:
            found, value = self._get(key)
            if found:
                self.hits += 1
                return value, "cached"
            flight = self._flights.get(key)
            if flight is not None:
                flight.waiters += 1
                self.shared += 1
                owner = False
            else:
                flight = self._flights[key] = _Flight()
                self.misses += 1
                self.executions += 1
                owner = True
        if not owner:
            flight.done.wait()
            with self._lock:
                flight.waiters -= 1
            if flight.error is not None:
                raise flight.error
            return flight.result, "shared"
        try:
            flight.result = fn()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            keep = flight.error is None and ttl > 0 and self.maxsize > 0 and self.maxbytes > 0
            # Sized outside the lock: a large result takes a few milliseconds to walk.
            size = self.sizeof(flight.result) if keep else 0
            with self._lock:
                del self._flights[key]
                if keep and size <= self.maxbytes:
                    self._drop(key)
                    self._items[key] = (self.clock() + ttl, flight.result, size)
                    self._bytes += size
                    while len(self._items) > self.maxsize or self._bytes > self.maxbytes:
                        self._drop(next(iter(self._items)))
            flight.done.set()
        return flight.result, "executed"

    def _drop(self, key):
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[2]

    def stats(self) -> dict:
        """Counters for /metrics."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "shared": self.shared,
                    "executions": self.executions, "entries": len(self._items), "bytes": self._bytes}


@dataclass
class Job:
    """One flow query as /status reports it."""

    id: str
    query: str
    created: float
    state: str = "running"
    elapsed: float | None = None
    count: int | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic, repr=False)

    def to_dict(self) -> dict:
        """The /status answer."""
        elapsed = self.elapsed if self.elapsed is not None else time.monotonic() - self.started
        return {"id": self.id, "query": self.query, "state": self.state,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
                "elapsed": round(elapsed, 6), "count": self.count, "error": self.error}


class Jobs:
    """The last `keep` query ids with their state, newest first."""

    def __init__(self, keep=1000):
        self.keep = keep
        self._lock = threading.Lock()
        self._jobs = collections.OrderedDict()

    def start(self, qid, canonical) -> Job:
        """Record a new execution of query `qid` (replacing an older one of the same id)."""
        job = Job(qid, canonical, time.time())
        with self._lock:
            self._jobs.pop(qid, None)
            self._jobs[qid] = job
            while len(self._jobs) > self.keep:
                self._jobs.popitem(last=False)
        return job

    def seen(self, qid, canonical, count=None) -> None:
        """Mark `qid` as answered again from the cache (front of /ids), recreating it if forgotten."""
        with self._lock:
            if qid in self._jobs:
                self._jobs.move_to_end(qid)
                return
        self.finish(self.start(qid, canonical), count)

    def finish(self, job, count=None, error=None) -> None:
        """Mark a job done (with its row count) or failed (with a message)."""
        job.elapsed = time.monotonic() - job.started
        job.count = count
        job.error = error
        job.state = "error" if error is not None else "done"

    def get(self, qid):
        """The Job of `qid`, or None."""
        with self._lock:
            return self._jobs.get(qid)

    def ids(self) -> list:
        """Known ids, newest first."""
        with self._lock:
            return list(reversed(self._jobs))
