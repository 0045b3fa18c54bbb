"""The PostgreSQL writer against a real PostgreSQL 15: schema, partitions, exactly once, faults."""
import datetime as dt
import threading
import time
import uuid

import pytest

from myason.schema import ROW_FIELDS
from myason.store.base import WriterError, decode_prepared, encode_batch, writer_class
from myason.store.postgresql import (_ENCODE_ERRORS, COPY_COLUMNS, PostgresWriter, encode_binary, encode_text,
                                     partition_name, prepare_batch)
from tests.support.rows import MIDNIGHT as T0, spread_rows
from tests.support.stores import pg_query

psycopg = pytest.importorskip("psycopg")

DAY = 86400.0
NH = ROW_FIELDS.index("next_hop")


def count(dsn):
    return pg_query(dsn, "SELECT count(*) FROM flows")[0][0]


def stored(dsn):
    """Rows back in ROW_FIELDS order, in the agent's types ("" for a NULL next hop)."""
    cols = []
    for f in ROW_FIELDS:
        if f in ("src_ip", "dst_ip", "exporter", "next_hop"):
            cols.append('coalesce(host(%s), \'\')' % f)
        elif f in ("first", "last", "received"):
            cols.append('extract(epoch FROM "%s")::float8' % f)
        else:
            cols.append('"%s"' % f)
    return [list(r) for r in pg_query(dsn, "SELECT %s FROM flows ORDER BY src_port" % ", ".join(cols))]


def assert_same(got, rows):
    want = sorted(rows, key=lambda r: r[2])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for name, a, b in zip(ROW_FIELDS, g, w):
            if isinstance(b, float):
                assert a == pytest.approx(b, abs=1e-6), name
            else:
                assert a == b, name


@pytest.fixture
def writer(pg):
    w = PostgresWriter(dsn=pg)
    w.open()
    yield w
    w.close()


def test_registered_under_its_name():
    assert writer_class("postgresql") is PostgresWriter


def test_copy_columns_cover_every_row_field():
    assert sorted(COPY_COLUMNS) == sorted(ROW_FIELDS)


def test_encoders_refuse_values_postgresql_cannot_take():
    good = spread_rows(1)[0]
    for bad in ({0: "10.0.0.300"}, {2: 1.5}, {2: 1 << 40}, {8: "soon"}, {11: 7}):
        row = list(good)
        for k, v in bad.items():
            row[k] = v
        with pytest.raises(_ENCODE_ERRORS):
            encode_binary([row])
    assert encode_text([good]).count(b"\t") == len(COPY_COLUMNS) - 1


