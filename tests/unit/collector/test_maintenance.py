"""The collector's maintenance thread: its own connection, slices, lag, errors retried."""
import sqlite3
import threading
import time

from myason.collector.maintenance import MaintenanceThread
from myason.store.sqlite import SqliteWriter
from tests.support.rollups import ref_totals, rollup_rows


def wait_until(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def count(db, table):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM %s" % table).fetchone()[0]


def test_finalises_the_top_lists_on_its_own_connection_and_reports_no_lag(tmp_path):
    db = str(tmp_path / "flows.db")
    now = time.time()
    rows = rollup_rows(400, t0=now - 3600, span=1800, seed=41)
    w = SqliteWriter(path=db, rollup_top=5)
    w.open()
    w.write("a", rows)
    assert count(db, "rollup_cand") > 0 and count(db, "rollup_top_1m") == 0
    stop = threading.Event()
    t = MaintenanceThread("sqlite", SqliteWriter(path=db, rollup_top=5, maintain_interval=0.2), stop)
    t.start()
    try:
        assert wait_until(lambda: t.runs >= 1 and count(db, "rollup_cand") == 0)
        snap = t.snapshot()
        assert snap["rollup_lag_seconds"] == 0 and snap["errors"] == 0 and snap["connected"] == 1
        assert count(db, "rollup_top_1m") > 0 and count(db, "batches") == 1
        # The writer's connection kept working beside it.
        more = rollup_rows(50, t0=now - 600, span=60, seed=42)
        w.write("b", more)
        with sqlite3.connect(db) as conn:
            got = conn.execute("SELECT sum(flows) FROM rollup_1d").fetchone()[0]
        assert got == 450 == sum(v[2] for v in ref_totals(rows + more, "1d").values())
    finally:
        stop.set()
        t.join(10)
        w.close()
    assert not t.is_alive() and t.error is None


def test_slices_leave_the_rest_for_later_and_say_how_far_behind(tmp_path):
    db = str(tmp_path / "flows.db")
    now = time.time()
    w = SqliteWriter(path=db, rollup_top=5)
    w.open()
    w.write("a", rollup_rows(3000, t0=now - 6 * 3600, span=4 * 3600, seed=43))
    w.close()
    m = SqliteWriter(path=db, rollup_top=5)
    m.open()
    first = m.maintain(now, wait=False, deadline=time.monotonic())      # one step only
    assert first["more"] and first["lag"] > 3600 and first["tops"]["1m"] == 1
    rest = m.maintain(now, wait=False)
    assert not rest["more"] and rest["lag"] == 0 and rest["tops"]["1m"] > 200
    m.close()


def test_errors_are_counted_and_retried_until_the_store_works(tmp_path):
    path = tmp_path / "later.db"
    path.mkdir()                                   # a directory: cannot be opened as a database
    stop = threading.Event()
    t = MaintenanceThread("sqlite", SqliteWriter(path=str(path), maintain_interval=0.2), stop)
    import myason.collector.maintenance as maintenance
    old = maintenance.BACKOFF
    maintenance.BACKOFF = (0.05, 0.1)
    try:
        t.start()
        assert wait_until(lambda: t.errors >= 2)
        assert t.is_alive() and t.snapshot()["connected"] == 0
        path.rmdir()
        assert wait_until(lambda: t.connected and t.runs >= 1)
    finally:
        maintenance.BACKOFF = old
        stop.set()
        t.join(10)
    assert t.error is None
