"""The postgresql writer: flows by COPY into a table partitioned by day, exactly once per batch.

Each batch is one transaction: its id goes into `batches` (primary key) first, then the rows
go in by COPY, then COMMIT. When the id is already there the batch was committed before (for
instance just before the connection was lost, so the client never saw the COMMIT succeed) and
it is skipped. Day partitions of `flows` are created on demand, in their own short transactions,
for the days a batch touches; retention drops whole partitions. The schema is the project's own
(myason/store/schema/postgresql/), migrated by open().

Binary COPY data is built by myason.store.pgcopy, not through psycopg's per-value adapters:
that is what makes it faster than text COPY (docs/performance.md).
"""
import contextlib
import datetime as dt
import functools
import logging
import re
import time

from myason.options import REQUIRED, check_int, check_str, parse_options
from myason.schema import ENRICHED_ROW_FIELDS, ROW_FIELDS
from myason.store.base import Writer, WriterError, encode_prepared, register
from myason.store.events import EVENT_COLUMNS, check_events_retention, dumps, event_columns
from myason.store.schema import load_migrations
from myason.store.sqlite import retention_cutoff
from myason.store import rollup, rollup_maintain
from myason.store.rollup_batch import batch_partials, rollup_buckets
from myason.store.rollup_sql import PostgresBackend, autocommit, drop_partition
from myason.store.pgcopy import (_ENCODE_ERRORS, COPY_COLUMNS, ENRICH_COPY_COLUMNS,  # noqa: F401 - re-exported
                                 encode_binary, encode_binary_enriched, encode_text, encode_text_enriched)

log = logging.getLogger("myason.store.postgresql")

# Serialises migrations between collectors sharing a database (any constant of our own).
_MIGRATION_LOCK = 0x6D7961736F6E
_PARTITION_RE = re.compile(r"^flows_p(\d{8})$")
# Btrees built on a day partition once the day is over (index name suffix, columns). The address
# indexes carry the time too: a host search with a time bound (the API's default after/24h) is then
# one exact index range per side, where with (src_ip) alone PostgreSQL ANDed the partition's
# lossy BRIN on "first" into the address bitmap and rechecked most of the day (docs/performance.md).
CLOSED_INDEXES = (("src_first", 'src_ip, "first"'), ("dst_first", 'dst_ip, "first"'), ("agent_first", 'agent, "first"'))
# Indexes of earlier releases that CLOSED_INDEXES replaces: dropped once their successors exist.
SUPERSEDED_INDEXES = (("src_ip", "src_first"), ("dst_ip", "dst_first"))

_NCOLS = len(ROW_FIELDS)
_NCOLS_ENRICHED = len(ENRICHED_ROW_FIELDS)
_CASTS = {"id": "::uuid", "detecttime": "", "category": "::text[]", "source_ip": "::inet[]",
          "target_ip": "::inet[]", "source_port": "::integer[]", "target_port": "::integer[]",
          "protocol": "::text[]", "node_name": "::text[]", "description": "", "agents": "::text[]"}
INSERT_EVENT_SQL = "INSERT INTO events (%s, event) VALUES (%s, %%s::jsonb) ON CONFLICT (id) DO NOTHING" % (
    ", ".join(EVENT_COLUMNS),
    ", ".join("to_timestamp(%s)" if c == "detecttime" else "%s" + _CASTS[c] for c in EVENT_COLUMNS))


def _copy_sql(fmt, enriched=False):
    cols = ", ".join('"%s"' % c for c in COPY_COLUMNS + (ENRICH_COPY_COLUMNS if enriched else ()))
    return "COPY flows (%s) FROM STDIN%s" % (cols, " (FORMAT BINARY)" if fmt == "binary" else "")


def event_params(event):
    """Parameters of INSERT_EVENT_SQL for one IDEA event."""
    cols = event_columns(event)
    return tuple(cols[c] for c in EVENT_COLUMNS) + (dumps(event).decode(),)


def prepare_batch(rows, events=(), top=25, columns=None):
    """A spool batch for this writer, encoded by the processor (see Writer.spool_encoder).

    Binary COPY data plus what write_prepared needs to know without the rows: their count, UTC
    days (partitions), the batch's rollup partials (myason.store.rollup_batch, `top` candidates
    per list) and the IDEA events. Raises what encode_binary raises for a value PostgreSQL could
    not take. columns: the rows already transposed (list(zip(*rows))), when the caller has them.
    """
    enriched = bool(rows) and len(rows[0]) == _NCOLS_ENRICHED
    ncols = _NCOLS_ENRICHED if enriched else _NCOLS
    if set(map(len, rows)) - {ncols}:
        raise ValueError("a row does not have %d values" % ncols)
    cols = columns if columns is not None or not rows else list(zip(*rows))
    totals, cands = batch_partials(rows, top, "postgresql", cols)
    days = batch_days(totals)
    header = {"rows": len(rows), "enriched": enriched, "days": [d.isoformat() for d in days],
              "totals": totals, "candidates": cands, "events": list(events)}
    return encode_prepared(header, encode_binary(rows, enriched, cols) if rows else b"")


