"""Rollups in a real PostgreSQL 15: same results as a GROUP BY in Python, concurrency, partition drops."""
import threading

import pytest

from myason.store import rollup, rollup_maintain
from myason.store.postgresql import PostgresWriter
from tests.support.rollups import (I, RES, SERVICE_CASES, T0, RefRollups, assert_bounded, expected_tops,
                                   ref_candidates, ref_tops, ref_totals, rollup_rows, written)
from tests.support.stores import pg_query

psycopg = pytest.importorskip("psycopg")

DAY = 86400


def rows_ms(n, **kw):
    """rollup_rows with times on whole milliseconds, so microsecond rounding cannot move a bucket."""
    rows = rollup_rows(n, **kw)
    for r in rows:
        r[I["first"]] = round(r[I["first"]], 3)
        r[I["last"]] = r[I["first"]] + 1.0
    return rows


def pg_totals(dsn, res):
    return {(int(r[0]),) + tuple(r[1:5]): tuple(r[5:]) for r in pg_query(
        dsn, "SELECT extract(epoch FROM bucket)::bigint, agent, if_name, proto, direction, bytes, packets, flows"
             " FROM rollup_%s" % res)}


def pg_tops(dsn, res):
    return {(int(r[0]),) + tuple(r[1:4]): tuple(r[4:]) for r in pg_query(
        dsn, "SELECT extract(epoch FROM bucket)::bigint, agent, dimension, key, bytes, packets, flows, rank"
             " FROM rollup_top_%s" % res)}


def assert_rollups(dsn, rows, top, ref=None):
    """Totals exact; tops as the documented method makes them (ref: the batches as written, else
    all rows in one batch) and within the bound of the truth."""
    ref = ref or written([rows], top)
    for res in RES:
        assert pg_totals(dsn, res) == ref_totals(rows, res), res
        assert pg_tops(dsn, res) == expected_tops(rows, res, top, ref), res
    assert_bounded({res: pg_tops(dsn, res) for res in RES}, rows, top, ref.e1m)


def partitions(dsn):
    return sorted(r[0] for r in pg_query(dsn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                                              " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname LIKE 'rollup%'"))


def open_writer(dsn, **options):
    w = PostgresWriter(dsn=dsn, **{"maintain_interval": 0, "rollup_top": 5, **options})
    w.clock = lambda: T0
    w.open()
    return w


def test_rollups_match_a_group_by_in_python(pg):
    w = open_writer(pg)
    rows = rows_ms(3000, span=2 * DAY + 3 * 3600)
    batches = [rows[i:i + 500] for i in range(0, len(rows), 500)]
    for i, b in enumerate(batches):
        w.write("b%d" % i, b)
    for res in RES:
        assert pg_totals(pg, res) == ref_totals(rows, res), res     # as soon as written
    s = w.maintain(now=T0 + 5 * DAY)
    assert s["tops"]["1d"] == 3 and s["lag"] == 0
    assert_rollups(pg, rows, 5, written(batches, 5))
    assert "rollup_1m_p20231117" in partitions(pg) and "rollup_top_1d_p2023" in partitions(pg)
    assert pg_query(pg, "SELECT count(*) FROM rollup_cand") == [(0,)]
    # Twice gives the same; marking everything dirty rebuilds from raw flows: exact lists.
    s = w.maintain(now=T0 + 5 * DAY)
    assert s["dirty"] == 0 and s["tops"]["1m"] == 0
    pg_query(pg, "INSERT INTO rollup_dirty (bucket) SELECT DISTINCT bucket FROM rollup_1m")
    w.maintain(now=T0 + 5 * DAY)
    assert_rollups(pg, rows, 5)
    w.close()


def test_coarse_tops_are_exact_when_the_finer_lists_hold_every_key(pg):
    w = open_writer(pg, rollup_top=1000)
    rows = rows_ms(2000, span=DAY + 3600)
    w.write("a", rows)
    w.maintain(now=T0 + 3 * DAY)
    w.close()
    for res in RES:
        assert pg_tops(pg, res) == ref_tops(rows, res, 1000), res


