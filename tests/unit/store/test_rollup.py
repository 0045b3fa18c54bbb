"""Rollups: bucket math, options, and SQLite end to end against a GROUP BY computed in Python."""
import random
import sqlite3

import pytest

from myason.errors import ConfigError
from myason.store import rollup
from myason.store.sqlite import SqliteWriter
from tests.support.rollups import (I, RES, SERVICE_CASES, T0, RefRollups, assert_bounded, expected_tops, ref_candidates,
                                   ref_service_port, ref_tops, ref_totals, rollup_rows, written)

DAY = 86400


def db_totals(path, res):
    with sqlite3.connect(path) as conn:
        return {(int(r[0]),) + tuple(r[1:5]): tuple(r[5:]) for r in conn.execute("SELECT * FROM rollup_%s" % res)}


def db_tops(path, res):
    with sqlite3.connect(path) as conn:
        return {(int(r[0]),) + tuple(r[1:4]): tuple(r[4:]) for r in conn.execute("SELECT * FROM rollup_top_%s" % res)}


def assert_rollups(path, rows, top=25, tops=RES, ref=None):
    """Totals exact; tops as the documented method makes them (ref: the batches as written, else
    all rows in one batch) and within the bound of the truth."""
    ref = ref or written([rows], top)
    for res in RES:
        assert db_totals(path, res) == ref_totals(rows, res), res
    for res in tops:
        assert db_tops(path, res) == expected_tops(rows, res, top, ref), res
    assert_bounded({res: db_tops(path, res) for res in RES}, rows, top, ref.e1m)


def count(path, table):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM %s" % table).fetchone()[0]


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "flows.db")


@pytest.fixture
def writer(db):
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=5)
    w.open()
    yield w
    w.close()


# -- pure functions ---------------------------------------------------------------------------

def test_bucket_math():
    assert rollup.bucket_of(T0 + 59.999, "1m") == T0
    assert rollup.bucket_of(T0 + 60, "1m") == T0 + 60
    assert rollup.bucket_of(T0 + 901, "15m") == T0 + 900
    assert rollup.bucket_of(T0 + DAY - 0.5, "1d") == T0
    assert rollup.enclosing([T0 + 60, T0 + 960, T0 + 3700], "15m") == [T0, T0 + 900, T0 + 3600]
    assert rollup.ranges([180, 0, 60, 300, 60], 60) == [(0, 120), (180, 240), (300, 360)]
    assert rollup.ranges([], 60) == []


def test_minutes_follow_what_each_database_stores():
    # The batch partials bucket each flow as its database stores it: PostgreSQL rounds to
    # microseconds (59.9999996 s is stored as 60 s), SQLite keeps the float (whole seconds).
    import numpy as np
    from myason.store.rollup_batch import minute_buckets
    firsts = np.array([T0 + 59.9999996, T0 + 59.4, T0 + 120.0, T0 + 58.4])
    assert minute_buckets(np, firsts, "sqlite").tolist() == [T0, T0, T0 + 120, T0]
    assert minute_buckets(np, firsts, "postgresql").tolist() == [T0 + 60, T0, T0 + 120, T0]
    rnd = random.Random(0)
    for _ in range(2000):
        t = T0 + rnd.randrange(600) + rnd.choice((0.0, 0.9999995, 0.99999949, 0.9999999, rnd.random()))
        assert minute_buckets(np, np.array([t]), "postgresql")[0] == round(t * 1e6) // 60000000 * 60


def test_partitions_are_named_and_bounded():
    assert rollup.partition_of("1m", T0 + 5) == ("rollup_1m_p20231115", T0, T0 + DAY)
    name, lo, hi = rollup.partition_of("15m", T0, top=True)
    assert name == "rollup_top_15m_p202311" and lo == 1698796800 and hi == 1701388800
    assert rollup.partition_of("1h", 1701388800 - 1)[0] == "rollup_1h_p202311"
    assert rollup.partition_of("1d", T0) == ("rollup_1d_p2023", 1672531200, 1704067200)
    assert rollup.partition_of("1h", 1703980800 + 3600)[1:] == (1701388800, 1704067200)   # December
    for res in RES:
        for top in (False, True):
            name, lo, hi = rollup.partition_of(res, T0, top)
            assert rollup.period_of_partition(name) == (name.rsplit("_p", 1)[0], lo, hi)
    assert rollup.period_of_partition("flows_p20231115") is None
    assert rollup.period_of_partition("rollup_1m_p202311") is None


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("7d", 7 * DAY), ("1y", 365 * DAY), (0, 0), ("0", 0),
                                           ("2w", 14 * DAY), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert rollup.parse_duration("k", text) == seconds


