"""Query API benchmark: latency of a 1-day top-talkers request and of a host search through a real
`myason api` process over PostgreSQL holding >= 10 million flows spread over the last --days days
(default 1; with 2 or more, the default bound of a host search excludes the older flows).

    python3 bench/api.py [--dsn DSN] [--flows N] [--days N] [--requests N] [--keep] [--db NAME]

Without --dsn, scripts/services.sh starts a throw-away PostgreSQL 15. The flows go in through
the real PostgresWriter (binary COPY, rollup marks in the same transaction), in batches of
100k rows generated from a fixed seed: 20k internal hosts (10.x) with skewed activity, 200k
external ones, TCP/UDP/ICMP, enrichment columns filled. Then the writer's housekeeping indexes
the closed (yesterday's) partition, ANALYZE runs, and myason.store.rollup_maintain.maintain rolls
everything up. Three API processes serve the same database: one with its caches (the default
config; "cached" = the same request again), one with both caches off ("uncached": every
request executes), and one also without the default time bound (`default_bound: 0`: a host
search without after/ reads every stored flow instead of the last 24 h). All wait for whole
searches (`search_wait: 600`, never a 202). Host searches ask for a different busy host each
time. Prints median and p95 in milliseconds.
"""
import argparse
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH = 100_000
INTERNAL = 20_000
EXTERNAL = 200_000


def internal_host(i):
    return "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, (i & 255) or 1)


def make_batch(rnd, n, t0, t1, weights_cum):
    """n enriched flow rows with `first` uniform in [t0, t1); internal hosts picked by weight."""
    rows = []
    pick = rnd.choices
    hosts = pick(range(INTERNAL), cum_weights=weights_cum, k=n)
    for i in range(n):
        first = t0 + rnd.random() * (t1 - t0)
        h = hosts[i]
        src = internal_host(h)
        e = rnd.randrange(EXTERNAL)
        dst = "198.%d.%d.%d" % (18 + (e >> 16), e >> 8 & 255, (e & 255) or 1)
        r = rnd.random()
        proto, dport = (6, (443, 80, 22, 25, 8443)[e % 5]) if r < 0.7 else ((17, (53, 123, 443)[e % 3]) if r < 0.95
                                                                          else (1, 8 * 256))
        out = rnd.random() < 0.5
        if not out:
            src, dst = dst, src
        packets = 1 + int(rnd.expovariate(1 / 20))
        nbytes = packets * rnd.randrange(60, 1500)
        rows.append([src, dst, 1024 + (i * 7919 + h) % 60000 if proto != 1 else 0, dport, proto, 0, packets, nbytes,
                     first, first + rnd.random() * 30, 0x1b if proto == 6 else 0, "edge-%d" % (h % 4),
                     "eth%d" % (h % 2), 2, 3, 4, 0, "", 24, 24, 0, 0, "idle", first + 31, "127.0.0.1",
                     "outbound" if out else "inbound", "", "CZ", "US", 2852, 15169 + e % 7, "", "", "", ""])
    return rows