def partition_name(day):
    """Name of the partition holding the flows whose `first` is on UTC `day`."""
    return "flows_p%s" % day.strftime("%Y%m%d")


def batch_days(totals):
    """UTC days (datetime.date, sorted) of the flows' `first` as PostgreSQL stores it, from the 1m totals.

    The totals' minutes are those of the times rounded to microseconds as COPY stores them, so a
    time in the last microsecond of a day is on the next day, whose partition then exists.
    """
    epoch = dt.date(1970, 1, 1)
    return [epoch + dt.timedelta(days=d) for d in sorted({t[0] // 86400 for t in totals})]


@register
class PostgresWriter(Writer):
    """Store flows in PostgreSQL (psycopg 3, COPY), one transaction per batch.

    Options: dsn (required): libpq connection string or URI; retention_days (default 0 =
    keep): drop the day partitions before 00:00 UTC that many days before today (hourly, by
    housekeeping()); copy (default 'binary'): 'binary' or 'text' COPY; batch_keep_days (default
    7): how long committed batch ids are remembered for retries; connect_timeout (default 10 s);
    retention ({raw, 1m, 15m, 1h, 1d: duration or 0}): per resolution, rollup partitions dropped
    after it (raw = retention_days, as a duration); rollup_top (default 25): keys kept per top-N
    list; maintain_interval (default 60 s; 0 = only `myason maintain`): period of the collector's
    maintenance thread (myason.collector.maintenance), which calls maintain() and housekeeping();
    events_retention (default 0 = keep): IDEA events detected longer ago are deleted by maintain().
    """

    name = "postgresql"
    stores_events = True
    SPEC = {
        "dsn": (REQUIRED, check_str(allow_empty=False, expected="a connection string")),
        "retention_days": (0, check_int(lo=0)),
        "copy": ("binary", check_str(pattern=re.compile(r"^(binary|text)\Z"), expected="'binary' or 'text'")),
        "batch_keep_days": (7, check_int(lo=1)),
        "connect_timeout": (10, check_int(lo=1)),
        **rollup.option_spec(),
        "events_retention": (0.0, check_events_retention),
    }

    def __init__(self, **options):
        super().__init__(**options)
        opts = parse_options(self.name, options, self.SPEC)
        self.dsn = opts["dsn"]
        rollup.apply_options(self, opts)
        self.events_retention = opts["events_retention"]
        self.copy_format = opts["copy"]
        self.batch_keep_days = opts["batch_keep_days"]
        self.connect_timeout = opts["connect_timeout"]
        self.clock = time.time
        self.skipped = 0
        self._conn = None
        self._partitions = set()
        self._rollups = None
        self._copy_sql = _copy_sql(self.copy_format)
        self._encode = encode_binary if self.copy_format == "binary" else encode_text

    # -- connection and schema ---------------------------------------------------------------

    def open(self, application="myason-collector"):
        """Connect, apply pending migrations, learn the existing partitions."""
        self.close()
        psycopg = _psycopg()
        try:
            self._conn = psycopg.connect(self.dsn, connect_timeout=self.connect_timeout,
                                         application_name=application)
            self.migrate()
            self._partitions = set(self.partitions())
            self._rollups = PostgresBackend(self._conn)
        except psycopg.Error as exc:
            self.close()
            raise WriterError("postgresql: cannot open: %s" % _short(exc)) from None

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self.open()
        return self._conn

    def migrate(self):
        """Apply the migrations not yet in schema_migrations, each in its own transaction."""
        conn = self._conn
        applied = []
        with _tx(conn):
            # Under the lock too: two connections opening at once (a writer and its maintenance)
            # both pass IF NOT EXISTS and the second fails on the catalogue's unique index.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                         " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        # A migration's warnings (e.g. 007: no CREATEROLE for the reader role) go to the log.
        conn.add_notice_handler(_log_warning)
        try:
            for version, name, sql in load_migrations("postgresql"):
                with _tx(conn):
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,)).fetchone():
                        continue
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied.append(version)
                log.info("postgresql: applied migration %03d_%s", version, name)
        finally:
            conn.remove_notice_handler(_log_warning)
        return applied

    def partitions(self):
        """The days (datetime.date) that have a partition of `flows`, oldest first."""
        rows = self._conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'flows'::regclass").fetchall()
        self._conn.commit()
        out = []
        for (name,) in rows:
            m = _PARTITION_RE.match(name)
            if m:
                out.append(dt.datetime.strptime(m.group(1), "%Y%m%d").date())
        return sorted(out)

    def _ensure_partitions(self, days):
        psycopg = _psycopg()
        for day in days:
            if day in self._partitions:
                continue
            nxt = day + dt.timedelta(days=1)
            try:
                with _tx(self._conn):
                    self._conn.execute(
                        "CREATE TABLE IF NOT EXISTS %s PARTITION OF flows FOR VALUES FROM ('%s 00:00:00+00')"
                        " TO ('%s 00:00:00+00')" % (partition_name(day), day.isoformat(), nxt.isoformat()))
            except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                pass    # another collector created it at the same moment
            self._partitions.add(day)

    # -- writing -----------------------------------------------------------------------------

    def write(self, batch_id, rows, events=()):
        """COPY the rows, insert the events and record the batch id in one transaction.

        A known batch id is skipped. Rows are plain (ROW_FIELDS) or enriched
        (ENRICHED_ROW_FIELDS), one kind per batch; events are IDEA dicts.
        """
        enriched = bool(rows) and len(rows[0]) == _NCOLS_ENRICHED
        ncols = _NCOLS_ENRICHED if enriched else _NCOLS
        try:
            if any(len(r) != ncols for r in rows):
                raise ValueError("a row does not have %d values" % ncols)
            if enriched:
                data = encode_binary_enriched(rows) if self.copy_format == "binary" else encode_text_enriched(rows)
            else:
                data = self._encode(rows)
            partials = batch_partials(rows, self.rollup_top, "postgresql")
            days = batch_days(partials[0])
            params = [event_params(e) for e in events]
        except _ENCODE_ERRORS + (KeyError, IndexError) as exc:
            raise WriterError("postgresql: batch %s has a bad row: %s" % (batch_id, exc), permanent=True) from None
        copy_sql = (_copy_sql(self.copy_format, True) if enriched else self._copy_sql) if rows else None
        return self._store(batch_id, len(rows), copy_sql, data, days, partials, params)

    @classmethod
    def spool_encoder(cls, options):
        """prepare_batch (with the writer's rollup_top) when it copies in binary (the default), else None."""
        if options.get("copy", "binary") != "binary":
            return None
        return functools.partial(prepare_batch, top=cls(**options).rollup_top)

    def write_prepared(self, batch_id, header, payload):
        """Store a batch made by prepare_batch: the COPY data is ready, days and minutes known."""
        try:
            days = [dt.date.fromisoformat(d) for d in header["days"]]
            if "totals" in header:
                partials = (header["totals"], header["candidates"])
            else:
                # Prepared by an earlier collector: minutes marked for a rebuild from raw flows.
                partials = [int(m) for m in header["minutes"]]
            params = [event_params(e) for e in header.get("events", ())]
            n = header["rows"]
            copy_sql = _copy_sql("binary", bool(header["enriched"])) if n else None
        except (KeyError, TypeError, ValueError) + _ENCODE_ERRORS as exc:
            raise WriterError("postgresql: prepared batch %s is damaged: %s" % (batch_id, exc),
                              permanent=True) from None
        return self._store(batch_id, n, copy_sql, payload, days, partials, params)

    def _store(self, batch_id, nrows, copy_sql, data, days, partials, params):
        psycopg = _psycopg()
        conn = self._connection()
        try:
            self._ensure_partitions(days)
            if isinstance(partials, tuple):
                self._rollups.ensure_partitions(rollup_buckets(partials[0]))
            with conn.cursor() as cur:
                cur.execute("INSERT INTO batches (batch_id, rows) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (batch_id, nrows))
                if cur.rowcount == 0:
                    conn.rollback()
                    self.skipped += 1
                    return False
                if nrows:
                    with cur.copy(copy_sql) as copy:
                        copy.write(data)
                    # Same transaction as the rows: the rollups count a batch once or not at all.
                    if isinstance(partials, tuple):
                        self._rollups.add_batch(*partials)
                    else:
                        cur.execute("INSERT INTO rollup_dirty (bucket) SELECT to_timestamp(m)"
                                    " FROM unnest(%s::bigint[]) AS m", (partials,))
                if params:
                    cur.executemany(INSERT_EVENT_SQL, params)
            self._commit(conn)
        except psycopg.Error as exc:
            raise self._error(batch_id, exc) from None
        return True

    def _commit(self, conn):
        # Separate so the tests can lose the connection exactly around COMMIT.
        conn.commit()

    def _error(self, batch_id, exc):
        psycopg = _psycopg()
        try:
            if not self._conn.closed:
                self._conn.rollback()
        except psycopg.Error:
            pass
        if self._conn.closed or self._conn.broken:
            self.close()
        if isinstance(exc, psycopg.errors.CheckViolation) and "no partition" in str(exc):
            # Someone dropped a partition we thought was there: forget them and retry.
            self._partitions.clear()
            return WriterError("postgresql: %s" % _short(exc))
        if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
            return WriterError("postgresql: batch %s refused: %s" % (batch_id, _short(exc)), permanent=True)
        # Connection lost, server shutting down, locks, privileges, schema trouble: a person or
        # time can fix these, so the batch stays in the spool.
        return WriterError("postgresql: %s" % _short(exc))

    # -- maintenance (its own connection: myason.collector.maintenance, `myason maintain`) ------

    def drop_partitions_before(self, day):
        """Drop every day partition before UTC `day` (a datetime.date); returns the days dropped.

        Detached concurrently first, so the writers' COPY into `flows` never waits for the drop.
        """
        dropped = []
        for d in self.partitions():
            if d >= day:
                break
            drop_partition(self._conn, "flows", partition_name(d))
            self._partitions.discard(d)
            dropped.append(d)
            log.info("postgresql: retention dropped partition %s", partition_name(d))
        return dropped

    def index_closed_partitions(self, today=None):
        """Build the address and (agent, first) btrees on partitions before UTC `today`; returns them.

        The partition being written has only the BRIN index on time (see migration 002): btrees
        on random addresses would cut the COPY rate by about two thirds. Built concurrently, so
        late flows of that day are not held up while an index is built.
        """
        if today is None:
            today = dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc).date()
        have = {r[0] for r in self._conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename LIKE 'flows_p%'").fetchall()}
        self._conn.commit()
        built = []
        for day in self.partitions():
            if day >= today:
                break
            part = partition_name(day)
            for suffix, cols in CLOSED_INDEXES:
                name = "%s_%s_idx" % (part, suffix)
                if name in have:
                    continue
                with autocommit(self._conn):
                    # A concurrent build that failed leaves an invalid index behind: start over.
                    self._conn.execute("DROP INDEX CONCURRENTLY IF EXISTS %s" % name)
                    self._conn.execute("CREATE INDEX CONCURRENTLY %s ON %s (%s)" % (name, part, cols))
                built.append(name)
                log.info("postgresql: indexed closed partition: %s", name)
            for old, successor in SUPERSEDED_INDEXES:
                name = "%s_%s_idx" % (part, old)
                if name in have and ("%s_%s_idx" % (part, successor) in have or "%s_%s_idx" % (part, successor) in built):
                    with autocommit(self._conn):
                        self._conn.execute("DROP INDEX CONCURRENTLY IF EXISTS %s" % name)
                    log.info("postgresql: dropped %s (superseded by %s_%s_idx)", name, part, successor)
        return built

    def maintain(self, now=None, wait=True, deadline=None):
        """Rollups (as far as `deadline` allows), then every retention once; returns the summary.

        See rollup_maintain.maintain; another maintainer of the same database makes it return at once
        with summary["busy"] when not `wait`.
        """
        self._connection()
        now = self.clock() if now is None else now
        s = rollup_maintain.maintain(self._conn, now, self.rollup_top, self.retention, wait=wait, deadline=deadline)
        if s["busy"]:
            return s
        r = rollup_maintain.apply_retention(self._conn, self.retention, now, self.events_retention)
        s["dropped"] += r["dropped"]
        s["deleted"].update(r["deleted"])
        if self.retention_days:
            s["dropped"] += [partition_name(d) for d in
                             self.drop_partitions_before(retention_cutoff(self.retention_days, now))]
        return s

    def housekeeping(self, now=None):
        """The hourly chores: raw retention, closed partitions' btrees, batch ids older than batch_keep_days."""
        self._connection()
        now = self.clock() if now is None else now
        if self.retention_days:
            self.drop_partitions_before(retention_cutoff(self.retention_days, now))
        self.index_closed_partitions()
        with _tx(self._conn):
            self._conn.execute("DELETE FROM batches WHERE stored_at < now() - make_interval(days => %s)",
                               (self.batch_keep_days,))

    def close(self):
        """Disconnect."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection must not raise
                pass
            self._conn = None


@contextlib.contextmanager
def _tx(conn):
    # The connection is not in autocommit: its first statement opens a transaction, ended here.
    try:
        yield
    except BaseException:
        try:
            if not conn.closed:
                conn.rollback()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        raise
    conn.commit()


def _psycopg():
    # Imported on first use so the other writers work without the driver.
    import psycopg
    return psycopg


def _log_warning(diag):
    # Notices (IF NOT EXISTS ... skipping) are routine; warnings are for the operator.
    if diag.severity_nonlocalized == "WARNING":
        log.warning("postgresql: %s", diag.message_primary)


def _short(exc):
    return " ".join(str(exc).split())[:300]
