"""Rollup maintenance benchmark: seconds and flows/s of `rollup_maintain.maintain` over a day of flows.

    python3 bench/rollup.py [--dsn DSN] [--flows N] [--repeat N] [--keep] [--db NAME]
                            [--sqlite-flows N] [--per-dimension]

Without --dsn, scripts/services.sh starts a throw-away PostgreSQL 15. N flows (default 2 M)
spread over one closed UTC day go in through the real PostgresWriter (binary COPY, rollup marks
in the batch transactions) in batches of 100k rows made by bench/api.py's generator (Zipf-like
internal hosts, uniform external ones and ports). The closed day is indexed and analysed as the
writer's housekeeping would. Then, --repeat times: the rollup tables are emptied and every minute
is marked dirty again (what the first maintenance after a backfill sees), and `maintain` runs
with `now` one hour after the day, so every 15m/1h/1d top-N is due too. Prints the median
seconds, flows/s of maintenance capacity, and the median seconds of each phase (the
maintenance backend's methods, per resolution). --per-dimension also times a plain GROUP BY of
the day per dimension of rollup.DIMENSIONS (a flows column, or for service_port, which is no
column, the expression the maintenance groups by: rollup_sql.service_port()). --sqlite-flows N
(default 200k; 0 = skip) does the same on SQLite.
"""
import argparse
import collections
import functools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.api import BATCH, INTERNAL, make_batch  # noqa: E402

DAY = 86400


