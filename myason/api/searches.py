"""Flow searches in the background, as Docket runs its queries: each search has an id and a state
history, runs on a bounded pool of worker threads fed by a bounded queue, and leaves its result
in the spool (myason.api.spool) to be fetched by id until it expires or is evicted.

One record per query id (the hash of the canonical query, myason.api.grammar): an identical
search asked while one is queued or running joins it (one execution); one asked after it is done
gets the stored result while it is younger than the query cache TTL, else it runs again (a new
run of the same id: the record's history goes on, its old result is dropped). A relative window
(after/1h) is resolved when the run is queued, by the request that queued it; so an answer is
never older than the cache TTL, as before the searches moved to the background.

States: queued -> running -> done | failed; done -> expired (result_ttl passed, or evicted to
keep the spool within result_spool_bytes). The records of the last `keep` ids stay in memory.
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time

import orjson

from myason.api.db import DatabaseError
from myason.api.queries import iso
from myason.api.spool import TooBig

log = logging.getLogger("myason.api")

STATES = ("queued", "running", "done", "failed", "expired")
IN_FLIGHT = ("queued", "running")
HISTORY = 40        # state changes kept per id: the last ten runs or so
SWEEP = 5.0         # seconds between the workers' looks for expired results when idle
GAUGES = ("searches_now", "result_spool_bytes", "result_spool_files")


class Busy(Exception):
    """The queue is full: try again in `retry_after` seconds."""

    def __init__(self, retry_after):
        self.retry_after = retry_after
        super().__init__("too many searches waiting (search_queue is full): try again in %d s" % retry_after)


class Search:
    """The record of one query id: its current run and the history of every run."""

    def __init__(self, qid, query, bound):
        self.id, self.query, self.bound = qid, query, bound
        self.run = 0
        self.state = None
        self.history = []
        self.task = None
        self.finished = threading.Event()
        self.shared = 0
        self.rows = self.truncated = self.seconds = self.bytes = self.error = self.status = None
        self.done_at = self.expires = self.expired_by = None
        self._started = None

    @property
    def file(self) -> str:
        return "%s.%d.json" % (self.id, self.run)

    def _to(self, state, at):
        self.state = state
        self.history.append((state, at))
        del self.history[:-HISTORY]

    def to_status(self) -> dict:
        """The /status answer."""
        seconds = self.seconds
        if self.state == "running":
            seconds = time.monotonic() - self._started
        return {"id": self.id, "query": self.query, "bound": self.bound, "state": self.state,
                "history": [{"state": s, "at": iso(t)} for s, t in self.history],
                "rows": self.rows, "truncated": self.truncated,
                "seconds": None if seconds is None else round(seconds, 6), "bytes": self.bytes,
                "error": self.error, "expires": iso(self.expires), "expired_by": self.expired_by,
                "shared": self.shared, "result_url": "/result/" + self.id}


class Searches:
    """ask() a search, wait() for it, result() of a done one; get()/ids() for /status and /ids."""

    def __init__(self, spool, workers=2, queue_size=32, keep=1000, cache_ttl=0.0, memo=None, clock=time.time):
        self.spool = spool
        self.workers = workers
        self.queue_size = queue_size
        self.keep = keep
        self.cache_ttl = cache_ttl
        self.memo = memo
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue = collections.deque()
        self._known = collections.OrderedDict()     # id -> Search, most recently asked last
        self._threads = []
        self._closed = False
        self._running = 0
        self._mean_seconds = 1.0
        self.counts = dict.fromkeys(("queued", "running", "done", "failed", "expired", "evicted", "shared",
                                     "cached", "rejected"), 0)

    # -- asking ---------------------------------------------------------------------------------

    def ask(self, qid, query, bound, task):
        """(Search, how, state): how is 'cached' (a fresh done result), 'shared' (joins the run in
        flight) or 'queued' (a new run of `task`, a callable returning the result dict); state is the
        search's state at that moment (a worker may change it at once). Busy when full."""
        self.sweep()
        with self._lock:
            s = self._known.get(qid)
            if s is not None:
                self._known.move_to_end(qid)
                if s.state in IN_FLIGHT:
                    s.shared += 1
                    self.counts["shared"] += 1
                    self._memo_count("shared")
                    return s, "shared", s.state
                if s.state == "done" and self.cache_ttl > 0 and self.clock() < s.done_at + self.cache_ttl:
                    self.counts["cached"] += 1
                    self._memo_count("hits")
                    return s, "cached", s.state
            if len(self._queue) >= self.queue_size:
                self.counts["rejected"] += 1
                waves = (len(self._queue) + self._running) / self.workers
                raise Busy(max(1, min(60, math.ceil(self._mean_seconds * waves))))
            if s is None:
                s = self._known[qid] = Search(qid, query, bound)
            stale = s.file if s.state == "done" else None
            s.run += 1
            s.task, s.bound, s.finished = task, bound, threading.Event()
            s.rows = s.truncated = s.seconds = s.bytes = s.error = s.status = None
            s.done_at = s.expires = s.expired_by = None
            s._to("queued", self.clock())
            self.counts["queued"] += 1
            self._queue.append(s)
            self._start_workers()
            self._wake.notify()
            forgotten = self._trim()
        for name in ([stale] if stale else []) + forgotten:
            self.spool.remove(name)
        return s, "queued", "queued"

    def _memo_count(self, what):
        if self.memo is not None:
            self.memo.count(what)

    def _trim(self) -> list:
        """Forget the oldest finished ids beyond `keep`; the names of their result files."""
        files = []
        for qid in list(self._known):
            if len(self._known) <= self.keep:
                break
            s = self._known[qid]
            if s.state not in IN_FLIGHT:
                del self._known[qid]
                if s.state == "done":
                    files.append(s.file)
        return files

    def wait(self, s, timeout) -> bool:
        """Wait up to `timeout` seconds for the current run of `s` to finish; True when it has."""
        return s.finished.wait(timeout) if timeout > 0 else s.finished.is_set()

    def result(self, s):
        """The result dict of a done search (from memory or the spool), or None when it is gone."""
        if self.memo is not None:
            found, value = self.memo.get(("q", s.id, s.run))
            if found:
                return value
        data = self.spool.get(s.file)
        return None if data is None else orjson.loads(data)

    def get(self, qid):
        """The Search of `qid` (expired results marked first), or None."""
        self.sweep()
        with self._lock:
            return self._known.get(qid)

    def ids(self) -> list:
        """Known ids, most recently asked first."""
        with self._lock:
            return list(reversed(self._known))

    # -- running --------------------------------------------------------------------------------

    def _start_workers(self):
        if not self.spool.is_open:
            self.spool.open()
        while len(self._threads) < self.workers and not self._closed:
            t = threading.Thread(target=self._work, name="myason-api-search-%d" % len(self._threads), daemon=True)
            self._threads.append(t)
            t.start()

    def _work(self):
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    if not self._wake.wait(SWEEP):
                        break
                if self._closed:
                    return
                s = self._queue.popleft() if self._queue else None
                if s is not None:
                    s._started = time.monotonic()
                    s._to("running", self.clock())
                    self._running += 1
                    self.counts["running"] += 1
            if s is None:
                self.sweep()
            else:
                self._run(s)

    def _run(self, s):
        evicted, result, data, error = [], None, None, None
        try:
            result = s.task()
            seconds = time.monotonic() - s._started
            result["elapsed"] = round(seconds, 6)
            data = orjson.dumps(result)
            evicted = self.spool.put(s.file, data)
        except TooBig as exc:
            error = (500, str(exc))
        except DatabaseError as exc:
            error = (503, str(exc))
        except Exception as exc:  # noqa: BLE001 - a search's failure is its state, the worker goes on
            log.exception("api: search %s (%s) failed", s.id, s.query)
            error = (500, "internal error: %s" % type(exc).__name__)
        seconds = time.monotonic() - s._started
        if error is None and self.memo is not None:
            self.memo.put(("q", s.id, s.run), self.cache_ttl, result)
        with self._lock:
            self._running -= 1
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds
            s.seconds, s.task = seconds, None
            if error is None:
                s.rows, s.truncated, s.bytes = result["count"], result["truncated"], len(data)
                s.done_at = self.clock()
                s.expires = s.done_at + self.spool.ttl
                s._to("done", s.done_at)
                self.counts["done"] += 1
            else:
                s.status, s.error = error
                s._to("failed", self.clock())
                self.counts["failed"] += 1
            s.finished.set()
            self._mark_expired(evicted, "result_spool_bytes")

    def sweep(self) -> None:
        """Mark the searches whose results passed result_ttl as expired (their files are gone)."""
        names = self.spool.expire()
        if names:
            with self._lock:
                self._mark_expired(names, "result_ttl")

    def _mark_expired(self, names, why):
        for name in names:
            qid, run = name.split(".")[:2]
            s = self._known.get(qid)
            if s is not None and s.run == int(run) and s.state == "done":
                s.expired_by = why
                s._to("expired", self.clock())
                self.counts["evicted" if why == "result_spool_bytes" else "expired"] += 1

    # -- the rest -------------------------------------------------------------------------------

    def metrics(self) -> dict:
        """Counters and gauges for /metrics (GAUGES are the gauges)."""
        spool = self.spool.stats()
        with self._lock:
            return {"searches": dict(self.counts),
                    "searches_now": {"queued": len(self._queue), "running": self._running},
                    "result_spool_bytes": spool["bytes"], "result_spool_files": spool["files"]}

    def close(self, timeout=5.0) -> None:
        """Stop the workers (a running search finishes first, up to `timeout`), then empty the spool."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._wake.notify_all()
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)
        self.spool.close()