def test_a_flow_rounding_into_the_next_day_finds_its_partition(writer, pg):
    # COPY keeps microseconds: 0.4 us before midnight is stored as midnight, in the next day's partition.
    midnight = (int(T0) // 86400 + 1) * 86400
    rows = spread_rows(2, t=midnight - 0.0000004)
    rows[1][8], rows[1][9] = midnight - 7200.0, midnight - 7100.0
    for write in (lambda: writer.write("b-late-1", rows[:1]), lambda: writer.write_prepared(
            "b-late-2", *decode_prepared(prepare_batch(rows[1:] + [spread_rows(1, t=midnight - 0.0000004)[0]])))):
        write()
    got = pg_query(pg, "SELECT tableoid::regclass::text, extract(epoch FROM first) FROM flows ORDER BY 2")
    assert [t for t, _ in got] == [partition_name(dt.datetime.fromtimestamp(midnight - 7200.0, dt.timezone.utc).date())] + [
        partition_name(dt.datetime.fromtimestamp(midnight, dt.timezone.utc).date())] * 2


def test_migrate_twice_is_a_no_op(writer, pg):
    assert writer.migrate() == []
    w2 = PostgresWriter(dsn=pg)
    w2.open()
    assert w2.migrate() == []
    w2.close()
    assert pg_query(pg, "SELECT version, name FROM schema_migrations ORDER BY version") == [
        (1, "flows"), (2, "closed_partition_indexes"), (3, "enrich_events"), (4, "rollups"),
        (5, "service_port"), (6, "rollup_candidates"), (7, "reader_role"), (8, "event_search"),
        (9, "event_agents")]
    assert pg_query(pg, "SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'flows'::regclass") == [("r",)]
    indexes = {r[0] for r in pg_query(pg, "SELECT indexname FROM pg_indexes WHERE tablename = 'flows'")}
    # Address btrees live on closed partitions only (migration 002); the parent keeps BRIN on time.
    assert indexes == {"flows_first_brin"}
    types = dict(pg_query(pg, "SELECT column_name, data_type FROM information_schema.columns"
                              " WHERE table_name = 'flows'"))
    assert types["src_ip"] == types["exporter"] == types["next_hop"] == "inet"
    assert types["first"] == types["received"] == "timestamp with time zone"
    assert types["bytes"] == "bigint" and types["proto"] == "smallint"


def test_writers_opening_a_fresh_database_at_once_all_succeed(pg):
    # A writer and its maintenance thread open together at start: both ran CREATE TABLE IF NOT
    # EXISTS schema_migrations and one failed on the catalogue's unique index.
    writers = [PostgresWriter(dsn=pg) for _ in range(4)]
    errors, go = [], threading.Barrier(len(writers))

    def open_one(w):
        go.wait()
        try:
            w.open()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
    threads = [threading.Thread(target=open_one, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for w in writers:
        w.close()
    assert errors == []
    assert [v for v, in pg_query(pg, "SELECT version FROM schema_migrations ORDER BY version")] == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_closed_partitions_get_address_indexes_and_the_open_one_does_not(writer, pg):
    writer.write("ix", spread_rows(30, t=T0 - DAY + 3600, span=2 * DAY))      # 14, 15, 16 Nov
    writer.index_closed_partitions(today=dt.date(2023, 11, 16))
    names = {r[0] for r in pg_query(pg, "SELECT indexname FROM pg_indexes WHERE tablename LIKE 'flows_p2023111%'")}
    for day in ("20231114", "20231115"):
        assert {"flows_p%s_%s_idx" % (day, s) for s in ("src_first", "dst_first", "agent_first")} <= names
    assert not {"flows_p20231116_%s_idx" % s for s in ("src_first", "dst_first", "agent_first")} & names
    assert writer.index_closed_partitions(today=dt.date(2023, 11, 16)) == []
    cols = dict(pg_query(pg, "SELECT indexname, indexdef FROM pg_indexes WHERE indexname = 'flows_p20231114_src_first_idx'"))
    assert "(src_ip, first)" in cols["flows_p20231114_src_first_idx"]


def test_address_indexes_of_earlier_releases_are_replaced(writer, pg):
    # A partition indexed by an earlier release has (src_ip) and (dst_ip) btrees: the next
    # housekeeping builds the (address, first) ones and drops those.
    writer.write("ix", spread_rows(30, t=T0 - DAY + 3600, span=2 * DAY))
    for side in ("src", "dst"):
        pg_query(pg, "CREATE INDEX flows_p20231114_%s_ip_idx ON flows_p20231114 (%s_ip)" % (side, side))
    writer.index_closed_partitions(today=dt.date(2023, 11, 16))
    names = {r[0] for r in pg_query(pg, "SELECT indexname FROM pg_indexes WHERE tablename = 'flows_p20231114'")}
    assert {"flows_p20231114_src_first_idx", "flows_p20231114_dst_first_idx"} <= names
    assert not {"flows_p20231114_src_ip_idx", "flows_p20231114_dst_ip_idx"} & names


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_batches_spanning_three_days_round_trip(pg, fmt):
    w = PostgresWriter(dsn=pg, copy=fmt)
    w.open()
    rows = spread_rows(300, t=T0 - DAY + 3600, span=2 * DAY)      # 3 UTC days
    assert w.write("b1", rows[:150]) is True
    assert w.write("b2", rows[150:]) is True
    days = [dt.date(2023, 11, 14), dt.date(2023, 11, 15), dt.date(2023, 11, 16)]
    assert w.partitions() == days
    w.close()
    assert_same(stored(pg), rows)
    per_part = dict(pg_query(pg, "SELECT tableoid::regclass::text, count(*) FROM flows GROUP BY 1"))
    assert sorted(per_part) == [partition_name(d) for d in days]
    assert sum(per_part.values()) == 300
    # Each row sits in the partition of its own UTC day.
    assert pg_query(pg, "SELECT count(*) FROM flows WHERE tableoid::regclass::text <>"
                        " 'flows_p' || to_char(\"first\" AT TIME ZONE 'UTC', 'YYYYMMDD')") == [(0,)]


def test_retry_of_the_same_batch_adds_nothing(writer, pg):
    rows = spread_rows(100)
    assert writer.write("b1", rows) is True
    assert writer.write("b1", rows) is False
    w2 = PostgresWriter(dsn=pg)        # a restarted collector retrying it
    w2.open()
    assert w2.write("b1", rows) is False
    w2.close()
    assert count(pg) == 100
    assert pg_query(pg, "SELECT batch_id, rows FROM batches") == [("b1", 100)]


def test_connection_lost_after_commit_then_retry_is_skipped(writer, pg):
    real = writer._commit

    def commit_then_lose(conn):
        real(conn)
        conn.close()
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    writer._commit = commit_then_lose
    rows = spread_rows(50)
    with pytest.raises(WriterError) as info:
        writer.write("b1", rows)
    assert not info.value.permanent
    writer._commit = real
    assert writer.write("b1", rows) is False           # reconnects by itself
    assert count(pg) == 50


def test_connection_killed_before_commit_then_retry_stores_once(writer, pg):
    from tests.support.services import wait_until
    real = writer._commit

    def killed(conn):
        pid = conn.info.backend_pid
        pg_query(pg, "SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: not pg_query(pg, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)), timeout=10)
        real(conn)

    writer._commit = killed
    rows = spread_rows(50)
    with pytest.raises(WriterError) as info:
        writer.write("b1", rows)
    assert not info.value.permanent
    assert count(pg) == 0
    writer._commit = real
    assert writer.write("b1", rows) is True
    assert writer.write("b1", rows) is False
    assert count(pg) == 50


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_rows_postgresql_refuses_are_permanent(pg, fmt):
    w = PostgresWriter(dsn=pg, copy=fmt)
    w.open()
    good = spread_rows(3)
    bad = [list(r) for r in good]
    bad[1][ROW_FIELDS.index("agent")] = "nul\x00byte"          # text cannot hold NUL
    with pytest.raises(WriterError) as info:
        w.write("bad", bad)
    assert info.value.permanent
    bad = [list(r) for r in good]
    bad[2][0] = ""                                            # NOT NULL address
    with pytest.raises(WriterError) as info:
        w.write("bad", bad)
    assert info.value.permanent
    assert w.write("bad", good) is True                       # nothing of the failures stayed
    w.close()
    assert count(pg) == 3


def test_postgresql_down_is_retryable_then_exactly_once(servers, pg):
    from tests.support.services import pg_start, pg_stop
    w = PostgresWriter(dsn=pg, connect_timeout=2)
    w.open()
    a, b = spread_rows(40), spread_rows(60, start=1000)
    assert w.write("a", a) is True
    pg_stop(servers)
    try:
        with pytest.raises(WriterError) as info:
            w.write("b", b)
        assert not info.value.permanent
        with pytest.raises(WriterError) as info:
            w.open()
        assert not info.value.permanent
    finally:
        pg_start(servers)
    assert w.write("b", b) is True
    assert w.write("b", b) is False
    w.close()
    assert count(pg) == 100


def test_retention_drops_whole_partitions(pg):
    today = dt.date(2023, 11, 20)
    now = dt.datetime(2023, 11, 20, 12, tzinfo=dt.timezone.utc).timestamp()
    w = PostgresWriter(dsn=pg)
    w.open()
    for k in range(5):
        w.write("d%d" % k, spread_rows(10, start=100 * k, t=now - k * DAY))
    assert len(w.partitions()) == 5
    assert w.drop_partitions_before(today - dt.timedelta(days=3)) == [dt.date(2023, 11, 16)]
    assert count(pg) == 40
    w.close()
    # The option does the same in the hourly housekeeping (the collector's maintenance thread),
    # relative to the writer's clock; opening alone drops nothing.
    w = PostgresWriter(dsn=pg, retention_days=1)
    w.clock = lambda: now
    w.open()
    assert len(w.partitions()) == 4
    w.housekeeping()
    assert w.partitions() == [dt.date(2023, 11, 19), today]
    assert count(pg) == 20
    # A late batch for a dropped day gets its partition back (and loses it at the next pass).
    assert w.write("late", spread_rows(5, start=900, t=now - 4 * DAY)) is True
    assert count(pg) == 25
    w.close()


def test_writer_thread_and_spool_exactly_once_across_an_outage(servers, pg, tmp_path):
    from myason.collector.sink import WriterThread
    from myason.collector.spool import Spool
    from tests.support.services import pg_start, pg_stop, wait_until
    spool = Spool(tmp_path / "spool", fsync=False)
    per = 200
    batches = [spread_rows(per, start=i * per, t=T0 + i) for i in range(50)]
    for rows in batches[:25]:
        spool.put(encode_batch(rows))
    stop = threading.Event()
    w = PostgresWriter(dsn=pg, connect_timeout=2)
    thread = WriterThread(w, spool, stop, poll=0.01, backoff=(0.05, 0.5))
    thread.start()
    try:
        wait_until(lambda: thread.batches >= 10, timeout=30)
        pg_stop(servers)
        try:
            for rows in batches[25:]:
                spool.put(encode_batch(rows))
            time.sleep(1.0)             # the writer retries against a dead server meanwhile
            assert spool.depth()[0] + spool.depth()[1] > 0
        finally:
            pg_start(servers)
        wait_until(lambda: spool.depth() == (0, 0, 0), timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert thread.error is None
    assert thread.errors > 0 and thread.failed_batches == 0
    assert count(pg) == 50 * per
    assert pg_query(pg, "SELECT count(DISTINCT src_port) FROM flows") == [(50 * per,)]
    assert pg_query(pg, "SELECT count(*), sum(rows) FROM batches") == [(50, 50 * per)]


@pytest.fixture
def reader(pg, writer):
    """The DSN of a new login role granted myason_reader, as docs/operations.md makes one for the API."""
    name = "r_%s" % uuid.uuid4().hex[:12]
    pg_query(pg, "CREATE ROLE %s LOGIN" % name)
    pg_query(pg, "GRANT myason_reader TO %s" % name)
    yield psycopg.conninfo.make_conninfo(pg, user=name)
    # Its own privileges are none (they are the group's): it can go at once.
    pg_query(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
    pg_query(pg, "DROP ROLE IF EXISTS %s" % name)


def test_reader_role_may_select_and_nothing_else(writer, pg, reader):
    """Issue 12 item 15: the API's role (granted myason_reader by migration 007) reads and cannot write."""
    writer.write("r1", spread_rows(5))
    writer.write("r2", spread_rows(3, start=100, t=T0 + 3 * DAY))      # a day partition made after 007
    writer.maintain(now=T0 + 4 * DAY)
    # A table a later migration adds is readable too (default privileges).
    pg_query(pg, "CREATE TABLE future_table (x int)")
    pg_query(pg, "INSERT INTO future_table VALUES (1)")
    assert pg_query(reader, "SELECT count(*) FROM flows") == [(8,)]
    for table in ("events", "rollup_1m", "rollup_top_1h", "health_samples", "future_table", "schema_migrations"):
        pg_query(reader, "SELECT count(*) FROM %s" % table)
    assert pg_query(reader, "SELECT count(*) FROM %s" % partition_name(dt.date(2023, 11, 18))) == [(3,)]
    refused = ["INSERT INTO flows (src_ip) VALUES ('10.0.0.1')", "DELETE FROM flows", "UPDATE flows SET bytes = 0",
               "TRUNCATE flows", "DELETE FROM %s" % partition_name(dt.date(2023, 11, 15)), "DELETE FROM events",
               "DELETE FROM rollup_1m", "DELETE FROM batches", "INSERT INTO future_table VALUES (2)",
               "CREATE TABLE mine (x int)", "DROP TABLE future_table", "ALTER TABLE flows ADD COLUMN x int"]
    for sql in refused:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            pg_query(reader, sql)
    assert count(pg) == 8


def test_reader_role_migration_is_idempotent(writer, pg):
    """Re-applied (tests drop schema_migrations) with the role already there: no error, same grants."""
    pg_query(pg, "DELETE FROM schema_migrations WHERE version = 7")
    assert writer.migrate() == [7]
    assert writer.migrate() == []
    assert pg_query(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'myason_reader'") == [(False,)]
    assert pg_query(pg, "SELECT has_table_privilege('myason_reader', 'flows', 'SELECT'),"
                        " has_table_privilege('myason_reader', 'flows', 'INSERT')") == [(True, False)]
