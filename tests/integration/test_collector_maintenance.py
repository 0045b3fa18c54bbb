"""Rollup maintenance beside a running collector: it never holds up ingest, and says when it lags."""
import pytest

from tests.support.services import wait_until
from tests.support.collector import scrape
from tests.support.stores import pg_reset, pg_rows
from tests.support.streams import ROWS_PER_DATAGRAM, Stream, collector

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.root


def metric(c, name):
    return scrape(c.metrics_port).get((name, "postgresql"), 0)


def lists_of_1m(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM rollup_top_1m").fetchone()[0]


def test_a_maintenance_held_up_does_not_hold_up_ingest(tmp_path, servers):
    """A lock holds the maintenance's statement for as long as the test likes; flows keep coming in."""
    dsn = servers.pg_dsn
    pg_reset(dsn)
    c = collector(tmp_path, [{"type": "postgresql", "dsn": dsn, "maintain_interval": 0.5}])
    s = Stream(c)        # flows started about two minutes ago: their minutes are due at once
    with c:
        s.send(20)
        wait_until(lambda: len(pg_rows(dsn)) == 20 * ROWS_PER_DATAGRAM, timeout=30)
        wait_until(lambda: lists_of_1m(dsn) > 0, timeout=30)
        with psycopg.connect(dsn) as other:
            # What a long maintenance statement looks like to everyone else: the 1m lists locked.
            other.execute("LOCK TABLE rollup_top_1m IN ACCESS EXCLUSIVE MODE")
            s.send(500, metrics_port=c.metrics_port)
            # Every flow is stored while the maintenance waits on the lock...
            wait_until(lambda: len(pg_rows(dsn)) == 520 * ROWS_PER_DATAGRAM, timeout=60, interval=0.2)
            # ...and the maintenance says it is stuck.
            wait_until(lambda: metric(c, "myason_maintenance_running_seconds") >= 2, timeout=30)
            assert metric(c, "myason_spool_waiting") == 0
            other.rollback()
        # Released: it catches up, nothing left behind.
        wait_until(lambda: metric(c, "myason_maintenance_running_seconds") == 0
                   and metric(c, "myason_maintenance_rollup_lag_seconds") == 0, timeout=60)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM rollup_cand WHERE bucket < now() - interval '2 minutes'"
                                ).fetchone()[0] == 0
            totals = conn.execute("SELECT sum(flows) FROM rollup_1d").fetchone()[0]
        assert totals == 520 * ROWS_PER_DATAGRAM
        assert c.stop() == 0, c.log()
    summary = c.summary()
    assert summary["maintenance"]["postgresql"]["errors"] == 0, c.log()
