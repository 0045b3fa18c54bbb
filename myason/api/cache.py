"""Result caching for the API: a TTL cache with in-flight deduplication.

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
                if keep:
                    self._keep(key, ttl, flight.result, size)
            flight.done.set()
        return flight.result, "executed"

    def put(self, key, ttl, value) -> None:
        """Keep `value`, computed elsewhere (a background flow search), as an execution of `key`."""
        with self._lock:
            self.misses += 1
            self.executions += 1
        if ttl > 0 and self.maxsize > 0 and self.maxbytes > 0:
            size = self.sizeof(value)
            with self._lock:
                self._keep(key, ttl, value, size)

    def count(self, what) -> None:
        """Count an answer given elsewhere from this cache's values: 'hits' or 'shared'."""
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def _keep(self, key, ttl, value, size):
        """Store under the lock held by the caller; a value larger than maxbytes is not kept."""
        if size <= self.maxbytes:
            self._drop(key)
            self._items[key] = (self.clock() + ttl, value, size)
            self._bytes += size
            while len(self._items) > self.maxsize or self._bytes > self.maxbytes:
                self._drop(next(iter(self._items)))

    def _drop(self, key):
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[2]

    def stats(self) -> dict:
        """Counters for /metrics."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "shared": self.shared,
                    "executions": self.executions, "entries": len(self._items), "bytes": self._bytes}
