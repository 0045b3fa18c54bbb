"""The SQL of rollup maintenance for SQLite and PostgreSQL (used by myason.store.rollup).

One template per statement; the dialects differ only in how a time parameter is written, how a
bucket is computed and how an address becomes text. Values always go in as parameters; the only
things formatted into SQL are our own constants (table names, bucket sizes, partition bounds
computed from integers, since DDL takes no parameters).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging

from myason.store.rollup import (DIMENSIONS, FINER, PG_LOCK, PG_MEMORY, PORT_PROTOCOLS, RAW_CHUNK, RESOLUTIONS,
                                  partition_of, period_of_partition, service_ports)
from myason.store.rollup_batch import CAND_COLUMNS, coarse_totals

log = logging.getLogger("myason.store.rollup")

_TOTAL_COLS = "bucket, agent, if_name, proto, direction, bytes, packets, flows"
_TOP_COLS = "bucket, agent, dimension, key, bytes, packets, flows, rank"


def service_port(proto="proto", src="src_port", dst="dst_port") -> str:
    """SQL (both dialects) of a flow's service port from its columns; NULL for a protocol without ports.

    The side that is a service port (below 1024, or a registered one of rollup.service_ports())
    when only one is, else the lower of the two (docs/api.md, "Top lists").
    """
    known = ", ".join(str(p) for p in service_ports())
    src_ok = "(%s < 1024 OR %s IN (%s))" % (src, src, known)
    dst_ok = "(%s < 1024 OR %s IN (%s))" % (dst, dst, known)
    return ("CASE WHEN %(proto)s NOT IN (%(protos)s) THEN NULL WHEN %(s_ok)s AND NOT %(d_ok)s THEN %(s)s"
            " WHEN %(d_ok)s AND NOT %(s_ok)s THEN %(d)s WHEN %(s)s < %(d)s THEN %(s)s ELSE %(d)s END"
            % {"proto": proto, "protos": ", ".join(str(p) for p in PORT_PROTOCOLS), "s_ok": src_ok,
               "d_ok": dst_ok, "s": src, "d": dst})


def _key_case(ip):
    # A dimension's key as text; NULL (skipped) for an unknown country or ASN 0, or no service port.
    parts = []
    for d in DIMENSIONS:
        col = "f.%s" % d
        if d == "service_port":
            expr = "CAST(%s AS TEXT)" % service_port("f.proto", "f.src_port", "f.dst_port")
        elif d.endswith("_ip"):
            expr = ip % col
        elif d.endswith("_country"):
            expr = "NULLIF(%s, '')" % col
        elif d.endswith("_asn"):
            expr = "NULLIF(CAST(%s AS TEXT), '0')" % col
        else:
            expr = "CAST(%s AS TEXT)" % col
        parts.append("WHEN '%s' THEN %s" % (d, expr))
    return "CASE d.dimension %s END" % " ".join(parts)


_DIMS = " UNION ALL ".join("SELECT '%s' AS dimension" % d for d in DIMENSIONS)


class _Dialect:
    """SQL templates; subclasses say how times, buckets and addresses are written."""

    kind = ""
    t = "%s"                    # a time parameter (Unix seconds)
    ip = "%s"                   # an address column as text
    collate = ""
    read_bucket = "bucket"

    def bucket(self, col, step):
        raise NotImplementedError

    def totals_raw(self):
        return ('INSERT INTO rollup_1m (%s) SELECT %s, agent, if_name, proto, direction, SUM(bytes), SUM(packets),'
                ' COUNT(*) FROM flows WHERE "first" >= %s AND "first" < %s GROUP BY 1, 2, 3, 4, 5'
                % (_TOTAL_COLS, self.bucket('"first"', 60), self.t, self.t))

    def totals_coarse(self, res):
        return ("INSERT INTO rollup_%s (%s) SELECT %s, agent, if_name, proto, direction, SUM(bytes), SUM(packets),"
                " SUM(flows) FROM rollup_1m WHERE bucket >= %s AND bucket < %s GROUP BY 1, 2, 3, 4, 5"
                % (res, _TOTAL_COLS, self.bucket("bucket", RESOLUTIONS[res]), self.t, self.t))

    def tops_raw(self):
        # 1m top-N from raw flows: one scan crossed with the dimensions; per-agent sums, then '*'.
        return (
            "INSERT INTO rollup_top_1m (%(cols)s)"
            " WITH k AS (SELECT %(bucket)s AS bucket, f.agent AS agent, d.dimension AS dimension,"
            " %(key)s AS key, f.bytes AS bytes, f.packets AS packets"
            " FROM flows f CROSS JOIN (%(dims)s) d WHERE f.\"first\" >= %(t)s AND f.\"first\" < %(t)s),"
            " a AS (SELECT bucket, agent, dimension, key, SUM(bytes) AS bytes, SUM(packets) AS packets,"
            " COUNT(*) AS flows FROM k WHERE key IS NOT NULL GROUP BY bucket, agent, dimension, key),"
            " u AS (SELECT bucket, agent, dimension, key, bytes, packets, flows FROM a UNION ALL"
            " SELECT bucket, '*', dimension, key, SUM(bytes), SUM(packets), SUM(flows) FROM a"
            " GROUP BY bucket, dimension, key),"
            " %(rank)s"
            % {"cols": _TOP_COLS, "bucket": self.bucket('f."first"', 60), "key": _key_case(self.ip),
               "dims": _DIMS, "t": self.t, "rank": self._rank("u")})

    def _rank(self, source, into=""):
        # The last CTE and the SELECT: rank 1 = most bytes, ties by key (byte order); keep rank <= top.
        return ("r AS (SELECT bucket, agent, dimension, key, bytes, packets, flows, ROW_NUMBER() OVER"
                " (PARTITION BY bucket, agent, dimension ORDER BY bytes DESC, key%s) AS rank FROM %s)"
                " %sSELECT %s FROM r WHERE rank <= %%s" % (self.collate, source, into, _TOP_COLS))

    def tops_from(self, res, finer):
        # A coarse top-N from the finer level's stored lists (see docs/rollups.md for the bound).
        return ("INSERT INTO rollup_top_%s (%s) WITH s AS (SELECT %s AS bucket, agent, dimension, key,"
                " SUM(bytes) AS bytes, SUM(packets) AS packets, SUM(flows) AS flows FROM rollup_top_%s"
                " WHERE bucket >= %s AND bucket < %s GROUP BY 1, 2, 3, 4), %s"
                % (res, _TOP_COLS, self.bucket("bucket", RESOLUTIONS[res]), finer, self.t, self.t,
                   self._rank("s")))

    def delete_range(self, table):
        return "DELETE FROM %s WHERE bucket >= %s AND bucket < %s" % (table, self.t, self.t)

    def finalize_rank(self):
        # The 1m lists of the summed candidates (rollup_fin): each agent's, and '*'.
        return "INSERT INTO rollup_top_1m (%s) WITH %s" % (_TOP_COLS, self._rank("rollup_fin"))

    def oldest(self, table):
        # MIN of the column itself, so the index on bucket answers it.
        return "SELECT %s FROM (SELECT MIN(bucket) AS bucket FROM %s) m" % (self.read_bucket, table)


class _Backend:
    """Maintenance operations on one connection (see myason.store.rollup_maintain.maintain)."""

    def __init__(self, conn, dialect):
        self.conn = conn
        self.d = dialect
        self._sql = {}

    def q(self, sql):
        return sql

    def sql(self, name, *args):
        key = (name,) + args
        if key not in self._sql:
            self._sql[key] = self.q(getattr(self.d, name)(*args))
        return self._sql[key]

    def recompute_raw(self, lo, hi, top):
        """Recompute 1m totals and tops of [lo, hi) from raw flows (inside a transaction)."""
        ex = self.conn.execute
        ex(self.sql("delete_range", "rollup_1m"), (lo, hi))
        ex(self.sql("delete_range", "rollup_top_1m"), (lo, hi))
        ex(self.sql("totals_raw"), (lo, hi))
        ex(self.sql("tops_raw"), (lo, hi, top))

    def recompute_coarse_totals(self, res, lo, hi):
        """Recompute `res` totals of [lo, hi) by summing 1m rows."""
        self.conn.execute(self.sql("delete_range", "rollup_%s" % res), (lo, hi))
        self.conn.execute(self.sql("totals_coarse", res), (lo, hi))

    def recompute_tops(self, res, lo, hi, top):
        """Recompute `res` top-N of [lo, hi) from the stored lists of the next finer resolution."""
        self.conn.execute(self.sql("delete_range", "rollup_top_%s" % res), (lo, hi))
        self.conn.execute(self.sql("tops_from", res, FINER[res]), (lo, hi, top))

    def oldest(self, table):
        """The oldest bucket (Unix seconds) in rollup_cand or rollup_dirty, None when empty."""
        row = self.conn.execute(self.sql("oldest", table)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def finalize(self, lo, hi, top):
        """Sum the candidates of [lo, hi) with the lists stored there, rank, keep `top`; delete them.

        Inside a transaction. Exactly the candidates read are deleted: a batch committed
        meanwhile leaves its own for the next run.
        """
        self._take_candidates(lo, hi)
        self.conn.execute(self.sql("finalize_rank"), (top,))


class SqliteDialect(_Dialect):
    """SQLite: times are REAL Unix seconds; buckets by integer division of whole seconds."""

    kind = "sqlite"

    def bucket(self, col, step):
        # Whole seconds first, so the bucket agrees exactly with rollup_batch.minute_buckets and the range filter.
        return "CAST(%s AS INTEGER) / %d * %d" % (col, step, step)


class PostgresDialect(_Dialect):
    """PostgreSQL: timestamptz, date_bin from the epoch, host() of inet."""

    kind = "postgresql"
    t = "to_timestamp(%s)"
    ip = "host(%s)"
    collate = ' COLLATE "C"'
    read_bucket = "extract(epoch FROM bucket)::bigint"

    def bucket(self, col, step):
        return "date_bin(interval '%d seconds', %s, timestamptz '1970-01-01 00:00:00+00')" % (step, col)

    def raw_1m(self):
        # 1m totals and tops in one scan of the raw flows: GROUPING SETS hashes each row once per
        # set (totals + one per dimension); GROUPING() tells the sets apart. Typed keys are
        # grouped, text is made only for the groups; '*' is summed from the per-agent groups.
        args = ("if_name", "proto", "direction") + DIMENSIONS
        def mask(grouped):
            return sum(1 << (len(args) - 1 - i) for i, a in enumerate(args) if a not in grouped)
        typed = {d: ("NULLIF(%s, '')" % d if d.endswith("_country") else "NULLIF(%s, 0)" % d if d.endswith("_asn")
                     else service_port() if d == "service_port" else d) for d in DIMENSIONS}
        text = {d: (self.ip % d if d.endswith("_ip") else d if d.endswith("_country") else "CAST(%s AS TEXT)" % d)
                for d in DIMENSIONS}
        sets = ["(bucket, agent, if_name, proto, direction)"] + ["(bucket, agent, %s)" % d for d in DIMENSIONS]
        tmask = mask(("if_name", "proto", "direction"))
        return (
            "WITH a AS (SELECT bucket, agent, GROUPING(%(args)s) AS g, %(args)s, SUM(bytes) AS bytes,"
            " SUM(packets) AS packets, COUNT(*) AS flows FROM (SELECT %(bucket)s AS bucket, agent, if_name, proto,"
            " direction, %(typed)s, bytes, packets FROM flows WHERE \"first\" >= %(t)s AND \"first\" < %(t)s) f"
            " GROUP BY GROUPING SETS (%(sets)s)),"
            " t AS (INSERT INTO rollup_1m (%(tcols)s) SELECT bucket, agent, if_name, proto, direction, bytes, packets,"
            " flows FROM a WHERE g = %(tmask)d),"
            " k AS (SELECT bucket, agent, CASE g %(dimcase)s END AS dimension, CASE g %(keycase)s END AS key, bytes,"
            " packets, flows FROM a WHERE g <> %(tmask)d),"
            " u AS (SELECT * FROM k WHERE key IS NOT NULL UNION ALL SELECT bucket, '*', dimension, key, SUM(bytes),"
            " SUM(packets), SUM(flows) FROM k WHERE key IS NOT NULL GROUP BY bucket, dimension, key),"
            " %(rank)s"
            % {"args": ", ".join(args), "bucket": self.bucket('"first"', 60),
               "typed": ", ".join("%s AS %s" % (typed[d], d) for d in DIMENSIONS), "t": self.t,
               "sets": ", ".join(sets), "tcols": _TOTAL_COLS, "tmask": tmask,
               "dimcase": " ".join("WHEN %d THEN '%s'" % (mask((d,)), d) for d in DIMENSIONS),
               "keycase": " ".join("WHEN %d THEN %s" % (mask((d,)), text[d]) for d in DIMENSIONS),
               "rank": self._rank("u", "INSERT INTO rollup_top_1m (%s) " % _TOP_COLS)})


class SqliteBackend(_Backend):
    """Maintenance on a sqlite3 connection in autocommit mode (isolation_level=None)."""

    def __init__(self, conn):
        super().__init__(conn, SqliteDialect())

    def add_batch(self, totals, candidates):
        """A stored batch's rollup partials (myason.store.rollup_batch), inside its transaction."""
        ex = self.conn.executemany
        for res, rows in [("1m", sorted(totals))] + sorted(coarse_totals(totals).items(), key=_res_order):
            ex("INSERT INTO rollup_%s VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, agent, if_name, proto,"
               " direction) DO UPDATE SET bytes = bytes + excluded.bytes, packets = packets + excluded.packets,"
               " flows = flows + excluded.flows" % res, rows)
        ex("INSERT INTO rollup_cand VALUES (?, ?, ?, ?, ?, ?, ?)", zip(*(candidates[c] for c in CAND_COLUMNS)))

    def drop_candidates(self, lo, hi):
        """Delete the candidates of [lo, hi) (their minutes were just rebuilt from raw flows)."""
        self.conn.execute("DELETE FROM rollup_cand WHERE bucket >= ? AND bucket < ?", (lo, hi))

    def _take_candidates(self, lo, hi):
        # SQLite serialises writers: inside BEGIN IMMEDIATE nothing is added meanwhile.
        ex = self.conn.execute
        ex("CREATE TEMP TABLE IF NOT EXISTS rollup_fin (bucket INTEGER, agent TEXT, dimension TEXT, key TEXT,"
           " bytes INTEGER, packets INTEGER, flows INTEGER)")
        ex("DELETE FROM temp.rollup_fin")
        ex("INSERT INTO temp.rollup_fin SELECT CAST(bucket AS INTEGER), agent, dimension, key, SUM(bytes), SUM(packets),"
           " SUM(flows) FROM (SELECT bucket, agent, dimension, key, bytes, packets, flows FROM rollup_cand"
           " WHERE bucket >= ? AND bucket < ? UNION ALL SELECT bucket, agent, dimension, key, bytes, packets, flows"
           " FROM rollup_top_1m WHERE bucket >= ? AND bucket < ?) GROUP BY 1, 2, 3, 4",
           (lo, hi, lo, hi))
        ex("DELETE FROM rollup_cand WHERE bucket >= ? AND bucket < ?", (lo, hi))
        ex("DELETE FROM rollup_top_1m WHERE bucket >= ? AND bucket < ?", (lo, hi))

    def q(self, sql):
        return sql.replace("%s", "?")

    def lock(self, wait):
        """SQLite serialises writers itself (BEGIN IMMEDIATE); nothing to take."""
        return True

    def unlock(self):
        """Nothing to release."""

    @contextlib.contextmanager
    def transaction(self, snapshot=False):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); one writer at a time, so one snapshot anyway."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def read_dirty(self, limit):
        """[(id, bucket)] of the oldest committed dirty marks."""
        return [(i, int(b)) for i, b in self.conn.execute(
            "SELECT id, bucket FROM rollup_dirty ORDER BY id LIMIT ?", (limit,))]

    def delete_dirty(self, ids):
        """Delete exactly these dirty marks."""
        self.conn.executemany("DELETE FROM rollup_dirty WHERE id = ?", [(i,) for i in ids])

    def ensure_partitions(self, buckets, totals=True):
        """No partitions in SQLite."""

    def add_pending(self, res, buckets):
        """Mark coarse buckets whose top-N must be recomputed once closed."""
        self.conn.executemany("INSERT OR IGNORE INTO rollup_pending (res, bucket) VALUES (?, ?)",
                              [(res, b) for b in buckets])

    def read_pending(self):
        """[(res, bucket)] waiting for their top-N."""
        return [(r, int(b)) for r, b in self.conn.execute("SELECT res, bucket FROM rollup_pending")]

    def delete_pending(self, items):
        """Forget these (res, bucket) pending marks."""
        self.conn.executemany("DELETE FROM rollup_pending WHERE res = ? AND bucket = ?", items)

    def set_state(self, name, value, now):
        """Record one rollup_state fact."""
        self.conn.execute("INSERT INTO rollup_state (name, value, updated) VALUES (?, ?, ?) ON CONFLICT (name)"
                          " DO UPDATE SET value = excluded.value, updated = excluded.updated", (name, value, now))

    def expire(self, res, cutoff, summary):
        """Delete `res` rollups and tops whose bucket is before cutoff."""
        for table in ("rollup_%s" % res, "rollup_top_%s" % res):
            with self.transaction():
                n = self.conn.execute("DELETE FROM %s WHERE bucket < ?" % table, (cutoff,)).rowcount
            summary["deleted"][table] = n

    def expire_health(self, cutoff):
        """Delete health samples before cutoff; returns how many."""
        with self.transaction():
            return self.conn.execute("DELETE FROM health_samples WHERE ts < ?", (cutoff,)).rowcount


