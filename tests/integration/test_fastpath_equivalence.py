"""`myason agent --read` with the fast engine (numba) and the python engine (the reference):
identical CSV rows (as multisets) and identical summary counters."""
import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from myason import kernels
from tests.support import trafficgen as gen
from tests.support.captures import PCAPS, shared_files

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="numba is not installed")

TIGHT = ("cache_limit: 3\ncache_active_timeout: 2\ncache_inactive_timeout: 1.5\n"
         "cache_fin_timeout: 0\ntick: 0.25\n")


def run(engine, files, out, conf=None):
    """Rows (multiset) and summary counters of one agent run."""
    args = [sys.executable, str(ROOT / "myason.py"), "agent", "--no-export", "--no-progress",
            "--engine", engine, "--output", str(out), "--read", *map(str, files)]
    if conf:
        args[3:3] = ["-ac", str(conf)]
    proc = subprocess.run(args, cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr[proc.stderr.index("myason agent summary:"):].splitlines()[1:]
    summary = [line for line in summary if line.split()[0] not in ("seconds", "cpu_seconds")]
    with open(out, newline="") as fh:
        rows = Counter(tuple(r) for r in csv.reader(fh))
    return rows, summary


def same_output(tmp_path, files, conf=None):
    fast = run("fast", files, tmp_path / "fast.csv", conf)
    ref = run("python", files, tmp_path / "python.csv", conf)
    assert fast[1] == ref[1]
    only_fast, only_ref = fast[0] - ref[0], ref[0] - fast[0]
    assert not only_fast and not only_ref, (list(only_fast.items())[:5], list(only_ref.items())[:5])
    return ref[0]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generated capture, the same traffic shifted back in time (so flows meet old flows), and
    a pcapng copy with nanosecond stamps."""
    from scapy.utils import PcapNgWriter
    d = tmp_path_factory.mktemp("fastpath")
    pkts = gen.scenario(seed=3)
    gen.write_pcap(d / "a.pcap", pkts)
    gen.write_pcap(d / "b.pcap", [(t - 40.0, p) for t, p in pkts[::2]])
    w = PcapNgWriter(str(d / "c.pcapng"))
    for t, p in pkts[1::3]:
        p = p.__class__(bytes(p))
        p.time = t + 7.000000123
        w.write(p)
    w.close()
    (d / "tight.yaml").write_text(TIGHT)
    return d


def test_generated_capture(tmp_path, generated):
    rows = same_output(tmp_path, [generated / "a.pcap", generated / "b.pcap", generated / "c.pcapng"])
    reasons = Counter(r[-1] for r in rows.elements())
    assert reasons["fin"] and reasons["idle"] and reasons["shutdown"]


def test_generated_capture_tight_cache(tmp_path, generated):
    rows = same_output(tmp_path, [generated / "a.pcap", generated / "b.pcap", generated / "c.pcapng"],
                       generated / "tight.yaml")
    reasons = Counter(r[-1] for r in rows.elements())
    assert reasons["cache_full"] and reasons["active"] and reasons["fin"]


@pytest.mark.shared
def test_all_real_captures_in_one_run(tmp_path):
    same_output(tmp_path, shared_files("real"))


@pytest.mark.shared
@pytest.mark.slow
def test_all_real_captures_tight_cache(tmp_path):
    conf = tmp_path / "tight.yaml"
    conf.write_text(TIGHT)
    same_output(tmp_path, shared_files("real"), conf)


@pytest.mark.shared
def test_all_edge_captures_in_one_run(tmp_path):
    same_output(tmp_path, shared_files("edge"))


@pytest.mark.shared
@pytest.mark.slow
def test_bench_mix(tmp_path):
    bench = PCAPS / "bench-mix.pcap"
    if not bench.exists():
        pytest.skip("../shared/pcaps/bench-mix.pcap is absent")
    rows = same_output(tmp_path, [bench])
    assert sum(rows.values()) > 90000