@pytest.mark.parametrize("text", ["7", 7, "7x", "", None, True, "-1d"])
def test_parse_duration_refuses(text):
    with pytest.raises(ConfigError) as err:
        rollup.parse_duration("sqlite.retention.1m", text)
    assert err.value.key == "sqlite.retention.1m"


@pytest.mark.parametrize("options, key", [
    ({"retention": {"raw": "12h"}}, "sqlite.retention.raw"),
    ({"retention": {"raw": "36h"}}, "sqlite.retention.raw"),
    ({"retention": {"5m": "1d"}}, "sqlite.retention.5m"),
    ({"retention": {"1m": "30"}}, "sqlite.retention.1m"),
    ({"retention": "7d"}, "sqlite.retention"),
    ({"retention": {"raw": "7d"}, "retention_days": 3}, "sqlite.retention_days"),
    ({"rollup_top": 0}, "sqlite.rollup_top"),
    ({"maintain_interval": -1}, "sqlite.maintain_interval"),
])
def test_bad_options_name_the_key(db, options, key):
    with pytest.raises(ConfigError) as err:
        SqliteWriter(path=db, **options)
    assert err.value.key == key


def test_options_and_retention_days_as_raw(db):
    w = SqliteWriter(path=db, retention={"raw": "7d", "1m": "30d", "15m": "90d", "1h": "1y", "1d": 0}, rollup_top=3)
    assert w.retention == {"raw": 7 * DAY, "1m": 30 * DAY, "15m": 90 * DAY, "1h": 365 * DAY, "1d": 0}
    assert (w.retention_days, w.rollup_top, w.maintain_interval) == (7, 3, 60.0)
    w = SqliteWriter(path=db, retention_days=2)
    assert w.retention["raw"] == 2 * DAY and w.retention_days == 2


def test_horizon():
    now = T0 + 10 * DAY + 3600
    assert rollup.horizon({}, now) == 0
    assert rollup.horizon({"raw": 7 * DAY}, now) == T0 + 3 * DAY
    assert rollup.horizon({"raw": 7 * DAY, "1m": 2 * DAY}, now) == T0 + 9 * DAY


# -- SQLite end to end ------------------------------------------------------------------------

def test_rollups_match_a_group_by_in_python(writer, db):
    rows = rollup_rows(3000, span=2 * DAY + 3 * 3600)
    batches = [rows[i:i + 500] for i in range(0, len(rows), 500)]
    for i, b in enumerate(batches):
        writer.write("b%d" % i, b)
    # Totals are there as soon as the batches are.
    for res in RES:
        assert db_totals(db, res) == ref_totals(rows, res), res
    s = writer.maintain(now=T0 + 5 * DAY)
    assert s["tops"]["1d"] == 3 and s["tops"]["1m"] > 1000 and s["lag"] == 0 and not s["more"]
    assert_rollups(db, rows, top=5, ref=written(batches, 5))
    assert count(db, "rollup_cand") == 0 and count(db, "rollup_pending") == 0
    assert "tops 1m=" in rollup.format_summary(s)


def test_a_minute_spread_over_batches_is_a_lower_bound_within_the_cuts(db):
    # Many small batches over few minutes, many keys: most 1m lists are cut in every batch.
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=3)
    w.open()
    rows = rollup_rows(4000, span=600, seed=31)
    batches = [rows[i:i + 100] for i in range(0, len(rows), 100)]
    for i, b in enumerate(batches):
        w.write("b%d" % i, b)
    w.maintain(now=T0 + 2 * DAY)
    w.close()
    ref = written(batches, 3)
    assert db_tops(db, "1m") == ref.lists
    assert any(ref.e1m.values())            # the bound is not vacuous here
    assert_rollups(db, rows, top=3, ref=ref)


def test_coarse_tops_are_exact_when_the_finer_lists_hold_every_key(db):
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=1000)
    w.open()
    rows = rollup_rows(2000, span=DAY + 3600, seed=9)
    w.write("a", rows)
    w.maintain(now=T0 + 3 * DAY)
    w.close()
    for res in RES:
        assert db_tops(db, res) == ref_tops(rows, res, 1000), res


def test_coarse_tops_stay_within_the_bound_on_skewed_keys(db):
    # Many keys just below the cut in every minute: the case the bound is about.
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=3)
    w.open()
    rnd = random.Random(11)
    rows = rollup_rows(4000, span=2 * 3600, seed=10)
    for r in rows:
        r[I["src_port"]] = int(rnd.paretovariate(0.7)) % 500
    w.write("a", rows)
    w.maintain(now=T0 + 2 * DAY)
    w.close()
    lists = {res: db_tops(db, res) for res in RES}
    assert lists["1d"] == expected_tops(rows, "1d", 3)
    assert_bounded(lists, rows, 3)
    # The bound is not vacuous here: some coarse list differs from the exact one.
    assert any(lists[res] != ref_tops(rows, res, 3) for res in RES[1:])


