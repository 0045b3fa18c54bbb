#!/usr/bin/env python3
"""Start-up cost of the compiled kernels in a fresh process: cold compile against warm cache.

    python3 bench/kernels.py [--runs 5]

Each measurement is a fresh `python -c` that loads every kernel (myason.kernels.load()), as an
agent or a collector processor does at start, with MYASON_CACHE_DIR pointing at a throw-away
directory: once cold (numba compiles everything and saves it), then --runs times warm (loaded
from the cache; the script checks that nothing was compiled). Beside them, in the same run: a
process that only imports numpy (what a start-up without the kernels costs anyway). Prints wall
and CPU seconds (user + sys of the child), medians for the repeated runs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOAD = ("import json; from myason import kernels; kernels.load(); "
        "print(json.dumps({'compiled': len(kernels.STATS['compiled']), 'loaded': len(kernels.STATS['loaded'])}))")


def fresh(code, env):
    """(wall s, cpu s, last stdout line) of `python -c code`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("python -c %r failed" % code)
    return wall, ru.ru_utime + ru.ru_stime, (out.strip().splitlines() or [""])[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="myason-kernels-") as tmp:
        env = dict(os.environ, MYASON_CACHE_DIR=tmp)
        wall, cpu, out = fresh(LOAD, env)
        stats = json.loads(out)
        print("cold (compile %d kernels, save): wall %6.2f s  cpu %6.2f s" % (stats["compiled"], wall, cpu))
        warm, base = [], []
        for _ in range(args.runs):
            wall, cpu, out = fresh(LOAD, env)
            stats = json.loads(out)
            if stats["compiled"]:
                raise SystemExit("a warm run compiled %d kernels" % stats["compiled"])
            warm.append((wall, cpu))
            wall, cpu, _ = fresh("import numpy", env)
            base.append((wall, cpu))
        for name, runs in (("warm (load %d kernels)" % stats["loaded"], warm), ("import numpy only", base)):
            print("%-31s wall %6.2f s  cpu %6.2f s  (median of %d)"
                  % (name + ":", statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs),
                     len(runs)))


if __name__ == "__main__":
    main()
