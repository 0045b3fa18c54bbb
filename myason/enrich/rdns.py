"""Reverse DNS names of both addresses, resolved asynchronously; off by default.

The pipeline never waits for the resolver: a lookup not answered yet gives '' and is started
in a small thread pool; its answer lands in a bounded LRU cache for the next flows. A lookup
still unanswered after `timeout` seconds is cached as '' (negative), so a dead resolver costs
nothing but threads. getaddrinfo cannot be cancelled, so at most `max_pending` lookups are ever
in flight, which bounds the threads' queue.
"""
from __future__ import annotations

import collections
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from myason.enrich.base import COL, OUT, Enricher, register
from myason.options import check_bool, check_float, check_int, check_mapping, check_optional, parse_options

log = logging.getLogger("myason.enrich.rdns")

# The `rdns` mapping's options (myason.options spec).
RDNS_SPEC = {"enabled": (False, check_bool()), "timeout": (1.0, check_float(lo=0, lo_open=True)),
             "max_entries": (10000, check_int(lo=1)), "workers": (2, check_int(1, 64)),
             "ttl": (3600.0, check_float(lo=0)), "negative_ttl": (300.0, check_float(lo=0)),
             "max_pending": (256, check_int(lo=1))}


def resolve(addr: str) -> str:
    """The PTR name of a text address, '' when there is none (blocking; for the pool)."""
    try:
        return socket.gethostbyaddr(addr)[0]
    except (OSError, UnicodeError, ValueError):
        return ""


class ReverseCache:
    """Bounded LRU of address -> (name, expiry) with asynchronous, deduplicated lookups."""

    def __init__(self, max_entries=10000, timeout=1.0, workers=2, ttl=3600.0, negative_ttl=300.0,
                 max_pending=256, resolver=resolve, clock=time.monotonic):
        self.max_entries = max(1, int(max_entries))
        self.timeout = float(timeout)
        self.ttl = float(ttl)
        self.negative_ttl = float(negative_ttl)
        self.max_pending = max(1, int(max_pending))
        self._resolver = resolver
        self._clock = clock
        self._cache = collections.OrderedDict()
        self._pending = {}                  # addr -> submit time
        # Workers only append here (deque appends are atomic), so the cache and `_pending` stay
        # owned by the pipeline's thread and need no lock.
        self._done = collections.deque()
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(workers)),
                                        thread_name_prefix="myason-rdns")
        self.stats = {"hits": 0, "misses": 0, "timeouts": 0, "dropped": 0, "evicted": 0}

    def _work(self, addr):
        try:
            name = self._resolver(addr)
        except Exception:  # noqa: BLE001 - a resolver failure is just "no name"
            name = ""
        self._done.append((addr, name if isinstance(name, str) else ""))

    def _store(self, addr, name, now):
        cache = self._cache
        cache[addr] = (name, now + (self.ttl if name else self.negative_ttl))
        cache.move_to_end(addr)
        while len(cache) > self.max_entries:
            cache.popitem(last=False)
            self.stats["evicted"] += 1

    def _collect(self, now):
        done = self._done
        while done:
            addr, name = done.popleft()
            self._in_flight -= 1
            if self._pending.pop(addr, None) is not None or name:
                self._store(addr, name, now)
        if self._pending:
            limit = now - self.timeout
            late = [a for a, t in self._pending.items() if t <= limit]
            for addr in late:
                del self._pending[addr]
                self.stats["timeouts"] += 1
                self._store(addr, "", now)

    def get(self, addr: str) -> str:
        """The cached name ('' if unknown or not ready); starts a lookup on a miss. Never blocks."""
        now = self._clock()
        if self._done or self._pending:
            self._collect(now)
        hit = self._cache.get(addr)
        if hit is not None and hit[1] > now:
            self._cache.move_to_end(addr)
            self.stats["hits"] += 1
            return hit[0]
        self.stats["misses"] += 1
        if addr not in self._pending:
            if self._in_flight >= self.max_pending:
                self.stats["dropped"] += 1
            else:
                self._pending[addr] = now
                self._in_flight += 1
                self._pool.submit(self._work, addr)
        return ""

    def wait(self, timeout: float) -> bool:
        """Wait up to timeout s for pending lookups; True when none is left (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while True:
            self._collect(self._clock())
            if not self._pending:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def __len__(self):
        return len(self._cache)

    def close(self):
        """Stop the pool without waiting for stuck lookups."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@register
class RdnsEnricher(Enricher):
    """Fills src_host/dst_host from reverse DNS when `rdns.enabled` is true."""

    name = "rdns"

    def __init__(self):
        self.cache = None

    SPEC = {"rdns": ({}, check_optional(check_mapping))}

    def setup(self, config):
        """Options in `rdns`: enabled, timeout, max_entries, workers, ttl, negative_ttl, max_pending."""
        opts = parse_options("enrich.rdns", self.options(config)["rdns"] or {}, RDNS_SPEC)
        if not opts.pop("enabled"):
            return False
        self.cache = ReverseCache(**opts)
        return True

    def apply(self, row, out, _s=COL["src_ip"], _d=COL["dst_ip"], _os=OUT["src_host"],
              _od=OUT["dst_host"]):
        """Set src_host and dst_host ('' while not resolved)."""
        get = self.cache.get
        out[_os] = get(row[_s])
        out[_od] = get(row[_d])

    def close(self):
        """Stop the resolver threads."""
        if self.cache is not None:
            self.cache.close()