def test_running_twice_gives_the_same_result(writer, db):
    rows = rollup_rows(800)
    writer.write("a", rows)
    writer.maintain(now=T0 + 2 * DAY)
    before = [db_totals(db, r) for r in RES] + [db_tops(db, r) for r in RES]
    s = writer.maintain(now=T0 + 2 * DAY)
    assert s["dirty"] == 0 and sum(s["buckets"].values()) == 0
    assert [db_totals(db, r) for r in RES] + [db_tops(db, r) for r in RES] == before
    # Marking everything dirty again recomputes the same rows.
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO rollup_dirty (bucket) SELECT DISTINCT bucket FROM rollup_1m")
    writer.maintain(now=T0 + 2 * DAY)
    assert [db_totals(db, r) for r in RES] + [db_tops(db, r) for r in RES] == before


def test_late_flows_and_batches_between_runs(writer, db):
    ref = RefRollups(5)
    rows = rollup_rows(600, span=3600, seed=2)
    writer.write("a", rows)
    ref.write(rows)
    # During the hour: totals are there; 1m lists for the minutes settled (ended SETTLE ago),
    # coarse tops wait for their bucket to close.
    writer.maintain(now=T0 + 3000)
    ref.maintain(T0 + 3000)
    assert db_totals(db, "1h") == ref_totals(rows, "1h")
    assert rollup.SETTLE["1m"] == 60 and rollup.SETTLE["15m"] == 300
    settled = [r for r in rows if r[I["first"]] < T0 + 3000 - rollup.SETTLE["1m"]]
    assert db_tops(db, "1m") == ref.lists == ref_tops(settled, "1m", 5)
    # 15m buckets settled at 3000 s: those ending by 3000 - SETTLE, i.e. starting before 2700 s.
    assert db_tops(db, "1h") == {} and db_tops(db, "15m") == expected_tops(
        [r for r in rows if r[I["first"]] < T0 + 2700], "15m", 5)
    # A batch arrives late: flows that started in the first minutes of the hour, whose 1m lists
    # are already made (the new candidates are summed into them).
    late = rollup_rows(300, span=300, seed=3)
    writer.write("late", late)
    ref.write(late)
    more = rollup_rows(200, t0=T0 + 3600, span=600, seed=4)
    writer.write("more", more)
    ref.write(more)
    writer.maintain(now=T0 + 3600 + 600)
    ref.maintain(T0 + 3600 + 600)
    everything = rows + late + more
    for res in RES:
        assert db_totals(db, res) == ref_totals(everything, res), res
    assert db_tops(db, "1m") == ref.lists
    assert db_tops(db, "1h") == {}     # closed, but not settled yet
    writer.maintain(now=T0 + 2 * DAY)
    ref.maintain(T0 + 2 * DAY)
    assert_rollups(db, everything, top=5, ref=ref)


def test_a_retried_batch_is_not_counted_twice(writer, db):
    rows = rollup_rows(300, seed=5)
    assert writer.write("x", rows)
    writer.maintain(now=T0 + DAY * 2)
    assert not writer.write("x", rows)
    writer.maintain(now=T0 + DAY * 2)
    assert_rollups(db, rows, top=5)


def test_retention_per_resolution(db):
    now = T0 + 40 * DAY + 3600
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=5,
                     retention={"raw": "30d", "1m": "35d", "15m": "37d", "1h": "1y", "1d": 0})
    w.clock = lambda: T0
    w.open()
    old = rollup_rows(300, span=8 * DAY, seed=6)     # days 0..7 after T0
    w.write("old", old)
    w.maintain(now=T0 + 9 * DAY)
    assert_rollups(db, old, top=5)
    s = w.maintain(now=now)
    assert s["deleted"]["flows"] == sum(1 for r in old if r[I["first"]] < T0 + 10 * DAY)
    for res, keep in (("1m", 35), ("15m", 37)):
        cutoff = now - keep * DAY
        assert db_totals(db, res) == {k: v for k, v in ref_totals(old, res).items() if k[0] >= cutoff}
        assert db_tops(db, res) == {k: v for k, v in expected_tops(old, res, 5).items() if k[0] >= cutoff}
    assert db_totals(db, "1h") == ref_totals(old, "1h") and db_totals(db, "1d") == ref_totals(old, "1d")
    # A very late flow before the horizon adds to the totals still kept, but must not replace
    # good top lists by itself alone: its candidates are dropped.
    before = {res: db_tops(db, res) for res in RES}
    too_late = rollup_rows(1, t0=T0 + 2 * DAY, span=10, seed=7)
    w.write("too-late", too_late)
    s = w.maintain(now=now)
    assert s["skipped"] == 1 and count(db, "rollup_cand") == 0
    assert db_totals(db, "1d") == ref_totals(old + too_late, "1d")
    assert {res: db_tops(db, res) for res in RES} == before
    assert db_totals(db, "1m") == {k: v for k, v in ref_totals(old, "1m").items() if k[0] >= now - 35 * DAY}
    w.close()


