"""The sqlite writer: the embedded store of the quick start, with the PostgreSQL schema's logical twin.

One transaction per batch inserts the batch id into `batches` and the rows into `flows`; a batch
id already there means the batch was committed before (maybe just before a crash), so it is
skipped. WAL mode lets readers query while the collector writes; synchronous=FULL makes a commit
durable before the spool deletes its batch.
"""
import datetime as dt
import logging
import sqlite3
import time

from myason import fsmode
from myason.options import REQUIRED, check_float, check_int, check_str, parse_options
from myason.schema import ENRICHED_ROW_FIELDS, INDEX, ROW_FIELDS
from myason.store.base import Writer, WriterError, register
from myason.store.events import EVENT_COLUMNS, check_events_retention, dumps, event_columns
from myason.store import rollup, rollup_maintain
from myason.store.rollup_batch import batch_partials
from myason.store.rollup_sql import SqliteBackend
from myason.store.schema import load_migrations

log = logging.getLogger("myason.store.sqlite")

_NEXT_HOP = INDEX["next_hop"]
# The agent's "" next hop is stored as NULL, as in PostgreSQL where it is an inet.
INSERT_SQL = "INSERT INTO flows (%s) VALUES (%s)" % (
    ", ".join('"%s"' % f for f in ROW_FIELDS),
    ", ".join("NULLIF(?, '')" if i == _NEXT_HOP else "?" for i in range(len(ROW_FIELDS))))
INSERT_ENRICHED_SQL = "INSERT INTO flows (%s) VALUES (%s)" % (
    ", ".join('"%s"' % f for f in ENRICHED_ROW_FIELDS),
    ", ".join("NULLIF(?, '')" if i == _NEXT_HOP else "?" for i in range(len(ENRICHED_ROW_FIELDS))))
INSERT_EVENT_SQL = "INSERT OR IGNORE INTO events (%s, event) VALUES (%s)" % (
    ", ".join(EVENT_COLUMNS), ", ".join("?" * (len(EVENT_COLUMNS) + 1)))


def event_params(event):
    """SQLite parameters of one IDEA event for INSERT_EVENT_SQL (lists as JSON arrays)."""
    cols = event_columns(event)
    return tuple(dumps(v).decode() if isinstance(v, list) else v for v in cols.values()) + (
        dumps(event).decode(),)