def test_late_flows_and_batches_between_runs(pg):
    w, ref = open_writer(pg), RefRollups(5, "postgresql")
    rows = rows_ms(500, span=3600, seed=2)
    w.write("a", rows)
    ref.write(rows)
    w.maintain(now=T0 + 3000)
    ref.maintain(T0 + 3000)
    assert pg_totals(pg, "1h") == ref_totals(rows, "1h") and pg_tops(pg, "1h") == {}
    assert pg_tops(pg, "1m") == ref.lists
    late = rows_ms(200, span=300, seed=3)
    more = rows_ms(200, t0=T0 + 3600, span=600, seed=4)
    for batch in (late, more):
        w.write("late" if batch is late else "more", batch)
        ref.write(batch)
    w.maintain(now=T0 + 4200)
    ref.maintain(T0 + 4200)
    for res in RES:
        assert pg_totals(pg, res) == ref_totals(rows + late + more, res), res
    assert pg_tops(pg, "1m") == ref.lists
    w.maintain(now=T0 + 2 * DAY)
    ref.maintain(T0 + 2 * DAY)
    assert_rollups(pg, rows + late + more, 5, ref)
    w.close()


def test_two_maintainers_and_two_writers_at_once(pg):
    writers = [open_writer(pg), open_writer(pg)]
    batches = [rows_ms(150, t0=T0 + (k % 7) * 600, span=900, seed=100 + k) for k in range(40)]
    done = threading.Event()
    errors = []

    def maintainer():
        try:
            with psycopg.connect(pg) as conn:
                while not done.is_set():
                    rollup_maintain.maintain(conn, now=T0 + 2 * DAY, top=5)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    def write(w, k0):
        try:
            for k in range(k0, len(batches), 2):
                w.write("c%d" % k, batches[k])
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    maintainers = [threading.Thread(target=maintainer) for _ in range(2)]
    for t in maintainers:
        t.start()
    try:
        feeders = [threading.Thread(target=write, args=(w, k)) for k, w in enumerate(writers)]
        for t in feeders:
            t.start()
        for t in feeders:
            t.join(60)
    finally:
        done.set()
        for t in maintainers:
            t.join(60)
    assert not errors and not any(t.is_alive() for t in maintainers + feeders)
    writers[0].maintain(now=T0 + 2 * DAY)
    rows = [r for rows in batches for r in rows]
    for res in RES:
        assert pg_totals(pg, res) == ref_totals(rows, res), res
    # Which candidates met which list depends on the interleaving; whatever it was, no batch is
    # counted twice (every listed figure at most the truth) and no list is longer than the top.
    assert pg_query(pg, "SELECT count(*) FROM rollup_cand") == [(0,)]
    for res in RES:
        true = ref_tops(rows, res, 10 ** 9)
        lists = pg_tops(pg, res)
        assert lists and max(v[3] for v in lists.values()) <= 5
        for k, v in lists.items():
            assert all(a <= b for a, b in zip(v[:3], true[k][:3])), (res, k)
    for w in writers:
        w.close()


def test_a_batch_committing_after_a_later_one_is_not_lost(pg):
    """Writer A's batch commits after B's and after a maintenance run made the lists of its minutes.

    Different agents: writers adding to the same totals rows wait for each other's commit (row
    locks, always taken in one order, so never a deadlock)."""
    a, b = open_writer(pg), open_writer(pg)
    at_commit, go = threading.Event(), threading.Event()

    def slow_commit(conn):
        at_commit.set()
        go.wait(30)
        conn.commit()

    a._commit = slow_commit
    rows_a, rows_b = rows_ms(200, span=600, seed=11), rows_ms(200, span=600, seed=12, agents=("edge-3",))
    t = threading.Thread(target=a.write, args=("a", rows_a))
    t.start()
    assert at_commit.wait(30)
    b.write("b", rows_b)
    b.maintain(now=T0 + 2 * DAY)
    assert pg_totals(pg, "1m") == ref_totals(rows_b, "1m")
    go.set()
    t.join(30)
    b.maintain(now=T0 + 2 * DAY)
    ref = RefRollups(5, "postgresql")
    ref.write(rows_b)
    ref.maintain(T0 + 2 * DAY)
    ref.write(rows_a)
    ref.maintain(T0 + 2 * DAY)
    assert_rollups(pg, rows_a + rows_b, 5, ref)
    a.close()
    b.close()


