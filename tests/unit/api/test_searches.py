"""Background flow searches: states and their history, sharing, the cache TTL, the bounded queue,
failures, expiry and eviction, over a real spool directory."""
import os
import threading

import orjson
import pytest

from myason.api.cache import Memo
from myason.api.db import DatabaseError
from myason.api.searches import Busy, Searches
from myason.api.spool import ResultSpool
from tests.support.api import Clock
from tests.support.services import wait_until


def result(n, width=1):
    return {"columns": ["a"], "rows": [["x" * width] for _ in range(n)], "count": n, "truncated": False}


class Gate:
    """A task that waits until opened, counting its executions."""

    def __init__(self, n=3, width=1):
        self.open, self.calls, self.n, self.width = threading.Event(), 0, n, width

    def __call__(self):
        self.calls += 1
        assert self.open.wait(10)
        return result(self.n, self.width)


@pytest.fixture
def make(tmp_path):
    made = []

    def build(workers=1, queue_size=4, keep=100, cache_ttl=60.0, spool_bytes=1 << 20, ttl=600.0, memo=None):
        clock = Clock(1000.0)
        spool = ResultSpool(str(tmp_path / ("s%d" % len(made))), spool_bytes, ttl, clock)
        s = Searches(spool, workers, queue_size, keep, cache_ttl, memo, clock)
        made.append(s)
        return s, clock

    yield build
    for s in made:
        s.close()


def states(s):
    return [h["state"] for h in s.to_status()["history"]]


def test_a_search_goes_queued_running_done_with_its_figures(make):
    searches, clock = make()
    gate = Gate(n=3)
    s, how, _ = searches.ask("a" * 16, "host/10.0.0.1/limit/100", "after/24h (default)", gate)
    assert how == "queued" and s.state in ("queued", "running")
    wait_until(lambda: s.state == "running")
    assert not searches.wait(s, 0) and s.to_status()["seconds"] >= 0
    gate.open.set()
    assert searches.wait(s, 10)
    st = s.to_status()
    assert states(s) == ["queued", "running", "done"] and st["state"] == "done"
    assert st["rows"] == 3 and st["truncated"] is False and st["error"] is None and st["bytes"] > 0
    assert st["bound"] == "after/24h (default)" and st["expires"] == "1970-01-01T00:26:40.000Z"
    res = searches.result(s)
    assert res["rows"] == [["x"]] * 3 and res["elapsed"] >= 0
    assert orjson.loads(searches.spool.get(s.file)) == res
    assert searches.ids() == ["a" * 16] and searches.get("a" * 16) is s and searches.get("b" * 16) is None


def test_identical_searches_in_flight_run_once(make):
    searches, clock = make()
    gate = Gate()
    first, _, _ = searches.ask("a" * 16, "q", "none", gate)
    others = [searches.ask("a" * 16, "q", "none", Gate()) for _ in range(3)]
    assert all(s is first and how == "shared" and state in ("queued", "running") for s, how, state in others)
    gate.open.set()
    assert searches.wait(first, 10) and gate.calls == 1
    assert first.shared == 3 and searches.counts["shared"] == 3 and searches.counts["queued"] == 1


def test_a_done_result_is_served_for_the_cache_ttl_then_run_again(make):
    searches, clock = make(cache_ttl=60)
    gate = Gate()
    gate.open.set()
    s, _, _ = searches.ask("a" * 16, "q", "none", gate)
    assert searches.wait(s, 10)
    old_file = s.file
    clock.t += 59
    assert searches.ask("a" * 16, "q", "none", gate) == (s, "cached", "done")
    clock.t += 1
    again, how, _ = searches.ask("a" * 16, "q", "none", gate)
    assert again is s and how == "queued"
    assert searches.wait(s, 10) and gate.calls == 2
    # One record per id: the history goes on, the previous run's file is gone.
    assert states(s) == ["queued", "running", "done"] * 2
    assert s.file != old_file and searches.spool.get(old_file) is None and searches.spool.get(s.file)


def test_without_a_cache_every_search_runs(make):
    searches, clock = make(cache_ttl=0)
    gate = Gate()
    gate.open.set()
    for _ in range(3):
        s, how, _ = searches.ask("a" * 16, "q", "none", gate)
        assert how == "queued" and searches.wait(s, 10)
    assert gate.calls == 3


def test_a_full_queue_refuses_with_a_retry_time(make):
    searches, clock = make(workers=1, queue_size=1)
    gate = Gate()
    running, _, _ = searches.ask("1" * 16, "q1", "none", gate)
    wait_until(lambda: running.state == "running")
    queued, _, _ = searches.ask("2" * 16, "q2", "none", gate)
    with pytest.raises(Busy) as busy:
        searches.ask("3" * 16, "q3", "none", gate)
    assert 1 <= busy.value.retry_after <= 60 and "search_queue is full" in str(busy.value)
    assert searches.ask("2" * 16, "q2", "none", gate) == (queued, "shared", "queued")    # joining is never refused
    assert searches.counts["rejected"] == 1 and searches.get("3" * 16) is None
    assert searches.metrics()["searches_now"] == {"queued": 1, "running": 1}
    gate.open.set()
    assert searches.wait(queued, 10) and queued.state == "done"