def test_health_samples_are_kept_seven_days(writer, db):
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO health_samples VALUES (?, 'n', '', 'flows', 1.0)",
                         [(T0 - 8 * DAY,), (T0 - 6 * DAY,)])
    s = writer.maintain(now=T0)
    assert s["deleted"]["health_samples"] == 1 and count(db, "health_samples") == 1


def test_a_write_adds_its_totals_and_candidates_nothing_else(db):
    w = SqliteWriter(path=db, maintain_interval=60, rollup_top=5)
    w.open()
    rows = rollup_rows(200, span=30, seed=8)
    w.write("a", rows)
    for res in RES:
        assert db_totals(db, res) == ref_totals(rows, res)
    cands, _ = ref_candidates(rows, 5)
    assert count(db, "rollup_cand") == sum(len(v) for v in cands.values())
    # Writing never runs the maintenance (the collector's maintenance thread does).
    assert count(db, "rollup_top_1m") == 0 and count(db, "rollup_state") == 0
    w.close()


def test_the_service_port_rule_in_sql(db):
    assert [ref_service_port(p, s, d) for p, s, d, _ in SERVICE_CASES] == [x for _, _, _, x in SERVICE_CASES]
    w = SqliteWriter(path=db, maintain_interval=0)
    w.open()
    # One flow per minute, so each 1m list holds the service port of that flow alone.
    rows = rollup_rows(len(SERVICE_CASES), seed=12)
    for k, (r, (proto, sport, dport, _)) in enumerate(zip(rows, SERVICE_CASES)):
        r[I["first"]] = T0 + 60 * k
        r[I["proto"]], r[I["src_port"]], r[I["dst_port"]] = proto, sport, dport
    w.write("a", rows)
    w.maintain(now=T0 + DAY)
    w.close()
    got = {b: key for (b, agent, dim, key) in db_tops(db, "1m") if dim == "service_port" and agent == "*"}
    assert [got.get(T0 + 60 * k) for k in range(len(SERVICE_CASES))] == [
        None if x is None else str(x) for _, _, _, x in SERVICE_CASES]


def test_service_ports_of_rollups_made_before_migration_4(db):
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=5)
    w.open()
    rows = rollup_rows(600, span=DAY + 3600, seed=13)
    w.write("a", rows)
    w.maintain(now=T0 + 3 * DAY)
    # As if the rollups had been made before migration 004: no service_port lists anywhere.
    with sqlite3.connect(db) as conn:
        for res in RES:
            conn.execute("DELETE FROM rollup_top_%s WHERE dimension = 'service_port'" % res)
        conn.execute("DELETE FROM schema_migrations WHERE version = 4")
    w.close()
    w.open()
    assert count(db, "rollup_dirty") > 0
    w.maintain(now=T0 + 3 * DAY)
    assert_rollups(db, rows, top=5)
    w.close()


def test_existing_flows_are_marked_by_the_migration(db):
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=5)
    w.open()
    rows = rollup_rows(200, seed=9)
    w.write("a", rows)
    # As if the flows had been stored before migration 003: no marks, no rollups, migration again.
    with sqlite3.connect(db) as conn:
        for t in ("rollup_dirty", "rollup_state", "rollup_pending", "health_collectors", "health_agents",
                  "health_samples") + tuple("rollup_%s" % r for r in RES) + tuple("rollup_top_%s" % r for r in RES):
            conn.execute("DROP TABLE %s" % t)
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
    w.close()
    w.open()
    w.maintain(now=T0 + 2 * DAY)
    assert_rollups(db, rows, top=5)
    w.close()


def test_myason_maintain_command(db, tmp_path, capsys):
    from myason.cli import main
    w = SqliteWriter(path=db, maintain_interval=0)
    w.clock = lambda: T0
    w.open()
    rows = rollup_rows(100, span=600, seed=10)
    w.write("a", rows)
    w.close()
    conf = tmp_path / "collector.yaml"
    conf.write_text("writers:\n  - {type: sqlite, path: %s, rollup_top: 5, retention: {raw: 7d}}\n"
                    "  - {type: jsonl, path: %s}\n" % (db, tmp_path / "x.jsonl"))
    assert main(["maintain", "-cc", str(conf), "--now", "2023-11-16T00:45:00Z"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("writers[0] sqlite: dirty marks ") and "1d=1" in out
    assert_rollups(db, rows, top=5)
    assert main(["maintain", "-cc", str(conf), "--now", "2023-11-30T00:00:00Z"]) == 0
    assert "deleted rows flows=100" in capsys.readouterr().out
    assert main(["maintain", "-cc", str(conf), "--now", "yesterday"]) == 2
