"""A full spool under `spool_policy: block`: the loss is the same for every store, and it is the gaps."""
import sqlite3
from collections import Counter

from tests.support.services import wait_until
from tests.support.collector import scrape, spool_files, sqlite_rows
from tests.support.streams import ROWS_PER_DATAGRAM, Stream, collector, row_key


def test_a_writer_behind_blocks_the_intake_for_all_and_loses_nothing_for_one_only(tmp_path):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    # A small cap, queue and receive buffer: writer a's spool fills fast, then the processor
    # holds its intake, the queue fills, the listener waits and the kernel drops the rest.
    c = collector(tmp_path, [{"type": "sqlite", "name": "a", "path": str(a), "busy_timeout": 0.2},
                             {"type": "sqlite", "name": "b", "path": str(b)}],
                  spool_max_bytes=1 << 20, spool_policy="block", packet_queue=4, rcvbuf=65536, batch_rows=200)
    s = Stream(c)
    with c:
        s.send(10)
        wait_until(lambda: len(sqlite_rows(a)) == len(sqlite_rows(b)) == 10 * ROWS_PER_DATAGRAM, timeout=30)
        lock = sqlite3.connect(str(a), isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")            # writer a stops storing; its spool grows
        try:
            s.send(3000)
            metrics = wait_until(lambda: (lambda m: m.get(("myason_processors_blocked", None)) == 1 and m)(
                scrape(c.metrics_port)), timeout=60)
            assert metrics[("myason_spool_bytes", "a")] >= 1 << 20
            # Writer b is not starved meanwhile: it stored what was accepted before the cap.
            assert len(sqlite_rows(b)) > 10 * ROWS_PER_DATAGRAM
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_until(lambda: not spool_files(c, "incoming") and not spool_files(c, "pending"), timeout=60)
        s.send(20, metrics_port=c.metrics_port)     # reveals the gaps at the end of the stream
        wait_until(lambda: len(sqlite_rows(a)) == len(sqlite_rows(b)) and
                   any(r["src_port"] == s.rows[s.seq - 1][0][2] for r in sqlite_rows(b)), timeout=60)
        assert c.stop() == 0, c.log()
    summary = c.summary()
    in_a, in_b = Counter(row_key(r) for r in sqlite_rows(a)), Counter(row_key(r) for r in sqlite_rows(b))
    assert in_a == in_b and max(in_a.values()) == 1, "the stores disagree"
    seq_of = s.seq_of()
    per_seq = Counter(seq_of[k] for k in in_a)
    assert set(per_seq.values()) == {ROWS_PER_DATAGRAM}
    missing = [q for q in range(s.seq) if q not in per_seq]
    # Lost on the way in (kernel buffer), never after acceptance, and reported exactly.
    assert missing and summary["kernel_drops"] > 0 and summary["spool_dropped"] == 0
    assert summary["agents"][s.agent]["gaps"] == len(missing)
    assert summary["intake_blocked_seconds"] > 0
    assert "not stored for this writer" not in c.log()
