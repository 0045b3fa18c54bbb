"""`myason agent --read ... --time-shift now|SECONDS`: records shifted exactly, on both engines, aging unchanged."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import trafficgen as gen

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("fast", "python")
TIMES = ("first", "last")


def run_agent(*args, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / "myason.py"), "agent", *args], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError("agent exit %d\n%s" % (proc.returncode, proc.stderr))
    return proc


def records(pcap, tmp_path, engine, *extra):
    out = tmp_path / ("%s-%d.jsonl" % (engine, time.monotonic_ns()))
    run_agent("--read", str(pcap), "--no-export", "--no-progress", "-q", "--engine", engine,
              "--output", str(out), *extra)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    return sorted(recs, key=lambda r: (r["src_ip"], r["dst_ip"], r["src_port"], r["dst_port"], r["proto"],
                                       r["first"]))


def without_times(recs):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in recs]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    from scapy.utils import PcapNgWriter, rdpcap
    pkts = gen.scenario()
    work = tmp_path_factory.mktemp("shift")
    pcap = work / "scenario.pcap"
    gen.write_pcap(pcap, pkts)
    ng = work / "scenario.pcapng"
    w = PcapNgWriter(str(ng))
    for p in rdpcap(str(pcap)):
        w.write(p)
    w.close()
    newest = max(float(p.time) for p in rdpcap(str(pcap)))
    return {"pcap": pcap, "pcapng": ng, "newest": newest, "oldest": min(t for t, _ in pkts)}


def test_default_keeps_the_capture_s_own_times(capture, tmp_path):
    for engine in ENGINES:
        recs = records(capture["pcap"], tmp_path, engine)
        assert min(r["first"] for r in recs) == round(capture["oldest"], 6)
        assert max(r["last"] for r in recs) == round(capture["newest"], 6)


@pytest.mark.parametrize("shift", ["1000.5", "-86400.25", "0.000001", "3e8"])
def test_seconds_shift_every_record_exactly_on_both_engines(capture, tmp_path, shift):
    seconds = float(shift)
    results = {}
    for engine in ENGINES:
        plain = records(capture["pcap"], tmp_path, engine)
        shifted = records(capture["pcap"], tmp_path, engine, "--time-shift", shift)
        # Aging runs on the capture's own clock: the same flows, split and ended the same way.
        assert without_times(shifted) == without_times(plain)
        for p, s in zip(plain, shifted):
            for k in TIMES:
                assert s[k] == round(p[k] + seconds, 6), (engine, k, p, s)
        results[engine] = shifted
    assert results["fast"] == results["python"]


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
@pytest.mark.parametrize("engine", ENGINES)
def test_now_puts_the_newest_packet_at_the_start_of_the_replay(capture, tmp_path, kind, engine):
    plain = records(capture[kind], tmp_path, engine)
    before = time.time()
    shifted = records(capture[kind], tmp_path, engine, "--time-shift", "now")
    after = time.time()
    assert without_times(shifted) == without_times(plain)
    shift = round(shifted[0]["first"] - plain[0]["first"], 6)
    for p, s in zip(plain, shifted):
        for k in TIMES:
            assert s[k] == round(p[k] + shift, 6)
    newest = max(r["last"] for r in shifted)
    assert newest == round(capture["newest"] + shift, 6)
    assert before <= newest <= after


def test_time_shift_is_logged(capture, tmp_path):
    proc = run_agent("--read", str(capture["pcap"]), "--no-export", "--no-progress", "-q",
                     "--time-shift", "now")
    assert "time shift" in proc.stderr and "newest packet" in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--time-shift", "soon"], ["--time-shift", "now", "seconds"]),
    (["--time-shift", "nan"], ["--time-shift"]),
    (["--time-shift", "10"], ["--time-shift", "--read"]),           # live capture: nothing to shift
])
def test_bad_time_shift_is_a_usage_error(capture, args, words):
    read = ["--read", str(capture["pcap"])] if args[-1] != "10" else []
    proc = run_agent(*read, "--no-export", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    for word in words:
        assert word in proc.stderr
