"""The processor's spool policies and disk errors: loss is never specific to one writer."""
import os
import queue
import threading
import time

from myason.collector import journal, processor
from myason.collector.datagram import DatagramProcessor
from myason.collector.spool import Spool
from myason.store.base import decode_batch
from tests.support.datagrams import ADDR, NOW, dgram, keystore


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def start(tmp_path, policy, max_bytes=1 << 20, stopping=None, fill=False):
    spools = [Spool(tmp_path / "spool" / name, max_bytes=max_bytes, fsync=False) for name in ("a", "b")]
    if fill:
        spools[0].put(b"x" * max_bytes)       # writer a is behind: its spool is at the cap
    inbox = queue.Queue(4)
    proc = DatagramProcessor(keystore(), ttl=5.0, window=4096, clock=lambda: NOW)
    t = processor.ProcessorThread("processor-0", proc, inbox, spools, 1000, 0.05,
                                  journal.sequence_file(str(tmp_path / "spool"), 0), policy=policy,
                                  stopping=stopping)
    t.start()
    return t, inbox, spools


def drain(spool):
    rows = []
    for name, data in spool.claim(1000):
        rows.extend(decode_batch(data))
        spool.done(name)
    return rows


def stored_seqs(rows):
    # Each test datagram carries one row whose source address encodes its sequence number.
    return sorted(int(r[0].split(".")[3]) + 256 * int(r[0].split(".")[2]) for r in rows)


def test_block_holds_the_intake_until_every_spool_has_room_then_loses_nothing(tmp_path):
    t, inbox, (a, b) = start(tmp_path, "block", max_bytes=1 << 20, fill=True)
    for s in range(3):
        inbox.put([(dgram(s), ADDR, NOW)], timeout=5)
    assert wait_until(lambda: t.blocked)
    time.sleep(0.3)
    assert inbox.qsize() == 3 and t.rows == 0          # nothing taken in, nothing refused
    assert b.depth() == (0, 0, 0)
    blocked_put = threading.Thread(target=lambda: [inbox.put([(dgram(s), ADDR, NOW)]) for s in range(3, 8)])
    blocked_put.start()                     # the listener's side: it waits on the full queue
    assert wait_until(lambda: inbox.full())
    (filler, _), = a.claim()                # the writer catches up
    a.done(filler)
    assert wait_until(lambda: t.rows == 8)
    blocked_put.join(5)
    inbox.put(processor.DONE)
    t.join(10)
    assert t.error is None and t.spool_dropped == 0 and t.blocked_seconds > 0.2
    assert stored_seqs(drain(a)) == stored_seqs(drain(b)) == list(range(8))


def test_reject_drops_undecoded_datagrams_for_every_store_alike(tmp_path):
    t, inbox, (a, b) = start(tmp_path, "reject", max_bytes=1 << 20)
    inbox.put([(dgram(0), ADDR, NOW)])
    assert wait_until(lambda: t.rows == 1)
    stored_a = drain(a)
    a.put(b"x" * (1 << 20))
    inbox.put([(dgram(s), ADDR, NOW) for s in (1, 2, 3)])
    assert wait_until(lambda: t.spool_dropped == 3)
    (filler, _), = a.claim()
    a.done(filler)
    inbox.put([(dgram(4), ADDR, NOW)])
    inbox.put(processor.DONE)
    t.join(10)
    assert t.error is None
    assert stored_seqs(stored_a + drain(a)) == stored_seqs(drain(b)) == [0, 4]
    # The dropped datagrams were never decoded: the agent's sequence shows them as gaps.
    assert t.proc.agents["edge-01"].gaps == 3


def test_a_full_disk_holds_the_batch_and_the_intake_and_resumes_when_space_returns(tmp_path):
    t, inbox, (a, b) = start(tmp_path, "block")
    inbox.put([(dgram(0), ADDR, NOW)])
    assert wait_until(lambda: t.rows == 1)
    tmp_b = os.path.join(b.path, "tmp")
    os.rmdir(tmp_b)
    open(tmp_b, "wb").close()               # writing into b now fails with a real OSError
    inbox.put([(dgram(s), ADDR, NOW) for s in (1, 2)])
    assert wait_until(lambda: t.commit_errors >= 2 and t.stalled)
    inbox.put([(dgram(3), ADDR, NOW)])
    time.sleep(0.2)
    assert t.rows == 1 and inbox.qsize() == 1       # the failing batch and the intake are held
    assert t.snapshot()["stalled"] == 1
    assert os.listdir(os.path.join(a.path, "tmp")) == []
    os.unlink(tmp_b)
    os.mkdir(tmp_b)
    assert wait_until(lambda: t.rows == 4, timeout=15)
    inbox.put(processor.DONE)
    t.join(10)
    assert t.error is None and not t.stalled
    assert stored_seqs(drain(a)) == stored_seqs(drain(b)) == [0, 1, 2, 3]
    agents, _ = journal.read_state(journal.sequence_file(str(tmp_path / "spool"), 0))
    assert agents["edge-01"]["top"] == 3


def test_stopping_drains_the_queue_past_the_cap(tmp_path):
    stopping = threading.Event()
    t, inbox, (a, b) = start(tmp_path, "block", stopping=stopping, fill=True)
    inbox.put([(dgram(s), ADDR, NOW) for s in range(5)])
    assert wait_until(lambda: t.blocked)
    stopping.set()                          # SIGTERM: what was received is still accepted
    inbox.put(processor.DONE)
    t.join(10)
    assert t.error is None and t.rows == 5
    assert stored_seqs(drain(b)) == list(range(5))