def fill(dsn, flows, now, seed=1, days=1):
    from myason.store import rollup, rollup_maintain
    from myason.store.postgresql import PostgresWriter
    rnd = random.Random(seed)
    weights, acc = [], 0.0
    for i in range(INTERNAL):
        acc += 1.0 / (i + 1) ** 0.8      # Zipf-like: a few hosts talk a lot
        weights.append(acc)
    w = PostgresWriter(dsn=dsn, maintain_interval=0)
    w.open()
    t_start, t0 = time.monotonic(), now - 86400 * days
    span = 86400 * days - 300
    for b in range(0, flows, BATCH):
        n = min(BATCH, flows - b)
        # Batches in time order, as a collector writes them.
        lo = t0 + span * b / flows
        hi = t0 + span * (b + n) / flows
        w.write("bench-%d" % b, make_batch(rnd, n, lo, hi, weights))
        if (b // BATCH) % 10 == 0:
            print("  %d/%d flows stored (%.0f s)" % (b + n, flows, time.monotonic() - t_start), flush=True)
    load_s = time.monotonic() - t_start
    t = time.monotonic()
    w.index_closed_partitions()
    w._conn.execute("ANALYZE flows")
    w._conn.commit()
    index_s = time.monotonic() - t
    t = time.monotonic()
    summary = rollup_maintain.maintain(w, now=now)
    maintain_s = time.monotonic() - t
    w.close()
    print("stored %d flows in %.0f s (%.0f flows/s); indexes + analyze %.0f s; rollup maintenance %.0f s (%s)"
          % (flows, load_s, flows / load_s, index_s, maintain_s, rollup.format_summary(summary)), flush=True)


UNCACHED = "query_cache_size: 0\nperiod_cache_size: 0\n"


def start_api(dsn, tmp, name, extra=""):
    from tests.support.api import ApiProcess
    # The latency of whole searches: a search is never answered 202 here.
    conf = "database: {type: postgresql, dsn: '%s'}\ntoken: bench\nsearch_wait: 600\n%s" % (dsn, extra)
    d = Path(tmp) / name
    d.mkdir()
    return ApiProcess(conf, d)


def timed(api, path):
    req = urllib.request.Request(api.base + path, headers={"Authorization": "Bearer bench"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        resp.read()
        assert resp.status == 200
    return (time.perf_counter() - t) * 1000


def figures(name, ms):
    ms = sorted(ms)
    if not ms:
        print("%-52s no samples" % name)
        return
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    print("%-52s n=%-3d median %8.1f ms   p95 %8.1f ms" % (name, len(ms), statistics.median(ms), p95), flush=True)


def busy_hosts(n):
    """The n busiest internal hosts by construction (the Zipf weights fall with the index)."""
    return [internal_host(i) for i in range(1, n + 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", help="PostgreSQL DSN (default: start one with scripts/services.sh)")
    ap.add_argument("--flows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=1, help="the flows span the last N days")
    ap.add_argument("--requests", type=int, default=30, help="requests per measured case")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    ap.add_argument("--db", help="measure an existing database (kept by --keep) instead of filling a new one")
    args = ap.parse_args()
    from bench.pgdb import bench_database
    apis = []
    with bench_database("bench_api", args.dsn, args.db, args.keep) as (dsn, created):
        if created:
            fill(dsn, args.flows, time.time(), days=args.days)
        hosts = busy_hosts(3 * args.requests + 2)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                apis.append(start_api(dsn, tmp, "cached"))
                apis.append(start_api(dsn, tmp, "uncached", UNCACHED))
                apis.append(start_api(dsn, tmp, "unbounded", UNCACHED + "default_bound: 0\n"))
                cached, uncached, unbounded = apis
                n = args.requests
                timed(cached, "top/talkers?period=1d")             # fill the cache
                figures("top talkers 1d, cached", [timed(cached, "top/talkers?period=1d") for _ in range(n)])
                figures("top talkers 1d, uncached", [timed(uncached, "top/talkers?period=1d") for _ in range(n)])
                timed(cached, "q/host/%s" % hosts[0])
                figures("host search (limit 100), cached", [timed(cached, "q/host/%s" % hosts[0]) for _ in range(n)])
                # The same hosts with and without the bound, alternating which goes first, so that
                # neither meets the other's pages in PostgreSQL's cache more often.
                bounded_ms, unbounded_ms = [], []
                for i, h in enumerate(hosts[1:n + 1]):
                    pair = [(bounded_ms, uncached), (unbounded_ms, unbounded)]
                    for out, api in (pair if i % 2 else pair[::-1]):
                        out.append(timed(api, "q/host/%s" % h))
                figures("host search, default bound after/24h, uncached", bounded_ms)
                figures("host search, no bound (default_bound: 0), uncached", unbounded_ms)
                figures("host search after/1h, uncached, distinct hosts",
                        [timed(uncached, "q/host/%s/after/1h" % h) for h in hosts[n + 1:2 * n + 1]])
                figures("traffic 1d by proto, uncached", [timed(uncached, "traffic?period=1d&by=proto") for _ in range(n)])
            finally:
                for api in apis:
                    api.stop()


if __name__ == "__main__":
    sys.exit(main())
