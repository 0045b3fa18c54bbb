"""The compiled kernels' build: numba's cache, warmed once, is all a fresh process needs.

Observed in fresh interpreters, the way an agent or a collector processor starts after
scripts/install.sh: numba broadcasts a "numba:compile" event for every function it compiles and
a "numba:run_pass" event for every compiler pass. A cold cache shows them (so the test can
fail); a warm one must show none, even after every kernel has run through its Python side.
Takes one cold compilation (half a minute to a minute).
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from myason.kernels import registry

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(registry.load_numba() is None, reason="numba is not installed")

# Runs in a fresh interpreter: counts numba's compile events while loading the kernels and
# running each of them through its Python side; prints a JSON summary.
PROBE = r"""
import json, sys, time
started = time.perf_counter()
from numba.core import event

class Count(event.Listener):
    def __init__(self):
        self.n = 0
    def on_start(self, ev):
        self.n += 1
    def on_end(self, ev):
        pass

compiles, passes = Count(), Count()
event.register("numba:compile", compiles)
event.register("numba:run_pass", passes)
from myason import kernels
k = kernels.load()
loaded = time.perf_counter() - started
# Every kernel, called the way its Python side calls it.
from myason.agent import fastcache, fastdecode
from myason.store import influxdb, pgcopy
from myason.schema import ROW_FIELDS
frame = bytes.fromhex("ffffffffffff0000000000010800" "450000280001000040060000c0000201c0000202"
                      "04d2005000000000000000005002200000000000")
chunk = fastdecode.chunk_from_batch([(1.0, frame), (2.0, frame[:20])])
cache = fastcache.FastFlowCache(10)
cache.add_packets(chunk.ts, chunk.kw, chunk.iplen, chunk.flags, chunk.vlan, chunk.status,
                  chunk.ts[:0].astype("int64"), chunk.ts[:0])
cache.flush()
row = dict.fromkeys(ROW_FIELDS, 0)
row.update(src_ip="192.0.2.1", dst_ip="2001:db8::1", first=1.0, last=90.0, agent="a", if_name="e",
           next_hop="", end_reason="idle", exporter="192.0.2.9", packets=3, bytes=300)
rows = [tuple(row[f] for f in ROW_FIELDS)]
assert pgcopy._kernels() is kernels.load_numba() and pgcopy.encode_binary(rows) == pgcopy.encode_binary_python(rows)
assert influxdb.aggregate_fast(rows, 60, ()) is not None
print(json.dumps({"compile_events": compiles.n, "pass_events": passes.n, "load_seconds": loaded,
                  "stats": kernels.STATS}))
"""


def probe(env):
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def warm(env, *args):
    return subprocess.run([sys.executable, "-m", "myason.kernels"] + list(args), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_a_warm_cache_compiles_nothing_in_a_fresh_process(tmp_path):
    env = dict(os.environ, MYASON_CACHE_DIR=str(tmp_path / "cache"))
    kernels = sorted(registry._KERNELS)
    cold = probe(env)
    assert cold["compile_events"] >= len(kernels) and cold["pass_events"] > 0
    assert sorted(cold["stats"]["compiled"]) == kernels and cold["stats"]["loaded"] == []
    # The cold process saved what it compiled; install.sh's warm-up finds it and stamps it.
    done = warm(env)
    assert done.returncode == 0 and "0 compiled" in done.stderr, done.stderr
    assert warm(env, "--check").returncode == 0
    hot = probe(env)
    assert hot["compile_events"] == 0 and hot["pass_events"] == 0, hot
    assert hot["stats"]["compiled"] == [] and sorted(hot["stats"]["loaded"]) == kernels
    cache_dir = Path(hot["stats"]["cache_dir"])
    assert cache_dir.parent == tmp_path / "cache" and (cache_dir / registry.READY).exists()
    # The warm-up also built the C kernels there; the cold process had none and used numba's.
    assert cold["stats"]["native"] is None
    assert Path(hot["stats"]["native"]).parent.parent == tmp_path / "cache"
    print("fresh process: cold: %d compile events, %d compiler passes, kernels loaded in %.2f s; "
          "warm: %d, %d, %.2f s" % (cold["compile_events"], cold["pass_events"], cold["load_seconds"],
                                   hot["compile_events"], hot["pass_events"], hot["load_seconds"]))




def runs_inside(call, runs=5):
    """Per run of `call`, how many times a pure-Python thread ran in the middle of it (its middle
    60 %). A call holding the GIL leaves none: the thread cannot run a bytecode until it returns.
    The switch interval is made long (0.2 s) so that the thread cannot be handed the GIL between
    the clock reading and the call either, even if this thread is descheduled a while there."""
    stamps = []
    stop = threading.Event()

    def spin():
        n = 0
        clock = time.perf_counter
        while not stop.is_set():
            n += 1
            if not n & 255:
                stamps.append(clock())
    thread = threading.Thread(target=spin)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.2)
    thread.start()
    out = []
    try:
        for _ in range(runs):
            time.sleep(0.002)
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            lo, hi = t0 + 0.2 * (t1 - t0), t0 + 0.8 * (t1 - t0)
            out.append(sum(1 for t in stamps[-100000:] if lo < t < hi))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    return out


def test_kernels_release_the_gil():
    # Threads run kernels in parallel (multi-threaded capture): nogil, also when loaded from the
    # cache. The control, a loop compiled without nogil, shows the measure can fail.
    import numba
    import numpy as np

    from myason.agent import fastdecode

    @numba.njit(nogil=False)
    def held(n):
        x = np.uint64(88172645463325252)
        for _ in range(n):      # xorshift: a chain the compiler cannot shorten
            x ^= x << np.uint64(13)
            x ^= x >> np.uint64(7)
            x ^= x << np.uint64(17)
        return x
    held(10)
    started = time.perf_counter()
    held(20_000_000)
    assert time.perf_counter() - started > 0.01
    assert runs_inside(lambda: held(20_000_000)) == [0] * 5

    frame = np.frombuffer(bytes.fromhex("ffffffffffff0000000000010800" "450000280001000040060000c0000201c0000202"
                                        "04d2005000000000000000005002200000000000"), np.uint8)
    n = 300_000     # every row decodes the same frame: 84 bytes per row of arrays
    c = fastdecode.Chunk(n)
    c.offs[:] = 0
    c.lens[:] = len(frame)
    ones = np.ones(n, np.int64)

    # Both builds: the C kernels (load() prefers them when built) and numba's.
    for k in {id(x): x for x in (registry.load().decode_frames, registry.load_numba().decode_frames)}.values():
        def decode(k=k):
            k(frame, c.offs, c.lens, ones, ones, c.kw, c.iplen, c.flags, c.vlan, c.status)
        c.status[:] = 9
        decode()
        assert (c.status == 0).all() and (c.iplen == 40).all()
        inside = runs_inside(decode)
        assert sum(1 for m in inside if m > 0) >= 3, (k, inside)
