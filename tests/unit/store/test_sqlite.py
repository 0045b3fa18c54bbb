"""The sqlite writer: schema and migrations, round trip, exactly once across retries and crashes."""
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from myason.errors import ConfigError
from myason.schema import ENRICHED_ROW_FIELDS, ROW_FIELDS
from myason.store.base import WriterError, writer_class
from myason.store.sqlite import SqliteWriter, retention_cutoff
from tests.support.modes import tree_modes
from tests.support.rows import T0, numbered_rows


def stored(path):
    conn = sqlite3.connect(path)
    try:
        cols = ", ".join('"%s"' % f for f in ROW_FIELDS)
        return [list(r) for r in conn.execute("SELECT %s FROM flows ORDER BY src_port" % cols)]
    finally:
        conn.close()


def expected(rows):
    nh = ROW_FIELDS.index("next_hop")
    return [r[:nh] + [r[nh] or None] + r[nh + 1:] for r in sorted(rows, key=lambda r: r[2])]


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "flows.db")


@pytest.fixture
def writer(db):
    w = SqliteWriter(path=db)
    w.open()
    yield w
    w.close()


def test_registered_under_its_name():
    assert writer_class("sqlite") is SqliteWriter


def test_schema_wal_and_migrations_are_applied_once(writer, db):
    assert writer.migrate() == []
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version, name FROM schema_migrations").fetchall() == [
        (1, "flows"), (2, "enrich_events"), (3, "rollups"), (4, "service_port"), (5, "rollup_candidates"),
        (6, "event_agents")]
    cols = [r[1] for r in conn.execute("PRAGMA table_info(flows)")]
    assert cols == list(ENRICHED_ROW_FIELDS)
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(flows)")}
    assert {"flows_first_idx", "flows_src_ip_idx", "flows_dst_ip_idx", "flows_agent_first_idx"} <= indexes
    conn.close()


def test_round_trip(writer, db):
    rows = numbered_rows(50)
    assert writer.write("b1", rows[:20]) is True
    assert writer.write("b2", rows[20:]) is True
    assert stored(db) == expected(rows)


def test_retry_is_skipped_also_after_reopen(writer, db):
    rows = numbered_rows(5)
    assert writer.write("b1", rows) is True
    assert writer.write("b1", rows) is False
    writer.close()
    w2 = SqliteWriter(path=db)
    w2.open()
    assert w2.write("b1", rows) is False
    w2.close()
    assert stored(db) == expected(rows)


def test_crash_before_commit_then_retry_lands_exactly_once(writer, db):
    rows = numbered_rows(30)
    writer.write("a", rows[:10])
    writer.close()
    # Another process runs the writer's transaction up to, not including, COMMIT and dies.
    code = textwrap.dedent("""
        import os, sqlite3, sys, json
        from myason.store.sqlite import INSERT_SQL
        rows = json.loads(sys.stdin.read())
        conn = sqlite3.connect(sys.argv[1], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO batches VALUES (?, ?, ?)", ("b", len(rows), 0.0))
        conn.executemany(INSERT_SQL, rows)
        os._exit(0)
    """)
    import json
    subprocess.run([sys.executable, "-c", code, db], input=json.dumps(rows[10:]), text=True, check=True)
    assert stored(db) == expected(rows[:10])
    w2 = SqliteWriter(path=db)
    w2.open()
    assert w2.write("b", rows[10:]) is True
    assert w2.write("a", rows[:10]) is False
    w2.close()
    assert stored(db) == expected(rows)


def test_bad_rows_are_permanent_and_store_nothing(writer, db):
    good = numbered_rows(3)
    bad_type = [list(r) for r in good]
    bad_type[1][2] = 1.5                           # a float port: STRICT refuses it
    for batch in (bad_type, [good[0][:10]], [good[0][:6] + [1 << 70] + good[0][7:]]):
        with pytest.raises(WriterError) as info:
            writer.write("bad", batch)
        assert info.value.permanent
    assert stored(db) == []
    # The failed attempts left no batch id behind: the id can still be stored.
    assert writer.write("bad", good) is True


def test_locked_database_is_retryable(db):
    w = SqliteWriter(path=db, busy_timeout=0.05)
    w.open()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(WriterError) as info:
        w.write("b1", numbered_rows(2))
    assert not info.value.permanent
    other.execute("ROLLBACK")
    other.close()
    assert w.write("b1", numbered_rows(2)) is True
    w.close()


def test_retention_deletes_days_before_the_cutoff(db):
    day = 86400.0
    now = T0 + 10 * day
    w = SqliteWriter(path=db, retention_days=2)
    w.clock = lambda: now
    w.open()
    for k in range(5):       # rows 8, 9, 10, 11 and 12 days after T0's day... minus up to 4 days
        w.write("d%d" % k, numbered_rows(1, start=k, t=now - k * day))
    w.housekeeping()         # hourly, by the collector's maintenance thread
    w.close()
    cutoff = retention_cutoff(2, now)
    assert cutoff == dt.date(2023, 11, 22)
    assert [r[2] for r in stored(db)] == [0, 1, 2]


def test_delete_before_and_batch_id_pruning(writer, db):
    writer.clock = lambda: T0
    writer.write("old", numbered_rows(2, t=T0 - 86400))
    writer.write("new", numbered_rows(2, start=2, t=T0))
    assert writer.delete_before(dt.date(2023, 11, 14)) == 2
    assert [r[2] for r in stored(db)] == [2, 3]
    writer.clock = lambda: T0 + 30 * 86400.0
    writer.housekeeping()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 0
    conn.close()


def test_unopenable_path_is_retryable(tmp_path):
    w = SqliteWriter(path=str(tmp_path / "missing" / "dir" / "flows.db"))
    with pytest.raises(WriterError) as info:
        w.open()
    assert not info.value.permanent


@pytest.mark.parametrize("options, key", [
    ({}, "sqlite.path"),
    ({"path": "x", "retention": 3}, "sqlite.retention"),
    ({"path": "x", "retention_days": -1}, "sqlite.retention_days"),
    ({"path": ""}, "sqlite.path"),
])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError) as info:
        SqliteWriter(**options)
    assert info.value.key == key


def test_files_are_never_world_readable_under_umask_022(tmp_path, umask022):
    """Issue 12 item 13: the database and its -wal/-shm get file_mode (0640), not the umask's 0644."""
    db = str(tmp_path / "flows.db")
    w = SqliteWriter(path=db)
    w.open()
    try:
        assert w.write("b1", numbered_rows(3)) is True
        modes = tree_modes(str(tmp_path))
        assert {p: m for p, m in modes.items() if p != "."} == {
            "flows.db": 0o640, "flows.db-wal": 0o640, "flows.db-shm": 0o640}, modes
    finally:
        w.close()


def test_file_mode_option_and_files_of_older_versions(tmp_path, umask022):
    db = str(tmp_path / "flows.db")
    conn = sqlite3.connect(db)      # made under the umask, as before file_mode
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    assert os.stat(db).st_mode & 0o777 == 0o644
    w = SqliteWriter(path=db, file_mode="0600")
    w.open()
    try:
        w.write("b1", numbered_rows(1))
        assert all(m == 0o600 for p, m in tree_modes(str(tmp_path)).items() if p != "."), tree_modes(str(tmp_path))
    finally:
        w.close()
    with pytest.raises(ConfigError) as info:
        SqliteWriter(path=db, file_mode=0o644)
    assert info.value.key == "sqlite.file_mode"
