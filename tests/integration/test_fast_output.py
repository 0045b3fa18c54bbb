"""`--output` written from the fast engine's arrays (myason.agent.fastoutput) against the reference
engine's files: the same bytes, line for line (the engines emit records in different orders, so
the lines are compared as multisets; the CSV header must be the first line of both)."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from myason.agent import process
from tests.support import trafficgen as gen
from tests.support.captures import PCAPS, shared_files

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not process.fast_engine_available(), reason="numba is not installed")


def run(engine, files, out, conf=None, extra=()):
    args = [sys.executable, str(ROOT / "myason.py"), "agent", "--no-export", "--no-progress", "-q",
            "--engine", engine, "--output", str(out), *extra, "--read", *map(str, files)]
    if conf:
        args[3:3] = ["-ac", str(conf)]
    proc = subprocess.run(args, cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return Path(out).read_bytes()


def same_bytes(tmp_path, files, conf=None, extra=(), kinds=("csv", "jsonl")):
    """Both engines' files for each kind; returns the fast engine's lines of the last kind."""
    for kind in kinds:
        fast = run("fast", files, tmp_path / ("fast." + kind), conf, extra)
        ref = run("python", files, tmp_path / ("ref." + kind), conf, extra)
        assert fast.endswith(b"\n") == ref.endswith(b"\n")
        fl, rl = fast.split(b"\n"), ref.split(b"\n")
        if kind == "csv":
            assert fl[0] == rl[0]
        only_fast, only_ref = Counter(fl) - Counter(rl), Counter(rl) - Counter(fl)
        assert not only_fast and not only_ref, (list(only_fast)[:3], list(only_ref)[:3])
    return [line for line in fl if line]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("fastoutput")
    pkts = gen.scenario(seed=11)
    gen.write_pcap(d / "a.pcap", pkts)
    gen.write_pcap(d / "b.pcap", [(t - 40.0, p) for t, p in pkts[::3]])
    # Only ARP: no record at all (the CSV is its header alone, the JSON lines file empty).
    gen.write_pcap(d / "empty.pcap", [(t, p) for t, p in pkts if p.haslayer("ARP")])
    return d


def test_generated_ipv4_ipv6_vlan_fragments(tmp_path, generated):
    lines = same_bytes(tmp_path, [generated / "a.pcap", generated / "b.pcap"])
    text = b"\n".join(lines)
    assert b'"ip_version":6' in text and b'"vlan":100' in text and b'"end_reason":"fin"' in text


def test_generated_time_shift(tmp_path, generated):
    same_bytes(tmp_path, [generated / "a.pcap"], extra=("--time-shift", "-1234.5678915"))


def test_tight_cache(tmp_path, generated):
    conf = tmp_path / "tight.yaml"
    conf.write_text("cache_limit: 3\ncache_active_timeout: 2\ncache_inactive_timeout: 1.5\n"
                    "cache_fin_timeout: 0\ntick: 0.25\nagent_id: 'probe:7'\n")
    same_bytes(tmp_path, [generated / "a.pcap"], conf)


def test_asn_annotations(tmp_path, generated):
    mmdb_writer = pytest.importorskip("mmdb_writer")
    IPSet = pytest.importorskip("netaddr").IPSet
    writer = mmdb_writer.MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    for net, asn in (("10.1.0.0/16", 64500), ("192.0.2.0/24", 4200000000), ("2001:db8::/32", 64496)):
        writer.insert_network(IPSet([net]), {"autonomous_system_number": mmdb_writer.MmdbU32(asn)})
    writer.to_db_file(str(tmp_path / "asn.mmdb"))
    conf = tmp_path / "asn.yaml"
    conf.write_text("asn_database: %s\n" % (tmp_path / "asn.mmdb"))
    lines = same_bytes(tmp_path, [generated / "a.pcap"], conf)
    text = b"\n".join(lines)
    assert b'"src_as":64500' in text and b'"dst_as":4200000000' in text and b'"src_as":64496' in text


def test_no_records(tmp_path, generated):
    assert same_bytes(tmp_path, [generated / "empty.pcap"], kinds=("jsonl",)) == []
    assert run("fast", [generated / "empty.pcap"], tmp_path / "e.csv").count(b"\n") == 1


@pytest.mark.shared
def test_all_real_captures(tmp_path):
    assert len(same_bytes(tmp_path, shared_files("real"))) > 10000


@pytest.mark.shared
def test_all_edge_captures(tmp_path):
    same_bytes(tmp_path, shared_files("edge"))


@pytest.mark.shared
@pytest.mark.slow
def test_bench_mix(tmp_path):
    bench = PCAPS / "bench-mix.pcap"
    if not bench.exists():
        pytest.skip("../shared/pcaps/bench-mix.pcap is absent")
    assert len(same_bytes(tmp_path, [bench])) > 90000
