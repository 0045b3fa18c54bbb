"""`myason agent --read` end to end, as a real process, on captures the tests generate."""
import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support import trafficgen as gen
from tests.support.mmdb import asn_database

ROOT = Path(__file__).resolve().parents[2]


def run_agent(*args, check=True, timeout=120):
    proc = subprocess.run([sys.executable, str(ROOT / "myason.py"), "agent", *args],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("agent exit %d\n%s" % (proc.returncode, proc.stderr))
    return proc


def totals_by_key(rows):
    agg = defaultdict(lambda: [0, 0])
    for r in rows:
        k = (r["src_ip"], r["dst_ip"], int(r["src_port"]), int(r["dst_port"]), int(r["proto"]), int(r["tos"]))
        agg[k][0] += int(r["packets"])
        agg[k][1] += int(r["bytes"])
    return dict(agg)


@pytest.fixture(scope="module")
def scenario_pcap(tmp_path_factory):
    pkts = gen.scenario()
    path = tmp_path_factory.mktemp("replay") / "scenario.pcap"
    gen.write_pcap(path, pkts)
    return path, gen.expected_totals(pkts)


def test_replay_csv_matches_generated_traffic_exactly(scenario_pcap, tmp_path):
    pcap, expected = scenario_pcap
    out = tmp_path / "flows.csv"
    proc = run_agent("--read", str(pcap), "--no-export", "--output", str(out))
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert totals_by_key(rows) == expected
    assert "flows_exported" in proc.stderr
    header = out.read_text().splitlines()[0].split(",")
    assert header[:11] == ["src_ip", "dst_ip", "src_port", "dst_port", "proto", "tos", "packets", "bytes",
                           "first", "last", "tcp_flags"]


def test_replay_records_carry_aging_reasons_and_metadata(scenario_pcap, tmp_path):
    pcap, _ = scenario_pcap
    out = tmp_path / "flows.jsonl"
    run_agent("--read", str(pcap), "--no-export", "--output", str(out))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    # The DNS client idle for 28 s is split by the 15 s inactive timeout.
    split = [r for r in recs if r["src_ip"] == "10.7.7.7"]
    assert [r["end_reason"] for r in split] == ["idle", "shutdown"] or \
        sorted(r["end_reason"] for r in split) == ["idle", "shutdown"]
    # FIN teardown: TCP flows leave by the fin rule, with all flags OR-ed.
    tcp = [r for r in recs if r["proto"] == 6 and r["dst_port"] == 22]
    assert tcp and all(r["end_reason"] == "fin" for r in tcp)
    assert tcp[0]["tcp_flags"] & 0x13 == 0x13
    assert tcp[0]["vlan"] == 100 and tcp[0]["tos"] == 0x10
    v6 = [r for r in recs if r["ip_version"] == 6]
    assert v6 and all(":" in r["src_ip"] for r in v6)
    icmp = [r for r in recs if r["proto"] == 1]
    assert {r["dst_port"] for r in icmp} == {8 * 256, 0}
    assert all(r["first"] <= r["last"] for r in recs)
    assert all(r["agent"] for r in recs)


def test_replay_to_stdout_as_json_lines(scenario_pcap):
    pcap, expected = scenario_pcap
    proc = run_agent("--read", str(pcap), "--no-export", "--output", "-", "-q")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert totals_by_key(rows) == expected
    assert proc.stderr == ""


def test_replay_of_several_files_and_pcapng(scenario_pcap, tmp_path):
    from scapy.utils import PcapNgWriter, rdpcap
    pcap, expected = scenario_pcap
    ng = tmp_path / "again.pcapng"
    w = PcapNgWriter(str(ng))
    for p in rdpcap(str(pcap)):
        w.write(p)
    w.close()
    out = tmp_path / "two.csv"
    run_agent("--read", str(pcap), str(ng), "--no-export", "--output", str(out))
    with open(out, newline="") as fh:
        got = totals_by_key(csv.DictReader(fh))
    assert got == {k: [2 * v[0], 2 * v[1]] for k, v in expected.items()}


def test_check_config_prints_effective_config(tmp_path):
    conf = tmp_path / "agent.yaml"
    # lo: live capture is checked against this host's interfaces, and lo is on every host.
    conf.write_text("cache_limit: 1234\ninterfaces: [lo]\n")
    proc = run_agent("-ac", str(conf), "--check-config", "--no-export")
    assert "cache_limit: 1234" in proc.stdout
    assert "checked for live capture on lo without export" in proc.stderr


def test_bad_config_fails_at_start_naming_the_key(tmp_path):
    conf = tmp_path / "agent.yaml"
    conf.write_text("cache_limt: 10\n")
    proc = run_agent("-ac", str(conf), "--read", "x.pcap", "--no-export", check=False)
    assert proc.returncode == 2
    assert "cache_limt" in proc.stderr and "cache_limit" in proc.stderr


def test_export_requires_key_and_collectors(scenario_pcap):
    pcap, _ = scenario_pcap
    proc = run_agent("--read", str(pcap), check=False)
    assert proc.returncode == 2
    assert "key_file" in proc.stderr


def test_missing_capture_file_is_a_clear_error(tmp_path):
    proc = run_agent("--read", str(tmp_path / "nope.pcap"), "--no-export", check=False)
    assert proc.returncode != 0
    assert "nope.pcap" in proc.stderr


def test_unsupported_link_type_is_counted_and_skipped(tmp_path):
    # 802.11 radiotap (127): counted, skipped, exit 0.
    import struct
    path = tmp_path / "wifi.pcap"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 127))
        for i in range(3):
            fh.write(struct.pack("<IIII", 1700000000 + i, 0, 20, 20) + bytes(20))
    proc = run_agent("--read", str(path), "--no-export", "--output", str(tmp_path / "o.csv"))
    assert "unsupported_linktype=3" in proc.stderr
    assert os.path.getsize(tmp_path / "o.csv") > 0


def test_replay_fills_as_numbers_from_an_asn_database(scenario_pcap, tmp_path):
    db = asn_database(tmp_path / "asn.mmdb")
    conf = tmp_path / "agent.yaml"
    conf.write_text("asn_database: %s\n" % db)
    out = tmp_path / "flows.jsonl"
    run_agent("-ac", str(conf), "--read", str(scenario_pcap[0]), "--no-export", "--output", str(out))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    web = [r for r in recs if r["dst_ip"] == "192.0.2.80"]
    assert web and all(r["dst_as"] == 64500 and r["src_as"] == 0 for r in web)
    v6 = [r for r in recs if r["src_ip"].startswith("2001:db8:")]
    assert v6 and all(r["src_as"] == 64496 for r in v6)


def test_missing_asn_database_is_a_config_error(tmp_path):
    conf = tmp_path / "agent.yaml"
    conf.write_text("asn_database: %s\n" % (tmp_path / "nope.mmdb"))
    proc = run_agent("-ac", str(conf), "--read", "x.pcap", "--no-export", check=False)
    assert proc.returncode == 2 and "asn_database" in proc.stderr