def test_a_busy_maintainer_is_skipped_not_waited_for(pg):
    w = open_writer(pg)
    w.write("a", rows_ms(50))
    with psycopg.connect(pg, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (rollup.PG_LOCK,))
        s = w.maintain(now=T0 + DAY, wait=False)
        assert s["busy"] and s["tops"]["1m"] == 0
        other.execute("SELECT pg_advisory_unlock(%s)", (rollup.PG_LOCK,))
    s = w.maintain(now=T0 + DAY, wait=False)
    assert not s["busy"] and s["tops"]["1m"] > 0
    w.close()


def test_retention_drops_rollup_partitions(pg):
    w = open_writer(pg, retention={"raw": "2d", "1m": "3d", "15m": "40d", "1h": "1y", "1d": 0})
    rows = rows_ms(400, span=6 * DAY, seed=7)          # 2023-11-15 .. 2023-11-20
    w.write("a", rows)
    w.maintain(now=T0 + 7 * DAY)                       # 2023-11-22: raw kept from 11-20
    # Totals were added as the flows came; 1m retention (from 11-19) deleted the older minutes.
    # Top lists: only for minutes after the horizon (raw flows from 11-20), older candidates dropped.
    kept = [r for r in rows if r[I["first"]] >= T0 + 5 * DAY]
    assert pg_totals(pg, "1m") == ref_totals([r for r in rows if r[I["first"]] >= T0 + 4 * DAY], "1m")
    assert pg_totals(pg, "1d") == ref_totals(rows, "1d")
    parts = partitions(pg)
    assert "rollup_1m_p20231120" in parts and "rollup_15m_p202311" in parts
    # 60 days later: 1m day partitions and the November 15m partitions are gone, 1h and 1d stay.
    s = w.maintain(now=T0 + 60 * DAY)
    assert "rollup_1m_p20231120" in s["dropped"] and "rollup_top_15m_p202311" in s["dropped"]
    assert "flows_p20231120" in s["dropped"]
    parts = partitions(pg)
    assert not any(p.startswith(("rollup_1m_", "rollup_top_1m_", "rollup_15m_", "rollup_top_15m_")) for p in parts)
    assert pg_totals(pg, "1h") == ref_totals(rows, "1h") and pg_tops(pg, "1d") == expected_tops(kept, "1d", 5)
    w.close()


def test_a_write_adds_its_totals_and_candidates_nothing_else(pg):
    w = PostgresWriter(dsn=pg, maintain_interval=60, rollup_top=5)
    w.open()
    rows = rows_ms(100, span=30, seed=8)
    w.write("a", rows)
    for res in RES:
        assert pg_totals(pg, res) == ref_totals(rows, res), res
    cands, _ = ref_candidates(rows, 5, "postgresql")
    assert pg_query(pg, "SELECT count(*) FROM rollup_cand") == [(sum(len(v) for v in cands.values()),)]
    assert pg_tops(pg, "1m") == {}          # writing never runs the maintenance
    w.close()


def test_the_service_port_rule_in_sql(pg):
    w = open_writer(pg)
    # One flow per minute, so each 1m list holds the service port of that flow alone.
    rows = rows_ms(len(SERVICE_CASES), seed=12)
    for k, (r, (proto, sport, dport, _)) in enumerate(zip(rows, SERVICE_CASES)):
        r[I["first"]] = T0 + 60 * k
        r[I["proto"]], r[I["src_port"]], r[I["dst_port"]] = proto, sport, dport
    w.write("a", rows)
    w.maintain(now=T0 + DAY)
    w.close()
    got = {b: key for (b, agent, dim, key) in pg_tops(pg, "1m") if dim == "service_port" and agent == "*"}
    assert [got.get(T0 + 60 * k) for k in range(len(SERVICE_CASES))] == [
        None if x is None else str(x) for _, _, _, x in SERVICE_CASES]


def test_service_ports_of_rollups_made_before_migration_5(pg):
    w = open_writer(pg)
    rows = rows_ms(600, span=DAY + 3600, seed=13)
    w.write("a", rows)
    w.maintain(now=T0 + 3 * DAY)
    w.close()
    # As if the rollups had been made before migration 005: no service_port lists anywhere.
    for res in RES:
        pg_query(pg, "DELETE FROM rollup_top_%s WHERE dimension = 'service_port'" % res)
    pg_query(pg, "DELETE FROM schema_migrations WHERE version = 5")
    w = open_writer(pg)
    assert pg_query(pg, "SELECT count(*) > 0 FROM rollup_dirty") == [(True,)]
    w.maintain(now=T0 + 3 * DAY)
    assert_rollups(pg, rows, 5)
    w.close()
