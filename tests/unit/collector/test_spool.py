"""The filer-protocol spool: atomic hand-over, claim, commit, failure, recovery, size cap."""
import os
import threading
import time

import pytest

from myason.collector.spool import Spool


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


def test_full_at_the_cap_and_wait_room_wakes_when_the_writer_deletes(tmp_path):
    s = Spool(tmp_path, max_bytes=10)
    s.put(b"12345678")
    assert not s.full()
    s.put(b"123")                   # a batch is never refused: the cap holds the intake back
    assert s.full() and s.depth() == (2, 0, 0)
    assert not s.wait_room(0.05)

    def writer():
        time.sleep(0.2)
        ((name, _),) = s.claim()
        s.done(name)

    t = threading.Thread(target=writer)
    t.start()
    t0 = time.monotonic()
    assert s.wait_room(5)
    assert time.monotonic() - t0 >= 0.1
    t.join()


def test_staged_batches_are_invisible_until_published_and_discard_leaves_nothing(tmp_path):
    s = Spool(tmp_path)
    s.stage("b1.batch", b"one")
    s.stage("b2.batch", b"two")
    assert s.depth() == (0, 0, 0) and s.bytes == 0 and s.claim(5) == []
    s.publish("b1.batch")
    assert s.depth() == (1, 0, 0) and s.bytes == 3
    s.discard("b2.batch")
    assert os.listdir(tmp_path / "tmp") == []
    assert not s.publish_staged("b2.batch") and not s.publish_staged("b1.batch")


def test_stage_failure_leaves_no_partial_file(tmp_path):
    s = Spool(tmp_path)
    with pytest.raises(TypeError):
        s.stage("x.batch", object())
    assert os.listdir(tmp_path / "tmp") == []


def test_discard_staged_by_a_dead_process_keeps_the_others(tmp_path):
    from myason.collector.spool import batch_name
    s = Spool(tmp_path)
    mine = batch_name()
    s.stage(mine, b"mine")
    s.stage("%020d-%d-%08d.batch" % (1, 999999, 0), b"dead")
    assert s.discard_staged_by(999999) == 1
    assert os.listdir(tmp_path / "tmp") == [mine]


def test_files_and_directories_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        s = Spool(tmp_path / "spool" / "s")
        s.put(b"flows")
    finally:
        os.umask(old)
    # spool_dir too, when the spool makes it (os.makedirs gave it the umask's mode).
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "spool" / "s").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "spool" / "s" / "incoming").stat().st_mode & 0o777 == 0o700
    (f,) = (tmp_path / "spool" / "s" / "incoming").iterdir()
    assert f.stat().st_mode & 0o777 == 0o600


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
