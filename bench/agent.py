#!/usr/bin/env python3
"""Agent benchmark: replay a capture through `myason agent --no-export` and softflowd in one run.

usage: bench/agent.py [--pcap PATH] [--runs N] [--flows N] [--engine fast|python] [--skip-softflowd]
                      [--output csv,jsonl]

Prints, per tool, the median over N alternating runs of wall seconds, packets/s, CPU seconds
(user+sys of the child) and peak RSS, then the ratio myason/softflowd; myason also with
`--output x.csv` / `x.jsonl` (written to a temporary directory; --output '' skips them). Then the memory per
cached flow with --flows concurrent flows in one FlowCache (RSS growth / flows).
"""
import argparse
import os
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def count_frames(path):
    """Frames in a classic pcap (header walk; no decoding)."""
    sys.path.insert(0, str(ROOT))
    from myason.agent.pcapfile import open_capture
    n = 0
    with open_capture(str(path)) as cap:
        for batch in cap.batches():
            n += len(batch)
    return n


def timed(argv, **kw):
    """Run argv; return (wall s, cpu s, peak RSS MiB) of that child alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, **kw)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit("%s failed with exit %d" % (argv[0], proc.returncode))
    del before
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0


def run_myason(pcap, engine, output=None):
    argv = [sys.executable, str(ROOT / "myason.py"), "agent", "--read", str(pcap), "--no-export",
            "--no-progress", "-q", "--engine", engine]
    if output:
        argv += ["--output", str(output)]
    return timed(argv, cwd=str(ROOT), stdout=subprocess.DEVNULL)


def run_softflowd(pcap, tmp):
    """softflowd -r PCAP exporting IPFIX to a local nfcapd (as ../shared/anchors/softflowd_anchor.sh)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    nfdir = tempfile.mkdtemp(dir=tmp)
    nf = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", nfdir, "-B", "67108864",
                           "-t", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        return timed(["softflowd", "-r", str(pcap), "-n", "127.0.0.1:%d" % port, "-v", "10", "-A", "milli",
                      "-6", "-t", "maxlife=0", "-m", "16000000"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        nf.terminate()
        nf.wait()


def rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_flow(nflows, engine):
    """RSS growth per flow with `nflows` concurrent flows (mixed IPv4 90 % / IPv6 10 % keys) in the
    cache the engine uses (fast: FastFlowCache, python: the reference FlowCache)."""
    sys.path.insert(0, str(ROOT))
    from myason.agent.process import pack_key
    if engine == "fast":
        from myason.agent.fastcache import FastFlowCache as Cache
    else:
        from myason.agent.cache import FlowCache as Cache
    cache = Cache(nflows + 1, active=1e9, inactive=1e9)
    base = rss_bytes()
    v4 = struct.Struct("!I").pack
    for i in range(nflows):
        if i % 10:
            src, dst = v4(0x0A000000 + i), v4(0xC0000200 + (i % 251))
        else:
            src, dst = b"\x20\x01\x0d\xb8" + bytes(8) + v4(i), b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01"
        cache.add(1.0 + i * 1e-6, pack_key(src, dst, 1024 + i % 60000, 443, 6, 0, 2), 60, 0x10)
    if len(cache) != nflows:
        raise SystemExit("cache holds %d flows, expected %d" % (len(cache), nflows))
    grown = rss_bytes() - base
    return grown / nflows, cache.memory_bytes() / nflows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pcap", default=str(SHARED / "pcaps" / "bench-mix.pcap"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flows", type=int, default=1000000)
    ap.add_argument("--engine", choices=("fast", "python"), default="fast")
    ap.add_argument("--skip-softflowd", action="store_true")
    ap.add_argument("--output", default="csv,jsonl", help="record file formats also measured (comma-separated)")
    args = ap.parse_args()
    formats = [f for f in args.output.split(",") if f]
    pcap = Path(args.pcap)
    if not pcap.exists():
        raise SystemExit("no capture at %s (is ../shared beside the repo?)" % pcap)
    frames = count_frames(pcap)
    have_sf = not args.skip_softflowd and shutil.which("softflowd") and shutil.which("nfcapd")
    res = {"myason": []}
    res.update(("myason --output .%s" % f, []) for f in formats)
    res["softflowd"] = []
    run_myason(pcap, args.engine)     # warm-up: the first fast run may compile its kernels
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            res["myason"].append(run_myason(pcap, args.engine))
            for f in formats:
                res["myason --output .%s" % f].append(run_myason(pcap, args.engine, Path(tmp) / ("x." + f)))
            if have_sf:
                res["softflowd"].append(run_softflowd(pcap, tmp))
    print("capture: %s (%d frames), engine %s" % (pcap, frames, args.engine))
    print("%-24s %6s %10s %12s %10s %10s" % ("tool", "runs", "wall s", "packets/s", "cpu s", "rss MiB"))
    med = {}
    for tool, runs in res.items():
        if not runs:
            continue
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        med[tool] = (wall, cpu)
        print("%-24s %6d %10.2f %12.0f %10.2f %10.1f" % (tool, len(runs), wall, frames / wall, cpu, rss))
    if "softflowd" in med:
        for tool in med:
            if tool != "softflowd":
                print("ratio %s/softflowd packets/s (wall): %.3f   by CPU seconds: %.3f" % (
                    tool, med["softflowd"][0] / med[tool][0], med["softflowd"][1] / med[tool][1]))
    if args.flows:
        rss_pf, own_pf = memory_per_flow(args.flows, args.engine)
        print("memory per cached flow (%s engine) with %d flows: %.0f B (RSS growth), %.0f B (cache structures)"
              % (args.engine, args.flows, rss_pf, own_pf))


if __name__ == "__main__":
    main()
