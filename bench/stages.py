#!/usr/bin/env python3
"""Per-flow cost of each collector stage, in one process, on the benchmark's own datagrams.

    python3 bench/stages.py [--flows 200000] [--size 8192] [--runs 5]

Stages, in the order a processor runs them: decode (peek agent, Fernet decrypt, inflate, JSON,
body check), validate, append (received time and exporter), enrich (default pipeline), detect
(default detectors), prepare (the PostgreSQL writer's binary COPY batch: what the processor
spools), spool (write + fsync + rename into incoming/), and, with --pg DSN, the writer's
write_prepared into a real PostgreSQL (client + server). Figures are medians of --runs in µs
per flow, with the share of the processor total, and a reference measured in the same run
(struct.pack of 8 integers per flow) so that figures from different runs can be compared as
ratios on a machine whose speed drifts.
"""
import argparse
import gc
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _reference(n):
    pack = struct.Struct("<8q").pack
    t0 = time.perf_counter()
    for i in range(n):
        pack(i, i, i, i, i, i, i, i)
    return (time.perf_counter() - t0) / n * 1e6


def measure(args):
    """{stage: [µs per flow per run]}"""
    from cryptography.fernet import Fernet
    from bench.collector import AGENTS, generate, load_datagrams
    from myason.collector.keystore import Keystore
    from myason.collector.datagram import DatagramProcessor
    from myason.collector.spool import Spool
    from myason.detect import build_detectors
    from myason.enrich import build_pipeline
    from myason.store.postgresql import prepare_batch

    work = Path(tempfile.mkdtemp(prefix="myason-stages."))
    keys = {"bench-%d" % i: Fernet.generate_key().decode() for i in range(AGENTS)}
    (work / "keystore").write_text("".join("%s %s\n" % kv for kv in sorted(keys.items())))
    os.chmod(work / "keystore", 0o600)
    generate(work / "load.bin", keys, args.flows, args.size)
    items = load_datagrams(work / "load.bin")
    nflows = sum(f for _, f, _ in items)
    addr = ("127.0.0.1", 40000)
    out = {k: [] for k in ("decode", "validate", "append", "enrich", "detect", "prepare", "spool", "reference")}
    if args.pg:
        out["pg_write"] = []
    gc.freeze()
    if args.gc == "off":
        gc.disable()
    else:
        gc.set_threshold(20000, 20, 20)
    for run in range(args.runs):
        ks = Keystore.load(str(work / "keystore"))
        dp = DatagramProcessor(ks, ttl=3600.0)
        pipeline = build_pipeline({})
        detectors = build_detectors({})
        now = time.time()
        # decode + validate + append, split by timing decode alone first.
        from myason import wire
        t0 = time.perf_counter()
        batches = []
        for _a, _f, d in items:
            agent = wire.peek_agent(d)
            k = ks.keys_for(agent)
            batches.append(wire.decode_datagram(d, lambda _x, k=k: k, ttl=3600.0, now=now))
        t1 = time.perf_counter()
        from myason.collector.validate import DEFAULT_LIMITS, validate_rows
        for b in batches:
            validate_rows(b.rows, b.agent, b.sent, now, DEFAULT_LIMITS)
        t2 = time.perf_counter()
        rows = []
        tail = (now, addr[0])
        for b in batches:
            for r in b.rows:        # in place, as DatagramProcessor.handle does
                r.extend(tail)
            rows.extend(b.rows)
        t3 = time.perf_counter()
        # The real handle() for consistency: same rows as decode+validate+append.
        assert sum(len(dp.handle(d, addr[0], now)) for _a, _f, d in items) == nflows
        chunks = [rows[i:i + 5000] for i in range(0, len(rows), 5000)]
        t4 = time.perf_counter()
        for c in chunks:
            pipeline.enrich(c)
        t5 = time.perf_counter()
        for c in chunks:
            detectors.feed_rows(c)
        t6 = time.perf_counter()
        prepared = [prepare_batch(c, ()) for c in chunks]
        t7 = time.perf_counter()
        spool = Spool(str(work / ("spool-%d" % run)), fsync=True)
        for p in prepared:
            spool.put(p)
        t8 = time.perf_counter()
        us = 1e6 / nflows
        for k, v in (("decode", t1 - t0), ("validate", t2 - t1), ("append", t3 - t2), ("enrich", t5 - t4),
                     ("detect", t6 - t5), ("prepare", t7 - t6), ("spool", t8 - t7)):
            out[k].append(v * us)
        out["reference"].append(_reference(nflows))
        if args.pg:
            out["pg_write"].append(_pg_write(args.pg, prepared, nflows))
        pipeline.close()
        del batches, rows, chunks, prepared
    return nflows, len(items), out


def _pg_write(dsn, prepared, nflows):
    from myason.store.base import decode_prepared
    from myason.store.postgresql import PostgresWriter
    w = PostgresWriter(dsn=dsn, maintain_interval=0)
    w.open()
    t0 = time.perf_counter()
    for i, p in enumerate(prepared):
        header, payload = decode_prepared(p)
        w.write_prepared("stage-%d-%d" % (time.time_ns(), i), header, payload)
    t = time.perf_counter() - t0
    w.close()
    return t / nflows * 1e6


def main(argv=None):
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=8192, help="max_datagram of the generated load")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gc", choices=("tuned", "off"), default="tuned",
                    help="the processors' garbage collector: tuned thresholds, or off (periodic collections)")
    ap.add_argument("--pg", metavar="DSN", help="also time write_prepared into this PostgreSQL ('auto': start one)")
    args = ap.parse_args(argv)
    if args.pg == "auto":
        from bench.pgdb import bench_database
        with bench_database("bench_stages") as (dsn, _):
            args.pg = dsn
            nflows, ndgrams, out = measure(args)
    else:
        nflows, ndgrams, out = measure(args)
    med = {k: statistics.median(v) for k, v in out.items()}
    proc = sum(med[k] for k in ("decode", "validate", "append", "enrich", "detect", "prepare", "spool"))
    print("# %d flows in %d datagrams of <= %d B, median of %d runs, µs per flow" % (nflows, ndgrams, args.size, args.runs))
    for k, v in med.items():
        share = "%5.1f%%" % (100 * v / proc) if k not in ("reference", "pg_write") else "      "
        print("%-10s %7.3f %s  x%.1f of reference" % (k, v, share, v / med["reference"]))
    print("%-10s %7.3f  -> %.0f flows/s per core" % ("processor", proc, 1e6 / proc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