class PostgresBackend(_Backend):
    """Maintenance on a psycopg 3 connection (not autocommit; each transaction ended here)."""

    def __init__(self, conn):
        super().__init__(conn, PostgresDialect())
        self._known = None

    def recompute_raw(self, lo, hi, top):
        """Recompute 1m totals and tops of [lo, hi) from raw flows, RAW_CHUNK seconds per statement."""
        ex = self.conn.execute
        ex(self.sql("delete_range", "rollup_1m"), (lo, hi))
        ex(self.sql("delete_range", "rollup_top_1m"), (lo, hi))
        # Bounded chunks keep the hash tables of one statement small (a backfill is one long range).
        for a in range(lo, hi, RAW_CHUNK):
            ex(self.sql("raw_1m"), (a, min(a + RAW_CHUNK, hi), top))

    def add_batch(self, totals, candidates):
        """A stored batch's rollup partials (myason.store.rollup_batch), inside its transaction.

        Totals are added to every resolution in one order (1m, 15m, 1h, 1d; rows sorted), so
        writers sharing rows lock them in the same order and never deadlock.
        """
        ex = self.conn.execute
        for res, rows in [("1m", sorted(totals))] + sorted(coarse_totals(totals).items(), key=_res_order):
            if rows:
                ex("INSERT INTO rollup_%s (%s) SELECT to_timestamp(b), a, i, p, d, x, y, z FROM unnest(%%s::bigint[],"
                   " %%s::text[], %%s::text[], %%s::smallint[], %%s::text[], %%s::bigint[], %%s::bigint[], %%s::bigint[])"
                   " AS u(b, a, i, p, d, x, y, z) ORDER BY 1, 2, 3, 4, 5 ON CONFLICT (bucket, agent, if_name, proto,"
                   " direction) DO UPDATE SET bytes = rollup_%s.bytes + excluded.bytes, packets = rollup_%s.packets"
                   " + excluded.packets, flows = rollup_%s.flows + excluded.flows"
                   % (res, _TOTAL_COLS, res, res, res), [list(c) for c in zip(*rows)])
        if candidates["key"]:
            ex("INSERT INTO rollup_cand (bucket, agent, dimension, key, bytes, packets, flows) SELECT to_timestamp(b),"
               " a, d, k, x, y, z FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::bigint[],"
               " %s::bigint[], %s::bigint[]) AS u(b, a, d, k, x, y, z)", [candidates[c] for c in CAND_COLUMNS])

    def drop_candidates(self, lo, hi):
        """Delete the candidates of [lo, hi) visible to this transaction's snapshot."""
        self.conn.execute("DELETE FROM rollup_cand WHERE bucket >= to_timestamp(%s) AND bucket < to_timestamp(%s)",
                          (lo, hi))

    def _take_candidates(self, lo, hi):
        # The candidates and the stored lists of [lo, hi), deleted and summed into rollup_fin in
        # one statement: exactly the candidates it saw are gone, later ones stay.
        ex = self.conn.execute
        ex("CREATE TEMP TABLE IF NOT EXISTS rollup_fin (bucket timestamptz, agent text, dimension text, key text,"
           " bytes bigint, packets bigint, flows bigint) ON COMMIT DELETE ROWS")
        ex("WITH c AS (DELETE FROM rollup_cand WHERE bucket >= to_timestamp(%s) AND bucket < to_timestamp(%s)"
           " RETURNING bucket, agent, dimension, key, bytes, packets, flows), o AS (DELETE FROM rollup_top_1m"
           " WHERE bucket >= to_timestamp(%s) AND bucket < to_timestamp(%s) RETURNING bucket, agent, dimension, key,"
           " bytes, packets, flows) INSERT INTO rollup_fin SELECT bucket, agent, dimension, key, SUM(bytes),"
           " SUM(packets), SUM(flows) FROM (SELECT * FROM c UNION ALL SELECT * FROM o) x"
           " GROUP BY 1, 2, 3, 4", (lo, hi, lo, hi))

    def lock(self, wait):
        """Take the session advisory lock of maintainers; False when busy and not waiting."""
        fn = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
        row = self.conn.execute("SELECT %s(%%s)" % fn, (_lock_key(),)).fetchone()
        self.conn.commit()
        return row[0] is not False

    def unlock(self):
        """Release the session advisory lock."""
        try:
            # A failed statement leaves the transaction aborted; the unlock must still run.
            self.conn.rollback()
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(),))
            self.conn.commit()
        except Exception:  # noqa: BLE001 - a broken connection has released it already
            log.debug("rollup: unlock failed", exc_info=True)

    @contextlib.contextmanager
    def transaction(self, snapshot=False):
        """The statements inside, then COMMIT (ROLLBACK on error).

        snapshot: REPEATABLE READ, every statement seeing the same committed data (a writer's
        concurrent change to a row this one changes then fails it: it is retried later).
        """
        if self.conn.autocommit:
            # A caller's autocommit connection: an explicit block keeps the steps atomic.
            with self.conn.transaction():
                self._begin(snapshot)
                yield
            return
        try:
            self._begin(snapshot)
            yield
        except BaseException:
            if not self.conn.closed:
                self.conn.rollback()
            raise
        self.conn.commit()

    def _begin(self, snapshot):
        if snapshot:
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # JIT compiles each of our many short statements for longer than they run; hashed
        # GROUPING SETS are planned only when their estimate fits the hash memory, else
        # one sort per set; the 1m ranking sorts ~5 groups per flow.
        self.conn.execute("SET LOCAL jit = off; SET LOCAL work_mem = '%s'; SET LOCAL hash_mem_multiplier = %d"
                          % PG_MEMORY)

    def read_dirty(self, limit):
        """[(id, bucket)] of the oldest committed dirty marks (in a transaction of its own)."""
        with self.transaction():
            return [tuple(r) for r in self.conn.execute(
                "SELECT id, extract(epoch FROM bucket)::bigint FROM rollup_dirty ORDER BY id LIMIT %s", (limit,))]

    def delete_dirty(self, ids):
        """Delete exactly these dirty marks."""
        self.conn.execute("DELETE FROM rollup_dirty WHERE id = ANY(%s)", (list(ids),))

    def _partitions(self):
        if self._known is None:
            rows = self.conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname LIKE 'rollup%%'").fetchall()
            self.conn.commit()
            self._known = {r[0] for r in rows}
        return self._known

    def ensure_partitions(self, buckets, totals=True):
        """Create the partitions of the tables these (res, bucket) go to, each in a short transaction."""
        import psycopg
        known = self._partitions()
        # No partition is shorter than a day: one bucket per (resolution, day) is enough.
        for res, b in sorted({(res, b // 86400 * 86400) for res, b in buckets}):
            for top in ((False, True) if totals else (True,)):
                name, lo, hi = partition_of(res, b, top)
                if name in known:
                    continue
                parent = "rollup_%s%s" % ("top_" if top else "", res)
                try:
                    with self.transaction():
                        self.conn.execute("CREATE TABLE IF NOT EXISTS %s PARTITION OF %s FOR VALUES FROM ('%s')"
                                          " TO ('%s')" % (name, parent, _iso(lo), _iso(hi)))
                except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                    pass    # made by a maintainer that does not share our lock (older version)
                known.add(name)

    def add_pending(self, res, buckets):
        """Mark coarse buckets whose top-N must be recomputed once closed."""
        self.conn.execute("INSERT INTO rollup_pending (res, bucket) SELECT %s, to_timestamp(b)"
                          " FROM unnest(%s::bigint[]) AS b ON CONFLICT DO NOTHING", (res, list(buckets)))

    def read_pending(self):
        """[(res, bucket)] waiting for their top-N."""
        with self.transaction():
            return [tuple(r) for r in self.conn.execute(
                "SELECT res, extract(epoch FROM bucket)::bigint FROM rollup_pending")]

    def delete_pending(self, items):
        """Forget these (res, bucket) pending marks."""
        with self.conn.cursor() as cur:
            cur.executemany("DELETE FROM rollup_pending WHERE res = %s AND bucket = to_timestamp(%s)", items)

    def set_state(self, name, value, now):
        """Record one rollup_state fact."""
        with self.transaction():
            self.conn.execute("INSERT INTO rollup_state (name, value, updated) VALUES (%s, %s, to_timestamp(%s))"
                              " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                              (name, value, now))

    def expire(self, res, cutoff, summary):
        """Drop the partitions of `res` rollups and tops that end at or before cutoff."""
        for name in sorted(self._partitions()):
            period = period_of_partition(name)
            if period is None or period[0] not in ("rollup_%s" % res, "rollup_top_%s" % res) or period[2] > cutoff:
                continue
            drop_partition(self.conn, period[0], name)
            self._known.discard(name)
            summary["dropped"].append(name)
            log.info("rollup: retention dropped partition %s", name)

    def expire_health(self, cutoff):
        """Delete health samples before cutoff; returns how many."""
        with self.transaction():
            return self.conn.execute("DELETE FROM health_samples WHERE ts < to_timestamp(%s)", (cutoff,)).rowcount


def _lock_key():
    return PG_LOCK


def _iso(t):
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")


@contextlib.contextmanager
def autocommit(conn):
    """psycopg: statements that cannot run in a transaction block (CONCURRENTLY) in between."""
    conn.commit()
    conn.autocommit = True
    try:
        yield
    finally:
        conn.autocommit = False


def drop_partition(conn, parent, name):
    """Detach partition `name` of `parent` concurrently, then drop it: the parent's writers never wait."""
    import psycopg
    with autocommit(conn):
        try:
            conn.execute("ALTER TABLE %s DETACH PARTITION %s CONCURRENTLY" % (parent, name))
        except psycopg.errors.UndefinedTable:
            return
        except psycopg.errors.ObjectNotInPrerequisiteState:
            # A detach interrupted earlier (the table is pending detach): finish it.
            conn.execute("ALTER TABLE %s DETACH PARTITION %s FINALIZE" % (parent, name))
        conn.execute("DROP TABLE IF EXISTS %s" % name)


def _res_order(item):
    return RESOLUTIONS[item[0]]


def backend(conn):
    """The maintenance backend for a sqlite3 or psycopg connection."""
    import sqlite3
    if isinstance(conn, sqlite3.Connection):
        return SqliteBackend(conn)
    return PostgresBackend(conn)