def day_start():
    """Start of the UTC day before yesterday: closed, and inside any raw retention of >= 3 days."""
    return (int(time.time()) // DAY - 2) * DAY


def load(writer, flows, t0, seed=1):
    """Store `flows` rows over [t0, t0 + 1 day) through the writer, in time order like a collector."""
    rnd = random.Random(seed)
    weights, acc = [], 0.0
    for i in range(INTERNAL):
        acc += 1.0 / (i + 1) ** 0.8
        weights.append(acc)
    t = time.monotonic()
    for b in range(0, flows, BATCH):
        n = min(BATCH, flows - b)
        lo, hi = t0 + DAY * b / flows, t0 + DAY * (b + n) / flows
        writer.write("bench-%d" % b, make_batch(rnd, n, lo, hi, weights))
        if (b // BATCH) % 10 == 0:
            print("  %d/%d flows stored (%.0f s)" % (b + n, flows, time.monotonic() - t), flush=True)
    return time.monotonic() - t


class PhaseTimer:
    """Wraps the maintenance backend's methods to add up seconds per (method, resolution)."""

    NAMES = ("recompute_raw", "recompute_1m_totals", "recompute_1m_tops", "recompute_coarse_totals",
             "recompute_tops", "read_dirty", "delete_dirty", "ensure_partitions", "add_pending")

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self._saved = []

    def __enter__(self):
        from myason.store import rollup_sql
        for cls in (rollup_sql._Backend, rollup_sql.SqliteBackend, rollup_sql.PostgresBackend):
            for name in self.NAMES:
                if name in vars(cls):
                    self._saved.append((cls, name, vars(cls)[name]))
                    setattr(cls, name, self._wrap(name, vars(cls)[name]))
        return self

    def _wrap(self, name, fn):
        @functools.wraps(fn)
        def timed(db, *args, **kw):
            res = args[0] if args and isinstance(args[0], str) and args[0] in ("15m", "1h", "1d") else ""
            t = time.perf_counter()
            try:
                return fn(db, *args, **kw)
            finally:
                self.seconds[(name + " " + res).strip()] += time.perf_counter() - t
        return timed

    def __exit__(self, *exc):
        for cls, name, fn in reversed(self._saved):
            setattr(cls, name, fn)


def reset_pg(conn):
    """Empty the rollups and mark every minute of the stored flows dirty (a fresh backfill)."""
    conn.execute("TRUNCATE rollup_1m, rollup_15m, rollup_1h, rollup_1d, rollup_top_1m, rollup_top_15m,"
                 " rollup_top_1h, rollup_top_1d, rollup_dirty, rollup_pending")
    conn.execute("INSERT INTO rollup_dirty (bucket) SELECT DISTINCT date_bin('1 minute', \"first\","
                 " timestamptz '1970-01-01 00:00:00+00') FROM flows")
    conn.commit()


def reset_sqlite(conn):
    """The same for SQLite."""
    for t in ("rollup_1m", "rollup_15m", "rollup_1h", "rollup_1d", "rollup_top_1m", "rollup_top_15m",
              "rollup_top_1h", "rollup_top_1d", "rollup_dirty", "rollup_pending"):
        conn.execute("DELETE FROM %s" % t)
    conn.execute('INSERT INTO rollup_dirty (bucket) SELECT DISTINCT CAST("first" AS INTEGER) / 60 * 60 FROM flows')


def measure(name, conn, reset, flows, now, repeat, top):
    """Run maintain `repeat` times from a fresh backfill; print medians overall and per phase."""
    from myason.store import rollup, rollup_maintain
    totals, phases = [], collections.defaultdict(list)
    for i in range(repeat):
        reset(conn)
        with PhaseTimer() as pt:
            t = time.perf_counter()
            summary = rollup_maintain.maintain(conn, now=now, top=top, retention={})
            s = time.perf_counter() - t
        totals.append(s)
        for k, v in pt.seconds.items():
            phases[k].append(v)
        print("  %s run %d: %.1f s (%s)" % (name, i + 1, s, rollup.format_summary(summary)), flush=True)
    med = statistics.median(totals)
    print("%s: %d flows, maintain median %.1f s over %d runs (min %.1f, max %.1f) = %.0f flows/s of maintenance"
          " capacity" % (name, flows, med, repeat, min(totals), max(totals), flows / med), flush=True)
    for k in sorted(phases, key=lambda k: -statistics.median(phases[k])):
        print("  %-32s median %7.2f s" % (k, statistics.median(phases[k])), flush=True)
    return med


def dimension_key(d):
    """The SQL of dimension d's key over `flows`: a column, or service_port's expression (not a column)."""
    from myason.store.rollup_sql import service_port
    if d == "service_port":
        return service_port()
    return "host(%s)" % d if d.endswith("_ip") else d


def per_dimension(conn, t0):
    """Seconds of a plain GROUP BY (agent, key) over the day, per dimension (what one top costs)."""
    from myason.store.rollup import DIMENSIONS
    for d in DIMENSIONS:
        t = time.perf_counter()
        n = conn.execute("SELECT count(*) FROM (SELECT agent, %s AS key, sum(bytes) FROM flows WHERE \"first\" >="
                         " to_timestamp(%%s) AND \"first\" < to_timestamp(%%s) GROUP BY 1, 2) g" % dimension_key(d),
                         (t0, t0 + DAY)).fetchone()[0]
        conn.commit()
        print("  GROUP BY agent, %-12s %7.2f s  (%d groups)" % (d, time.perf_counter() - t, n), flush=True)


def bench_pg(args, t0, now):
    from bench.pgdb import bench_database
    from myason.store.postgresql import PostgresWriter
    with bench_database("bench_rollup", args.dsn, args.db, args.keep) as (dsn, created):
        w = PostgresWriter(dsn=dsn, maintain_interval=0)
        w.open()
        try:
            if created:
                load_s = load(w, args.flows, t0)
                print("stored %d flows in %.0f s" % (args.flows, load_s), flush=True)
                w.index_closed_partitions()
                w._conn.execute("ANALYZE flows")
                w._conn.commit()
            flows = w._conn.execute("SELECT count(*) FROM flows").fetchone()[0]
            w._conn.commit()
            if args.per_dimension:
                per_dimension(w._conn, t0)
            measure("postgresql", w._conn, reset_pg, flows, now, args.repeat, args.top)
        finally:
            w.close()


def bench_sqlite(args, t0, now):
    from myason.store.sqlite import SqliteWriter
    with tempfile.TemporaryDirectory() as tmp:
        w = SqliteWriter(path=str(Path(tmp) / "flows.db"), maintain_interval=0)
        w.open()
        try:
            load_s = load(w, args.sqlite_flows, t0)
            print("stored %d flows in SQLite in %.0f s" % (args.sqlite_flows, load_s), flush=True)
            measure("sqlite", w._conn, reset_sqlite, args.sqlite_flows, now, args.repeat, args.top)
        finally:
            w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", help="PostgreSQL DSN (default: start one with scripts/services.sh)")
    ap.add_argument("--flows", type=int, default=2_000_000, help="PostgreSQL flows (0 = skip PostgreSQL)")
    ap.add_argument("--sqlite-flows", type=int, default=200_000, help="SQLite flows (0 = skip SQLite)")
    ap.add_argument("--repeat", type=int, default=3, help="maintenance runs per database (median)")
    ap.add_argument("--top", type=int, default=25, help="keys per top-N list")
    ap.add_argument("--keep", action="store_true", help="keep the PostgreSQL benchmark database")
    ap.add_argument("--db", help="measure an existing database (kept by --keep) instead of filling a new one")
    ap.add_argument("--per-dimension", action="store_true", help="also time a GROUP BY per dimension (PostgreSQL)")
    args = ap.parse_args()
    t0 = day_start()
    now = t0 + DAY + 3600
    if args.flows or args.db:
        bench_pg(args, t0, now)
    if args.sqlite_flows:
        bench_sqlite(args, t0, now)


if __name__ == "__main__":
    sys.exit(main())