@pytest.mark.parametrize("error, status, message", [
    (DatabaseError("canceling statement due to statement timeout"), 503, "canceling statement due to statement timeout"),
    (KeyError("x"), 500, "internal error: KeyError"),
])
def test_a_failure_is_the_searches_state_and_the_worker_goes_on(make, error, status, message):
    searches, clock = make()

    def fail():
        raise error

    s, _, _ = searches.ask("a" * 16, "q", "none", fail)
    assert searches.wait(s, 10)
    assert states(s) == ["queued", "running", "failed"] and (s.status, s.error) == (status, message)
    assert s.to_status()["error"] == message and searches.counts["failed"] == 1
    ok, _, _ = searches.ask("b" * 16, "q2", "none", lambda: result(1))
    assert searches.wait(ok, 10) and ok.state == "done"
    # A failure is never served as a cached answer: asked again, it runs again.
    again, how, _ = searches.ask("a" * 16, "q", "none", lambda: result(2))
    assert how == "queued" and searches.wait(again, 10) and again.state == "done" and again.rows == 2


def test_a_result_larger_than_the_spool_fails_its_search(make):
    searches, clock = make(spool_bytes=2000)
    s, _, _ = searches.ask("a" * 16, "q", "none", lambda: result(100, width=100))
    assert searches.wait(s, 10) and s.state == "failed" and s.status == 500
    assert "larger than the whole result spool (result_spool_bytes = 2000)" in s.error
    assert searches.spool.stats() == {"files": 0, "bytes": 0}


def test_results_expire_and_their_status_stays(make):
    searches, clock = make(ttl=600)
    s, _, _ = searches.ask("a" * 16, "q", "none", lambda: result(1))
    assert searches.wait(s, 10)
    clock.t += 599
    assert searches.get("a" * 16).state == "done"
    clock.t += 1
    assert searches.get("a" * 16).state == "expired"
    st = s.to_status()
    assert st["expired_by"] == "result_ttl" and states(s)[-2:] == ["done", "expired"] and st["rows"] == 1
    assert searches.result(s) is None and searches.counts["expired"] == 1
    assert searches.spool.stats()["files"] == 0


def test_the_spool_cap_evicts_the_oldest_results(make):
    searches, clock = make(spool_bytes=3000)
    done = []
    for i in range(4):
        s, _, _ = searches.ask("%016x" % i, "q%d" % i, "none", lambda: result(10, width=100))    # ~1.1 kB each
        assert searches.wait(s, 10) and s.state == "done"
        done.append(s)
        clock.t += 1
    assert [s.state for s in done] == ["expired", "expired", "done", "done"]
    assert done[0].expired_by == "result_spool_bytes" and searches.counts["evicted"] == 2
    assert searches.spool.stats()["bytes"] <= 3000 and searches.result(done[0]) is None
    assert searches.metrics()["searches"]["evicted"] == 2


def test_only_the_last_known_ids_are_kept(make):
    searches, clock = make(keep=2)
    for i in range(3):
        s, _, _ = searches.ask("%016x" % i, "q%d" % i, "none", lambda: result(1))
        assert searches.wait(s, 10)
    assert searches.ids() == ["%016x" % 2, "%016x" % 1] and searches.get("%016x" % 0) is None
    assert searches.spool.stats()["files"] == 2         # the forgotten id's result went with it


def test_results_come_from_the_memory_cache_when_there(make):
    memo = Memo(10, 1 << 20)
    searches, clock = make(memo=memo)
    s, _, _ = searches.ask("a" * 16, "q", "none", lambda: result(2))
    assert searches.wait(s, 10)
    searches.spool.remove(s.file)           # not read from disk while the cache holds it
    assert searches.result(s)["count"] == 2
    searches.ask("a" * 16, "q", "none", lambda: result(2))
    assert memo.stats()["executions"] == 1 and memo.stats()["hits"] == 1


def test_close_stops_the_workers_and_empties_the_spool(tmp_path):
    spool = ResultSpool(None, 1 << 20, 600)
    searches = Searches(spool, 2, 4)
    s, _, _ = searches.ask("a" * 16, "q", "none", lambda: result(1))
    assert searches.wait(s, 10)
    directory = spool.directory
    searches.close()
    assert all(not t.is_alive() for t in searches._threads)
    assert not os.path.exists(directory)
