"""The filer-protocol spool: atomic hand-over, claim, commit, failure, recovery, size cap."""
import os
import threading
import time

import pytest

from myason.collector.spool import Spool, SpoolFull


def test_put_claim_done_round_trip_in_order(tmp_path):
    s = Spool(tmp_path)
    names = [s.put(b"batch-%d" % i) for i in range(5)]
    assert s.depth() == (5, 0, 0)
    got = s.claim(limit=3)
    assert [n for n, _ in got] == names[:3]
    assert [d for _, d in got] == [b"batch-0", b"batch-1", b"batch-2"]
    assert s.depth() == (2, 3, 0)
    for n, _ in got:
        s.done(n)
    assert s.depth() == (2, 0, 0)
    assert s.bytes == len(b"batch-3") + len(b"batch-4")


def test_nothing_visible_in_incoming_before_complete(tmp_path):
    s = Spool(tmp_path)
    s.put(b"x" * 100000)
    (name,) = os.listdir(tmp_path / "incoming")
    assert (tmp_path / "incoming" / name).stat().st_size == 100000
    assert os.listdir(tmp_path / "tmp") == []


def test_fail_moves_to_errors_and_frees_space(tmp_path):
    s = Spool(tmp_path)
    s.put(b"bad")
    ((name, _),) = s.claim()
    s.fail(name)
    assert s.depth() == (0, 0, 1) and s.bytes == 0
    assert (tmp_path / "errors" / name).read_bytes() == b"bad"


def test_recover_requeues_claimed_batches_and_removes_partial_ones(tmp_path):
    s = Spool(tmp_path)
    s.put(b"a")
    s.put(b"b")
    s.claim(limit=2)
    (tmp_path / "tmp" / "partial").write_bytes(b"half")
    again = Spool(tmp_path)               # a new process after a crash
    assert again.bytes == 2
    assert again.recover() == 2
    assert again.depth() == (2, 0, 0)
    assert os.listdir(tmp_path / "tmp") == []
    assert [d for _, d in again.claim(limit=5)] == [b"a", b"b"]


def test_claim_by_two_writers_never_hands_out_a_batch_twice(tmp_path):
    a, b = Spool(tmp_path), Spool(tmp_path)
    for i in range(200):
        a.put(b"%d" % i)
    seen = []
    lock = threading.Lock()

    def worker(sp):
        while True:
            got = sp.claim(limit=7)
            if not got:
                return
            with lock:
                seen.extend(d for _, d in got)

    threads = [threading.Thread(target=worker, args=(sp,)) for sp in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(b"%d" % i for i in range(200))


def test_reject_policy_counts_when_full(tmp_path):
    s = Spool(tmp_path, max_bytes=10, policy="reject")
    s.put(b"12345678")
    with pytest.raises(SpoolFull):
        s.put(b"123")
    assert s.rejected == 1 and s.depth() == (1, 0, 0)


def test_block_policy_waits_for_the_writer(tmp_path):
    s = Spool(tmp_path, max_bytes=10, policy="block")
    s.put(b"12345678")

    def writer():
        time.sleep(0.2)
        ((name, _),) = s.claim()
        s.done(name)

    t = threading.Thread(target=writer)
    t.start()
    t0 = time.monotonic()
    s.put(b"123", timeout=5)
    assert time.monotonic() - t0 >= 0.1
    t.join()
    with pytest.raises(SpoolFull):
        s.put(b"12345678", timeout=0.1)
    assert s.rejected == 1


def test_bad_policy():
    with pytest.raises(ValueError):
        Spool("/nonexistent-never-created", policy="drop")


def test_shared_spool_sees_other_processes_batches_and_oldest_age(tmp_path):
    from myason.collector.spool import Spool
    a = Spool(tmp_path / "s", max_bytes=1 << 20, fsync=False, shared=True)
    b = Spool(tmp_path / "s", max_bytes=1 << 20, fsync=False, shared=True)
    assert a.oldest_age() == 0.0
    b.put(b"x" * 1000)
    a._scanned -= a.RESCAN          # as if a second had passed
    assert a.current_bytes() == 1000
    assert 0.0 <= a.oldest_age() < 60
    assert a.oldest_age(now=time.time() + 100) >= 100
    (name, _), = a.claim()
    a.done(name)
    b._scanned -= b.RESCAN
    assert b.current_bytes() == 0 and b.oldest_age() == 0.0
