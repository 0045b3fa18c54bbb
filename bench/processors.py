#!/usr/bin/env python3
"""Collector processors: threads or processes? Decrypt + decode + validate the same datagrams with
1 thread, N threads and N processes, and print flows/s of each (median of --runs).

usage: bench/processors.py [--workers 2] [--datagrams 4000] [--flows 28] [--runs 3]

Processes receive their datagrams through a multiprocessing queue in lists (what the listener
would hand over) and return only counts, so the figure includes the cost of moving the input
between processes but not of sending rows back (in a process design each process would write its
batches to the spools itself).
"""
import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet, MultiFernet  # noqa: E402

from myason import wire  # noqa: E402
from myason.collector.keystore import Keystore  # noqa: E402
from myason.collector.datagram import DatagramProcessor  # noqa: E402

AGENTS = 8


def make_datagrams(n, flows, key_by_agent):
    rnd = random.Random(1)
    now = time.time()
    out = []
    for i in range(n):
        agent = "a%d" % (i % AGENTS)
        rows = []
        for _ in range(flows):
            packets = rnd.randrange(1, 50)
            rows.append(["10.%d.%d.%d" % (rnd.randrange(256), rnd.randrange(256), rnd.randrange(1, 255)),
                         "192.0.2.%d" % rnd.randrange(1, 255), rnd.randrange(1024, 65535), 443, 6, 0,
                         packets, packets * rnd.randrange(40, 1500), now - 5, now - 1, 27, agent, "eth0",
                         2, 0, 4, 0, "", 0, 0, 0, 0, "fin"])
        out.append(wire.encode_datagram(rows, agent, i // AGENTS, key_by_agent[agent], sent=now))
    return out


def keystore(keys):
    return Keystore({a: ([k], None) for a, k in keys.items()})


def by_agent(dgrams, parts):
    # The collector routes each agent to one processor; do the same.
    out = [[] for _ in range(parts)]
    for d in dgrams:
        out[int(wire.peek_agent(d)[1:]) % parts].append(d)
    return out


def run_threads(dgrams, keys, n):
    parts = by_agent(dgrams, n)
    procs = [DatagramProcessor(keystore(keys), ttl=3600) for _ in range(n)]
    counts = [0] * n

    def work(i):
        h = procs[i].handle
        for d in parts[i]:
            counts[i] += len(h(d, "127.0.0.1", time.time()))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - t0


def _proc_main(keys, inq, outq):
    proc = DatagramProcessor(keystore(keys), ttl=3600)
    n = 0
    while True:
        items = inq.get()
        if items is None:
            break
        for d in items:
            n += len(proc.handle(d, "127.0.0.1", time.time()))
    outq.put(n)


def run_processes(dgrams, keys, n, chunk=64):
    parts = by_agent(dgrams, n)
    inqs = [mp.Queue() for _ in range(n)]
    outq = mp.Queue()
    workers = [mp.Process(target=_proc_main, args=(keys, q, outq)) for q in inqs]
    for w in workers:
        w.start()
    time.sleep(0.5)                     # let them import before the clock starts
    t0 = time.perf_counter()
    for q, part in zip(inqs, parts):
        for i in range(0, len(part), chunk):
            q.put(part[i:i + chunk])
        q.put(None)
    total = sum(outq.get() for _ in workers)
    dt = time.perf_counter() - t0
    for w in workers:
        w.join()
    return total, dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--datagrams", type=int, default=4000)
    ap.add_argument("--flows", type=int, default=28, help="flows per datagram (28 ~ 1400-byte datagrams)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    keys = {"a%d" % i: Fernet.generate_key() for i in range(AGENTS)}
    dgrams = make_datagrams(args.datagrams, args.flows, {a: MultiFernet([Fernet(k)]) for a, k in keys.items()})
    expected = args.datagrams * args.flows
    cases = [("1 thread", lambda: run_threads(dgrams, keys, 1)),
             ("%d threads" % args.workers, lambda: run_threads(dgrams, keys, args.workers)),
             ("%d processes" % args.workers, lambda: run_processes(dgrams, keys, args.workers))]
    print("cpus: %d, datagrams: %d x %d flows" % (os.cpu_count(), args.datagrams, args.flows))
    results = {}
    for _ in range(args.runs):
        for name, fn in cases:
            flows, dt = fn()
            if flows != expected:
                raise SystemExit("%s stored %d flows, expected %d" % (name, flows, expected))
            results.setdefault(name, []).append(flows / dt)
    base = statistics.median(results["1 thread"])
    for name, rates in results.items():
        med = statistics.median(rates)
        print("%-14s %10.0f flows/s (median of %d)  x%.2f of 1 thread" % (name, med, len(rates), med / base))


if __name__ == "__main__":
    main()