def day_start(day):
    """Unix time of 00:00 UTC on `day` (a datetime.date)."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()


def retention_cutoff(retention_days, now):
    """First UTC day kept when keeping `retention_days` whole days before the day of `now`."""
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).date() - dt.timedelta(days=retention_days)


@register
class SqliteWriter(Writer):
    """Store flows in one SQLite file.

    Options: path (required): the database file; retention_days (default 0 = keep): delete flows
    whose `first` is before 00:00 UTC that many days before today (hourly, by housekeeping());
    batch_keep_days (default 7): how long committed batch ids are remembered for retries;
    busy_timeout (default 30 s): how long to wait for another process's write lock;
    retention ({raw, 1m, 15m, 1h, 1d: duration or 0}): per resolution, rollups deleted after it
    (raw = retention_days, as a duration); rollup_top (default 25): keys kept per top-N list;
    maintain_interval (default 60 s; 0 = only `myason maintain`): period of the collector's
    maintenance thread (myason.collector.maintenance), which calls maintain() and housekeeping();
    events_retention (default 0 = keep): IDEA events detected longer ago are deleted by maintain();
    file_mode (default 0640): the mode of the database file and its -wal and -shm files, whatever
    the umask, set at every open: the group (the collector's own, which `myason api`'s user joins)
    may read, others get nothing.
    """

    name = "sqlite"
    stores_events = True
    SPEC = {
        "path": (REQUIRED, check_str(allow_empty=False, expected="a file path")),
        "retention_days": (0, check_int(lo=0)),
        "batch_keep_days": (7, check_int(lo=1)),
        "busy_timeout": (30.0, check_float(lo=0)),
        "file_mode": (0o640, fsmode.check_file_mode),
        **rollup.option_spec(),
        "events_retention": (0.0, check_events_retention),
    }

    def __init__(self, **options):
        super().__init__(**options)
        opts = parse_options(self.name, options, self.SPEC)
        self.path = opts["path"]
        rollup.apply_options(self, opts)
        self.events_retention = opts["events_retention"]
        self.batch_keep_days = opts["batch_keep_days"]
        self.busy_timeout = opts["busy_timeout"]
        self.file_mode = opts["file_mode"]
        self.clock = time.time
        self.skipped = 0
        self._conn = None
        self._rollups = None

    def open(self, application=None):
        """Open the file in WAL mode and apply the pending migrations (`application`: unused here)."""
        self.close()
        try:
            # Autocommit at the driver level: transactions are opened explicitly below.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            self._conn = conn
            self._set_modes()
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                log.warning("sqlite: %s: journal mode is %s, not wal", self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
            self.migrate()
            self._rollups = SqliteBackend(conn)
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise WriterError("sqlite: cannot open %s: %s" % (self.path, exc)) from None

    def _set_modes(self):
        # SQLite creates the file with 0644 cut by the umask, empty until the first write below:
        # set to file_mode now, before anything is written, it is never readable by others, and
        # SQLite gives the -wal and -shm it creates later the database file's mode (unix VFS).
        # By path, never by opening the file: closing any descriptor of it would drop this
        # process's POSIX locks on it, which SQLite's other connections here (the maintenance
        # thread's) rely on. Also fixes the files of an older version, or a changed file_mode.
        if self.path == ":memory:":
            return
        for suffix in ("", "-wal", "-shm"):
            if fsmode.ensure_mode(self.path + suffix, self.file_mode):
                log.info("sqlite: %s%s: mode set to %04o (file_mode)", self.path, suffix, self.file_mode)

    def migrate(self):
        """Apply the migrations not yet in schema_migrations; returns the versions applied."""
        conn = self._conn
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
        applied = []
        for version, name, sql in load_migrations("sqlite"):
            # IMMEDIATE takes the write lock first, so two processes never apply one migration twice.
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                    conn.execute("ROLLBACK")
                    continue
                for stmt in _statements(sql):
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            applied.append(version)
            log.info("sqlite: %s: applied migration %03d_%s", self.path, version, name)
        return applied

    def write(self, batch_id, rows, events=()):
        """Insert rows, events and the batch id in one transaction; a known batch id is skipped.

        Rows are plain (ROW_FIELDS) or enriched (ENRICHED_ROW_FIELDS); events are IDEA dicts.
        """
        if self._conn is None:
            self.open()
        conn = self._conn
        sql = INSERT_ENRICHED_SQL if rows and len(rows[0]) == len(ENRICHED_ROW_FIELDS) else INSERT_SQL
        try:
            params = [event_params(e) for e in events]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WriterError("sqlite: batch %s has a bad event: %s" % (batch_id, exc), permanent=True) from None
        try:
            totals, cands = batch_partials(rows, self.rollup_top, "sqlite")
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise WriterError("sqlite: batch %s has a bad row: %s" % (batch_id, exc), permanent=True) from None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute("INSERT OR IGNORE INTO batches VALUES (?, ?, ?)",
                                   (batch_id, len(rows), self.clock()))
                if cur.rowcount == 0:
                    conn.execute("ROLLBACK")
                    self.skipped += 1
                    return False
                conn.executemany(sql, rows)
                # Same transaction as the rows: the rollups count a batch once or not at all.
                self._rollups.add_batch(totals, cands)
                if params:
                    conn.executemany(INSERT_EVENT_SQL, params)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            # Locked, busy, disk full, I/O error: may succeed later.
            raise WriterError("sqlite: %s: %s" % (self.path, exc)) from None
        except (sqlite3.Error, OverflowError, TypeError, ValueError) as exc:
            # A row SQLite refuses (wrong type, wrong number of values) never will.
            raise WriterError("sqlite: batch %s has a bad row: %s" % (batch_id, exc), permanent=True) from None
        return True

    def delete_before(self, day, chunk=50000):
        """Delete the flows whose `first` is before 00:00 UTC of `day`; returns how many.

        In chunks, each its own transaction: a writer waits for one chunk at most, not a day.
        """
        total = 0
        while True:
            with self._conn:
                n = self._conn.execute('DELETE FROM flows WHERE rowid IN (SELECT rowid FROM flows WHERE "first" < ?'
                                       ' LIMIT ?)', (day_start(day), chunk)).rowcount
            total += n
            if n < chunk:
                return total

    def maintain(self, now=None, wait=True, deadline=None):
        """Rollups (as far as `deadline` allows), then every retention once; returns the summary."""
        if self._conn is None:
            self.open()
        now = self.clock() if now is None else now
        s = rollup_maintain.maintain(self._conn, now, self.rollup_top, self.retention, wait=wait, deadline=deadline)
        r = rollup_maintain.apply_retention(self._conn, self.retention, now, self.events_retention)
        s["dropped"] += r["dropped"]
        s["deleted"].update(r["deleted"])
        if self.retention_days:
            s["deleted"]["flows"] = self.delete_before(retention_cutoff(self.retention_days, now))
        return s

    def housekeeping(self, now=None):
        """The hourly chores: raw retention, forget batch ids older than batch_keep_days."""
        if self._conn is None:
            self.open()
        now = self.clock() if now is None else now
        if self.retention_days:
            n = self.delete_before(retention_cutoff(self.retention_days, now))
            if n:
                log.info("sqlite: retention deleted %d flows", n)
        with self._conn:
            self._conn.execute("DELETE FROM batches WHERE stored_at < ?", (now - self.batch_keep_days * 86400.0,))

    def close(self):
        """Close the database."""
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None


def _statements(sql):
    # sqlite3.execute runs one statement; split the script at complete statements.
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise ValueError("unterminated SQL statement in a migration: %r" % buf[:80])
    return out
