"""SnifferThread: socket replacement without a gap or a duplicate, retirement, drop counting."""
import queue
import threading
import time

from myason.agent.export import DONE
from myason.agent.lanes import SnifferThread


class FakeSource:
    """A LiveSource stand-in: batches handed out in order; read_batch waits briefly when empty."""

    def __init__(self, name="eth0"):
        self.ifname = name
        self.filter_expression = ""
        self.batches = queue.Queue()
        self.closed = False
        self.stats = {"frames": 0, "bytes": 0}

    def read_batch(self, stop_event=None):
        """Next batch, or [] after a short wait."""
        assert not self.closed, "read after close"
        try:
            return self.batches.get(timeout=0 if stop_event is not None and stop_event.is_set() else 0.02)
        except queue.Empty:
            return []

    def kernel_stats(self):
        """No kernel here."""
        return {"kernel_packets": 0, "kernel_drops": 0}

    def close(self):
        """Remember the close."""
        self.closed = True


def frames(ts0, n, tag=b"f"):
    """n distinct (timestamp, frame) items."""
    return [(ts0 + i * 1e-6, tag + b"%04d" % i + b"\x00" * 60) for i in range(n)]


def collect(out, until, deadline=5.0):
    """Batches from the outbox until until(items) holds or DONE arrives."""
    got, end = [], time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            batch = out.get(timeout=0.05)
        except queue.Empty:
            continue
        if batch is DONE:
            return got, True
        got.extend(batch)
        if until(got):
            return got, False
    return got, False


def test_replaced_source_counts_overlapping_frames_once():
    old, new = FakeSource(), FakeSource()
    out, stop = queue.Queue(), threading.Event()
    t = SnifferThread(old, out, stop)
    before = frames(100.0, 5, b"a")
    old.batches.put(before)
    t.start()
    got, _ = collect(out, lambda g: len(g) == 5)
    assert got == before
    t.expect_switch()
    # The new socket exists from here: frames reach both sockets until the old one is closed.
    overlap = frames(101.0, 6, b"b")
    old.batches.put(overlap[:4])
    new.batches.put(overlap[:4])
    t.replace_source(new)
    deadline = time.monotonic() + 5
    while t.source is not new and time.monotonic() < deadline:   # read the first part, switched
        time.sleep(0.01)
    old.batches.put(overlap[4:])   # too late for the closed old socket: only the new one has them
    new.batches.put(overlap[4:])
    after = frames(102.0, 3, b"c")
    new.batches.put(after)
    got, _ = collect(out, lambda g: len(g) >= 9)
    stop.set()
    rest, done = collect(out, lambda g: False, 2)
    t.join(5)
    assert done and not t.is_alive() and t.error is None
    assert got + rest == overlap + after
    assert old.closed and t.retired_sources == [old] and t.source is new
    assert t.overlap_duplicates == 4


def test_cancelled_switch_keeps_the_old_source():
    old = FakeSource()
    out, stop = queue.Queue(), threading.Event()
    t = SnifferThread(old, out, stop)
    t.expect_switch()
    t.cancel_switch()
    t.start()
    batch = frames(1.0, 3)
    old.batches.put(batch)
    got, _ = collect(out, lambda g: len(g) == 3)
    stop.set()
    t.join(5)
    assert got == batch and not old.closed and t.sources() == [old]


def test_retire_ends_one_lane_with_done_after_draining():
    src = FakeSource()
    out, stop = queue.Queue(), threading.Event()
    t = SnifferThread(src, out, stop)
    t.start()
    t.retire.set()
    src.batches.put(frames(5.0, 2))
    got, done = collect(out, lambda g: False)
    t.join(5)
    assert done and not stop.is_set() and len(got) <= 2


def test_full_queue_drops_and_counts():
    src = FakeSource()
    out, stop = queue.Queue(1), threading.Event()
    out.put([("x", b"")])
    t = SnifferThread(src, out, stop)
    src.batches.put(frames(1.0, 7))
    t.start()
    deadline = time.monotonic() + 5
    while t.dropped_packets < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t.dropped_batches == 1 and t.dropped_packets == 7
    stop.set()
    out.get()
    t.join(5)
