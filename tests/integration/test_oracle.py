"""The agent's per-5-tuple totals against the independent softflowd -> nfcapd -> nfdump oracle.

Skips cleanly when ../shared or the oracle's tools are absent. See tests/support/oracle.py
for the frames left out of the exact comparison (documented differences of softflowd).
"""
import csv
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import oracle

pytestmark = [pytest.mark.shared, pytest.mark.skipif(not oracle.have_oracle(),
                                                      reason="../shared or softflowd/nfcapd/nfdump absent")]

REAL = oracle.SHARED / "pcaps" / "real"
INDEX = oracle.SHARED / "pcaps" / "index.tsv"
BENCH = oracle.SHARED / "pcaps" / "bench-mix.pcap"


def real_files_outside_bench_mix():
    """real/ captures bench-mix.pcap does not contain (non-Ethernet, or spanning > 1 h), with
    whether each is in strict time order."""
    out = []
    with open(INDEX, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["set"] == "real" and (row["linktype"] != "ether" or float(row["duration_s"]) > 3600):
                out.append((REAL / row["file"], row["strict_time_order"] == "True"))
    return out


def check_against_oracle(cand, orac, check_times=True):
    """Exact agreement per key; compare.py must agree too, except for its float artefact on times."""
    cand = oracle.fold_candidate(cand, str(cand) + ".folded.csv")
    bad = oracle.exact_compare(cand, orac, check_times)
    assert not any(bad.values()), {k: v[:10] for k, v in bad.items() if v}
    res = oracle.compare(cand, orac)
    out = res.stdout
    assert "only_candidate=0 only_oracle=0" in out, out
    assert "packet_mismatch_keys=0 tcp_flag_mismatch_keys=0" in out, out
    if check_times and res.returncode != 0:
        # Every time mismatch compare.py reports is then one its float arithmetic makes up:
        # the exact comparison above found none.
        assert "conv_time_mismatch=0" not in out
    return res


def _views_with_oracle(tmp_path, files):
    views = []
    for path in files:
        view = tmp_path / (path.name + ".view.pcap")
        got = oracle.softflowd_view(path, view)
        if got and got[0]:
            views.append(view)

    def one(view):
        out = view.with_suffix(".oracle.csv")
        return out if oracle.run_oracle(view, out).returncode == 0 else None

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, views))
    return [(v, o) for v, o in zip(views, results) if o is not None], len(views)


def _merge(pairs, path):
    with open(path, "w") as fh:
        fh.write("src_ip,dst_ip,src_port,dst_port,proto,tos,packets,bytes,first,last,tcp_flags\n")
        for _, o in pairs:
            fh.writelines(open(o).readlines()[1:])
    return path


@pytest.mark.parametrize("ordered", [True, False], ids=["time-ordered", "not-time-ordered"])
def test_real_captures_match_oracle(tmp_path, ordered):
    """Every real capture outside bench-mix: per-key packets, flags (and times when the file is in
    time order: softflowd reports the first/last packet *processed*, see the oracle README)."""
    files = [f for f, o in real_files_outside_bench_mix() if o == ordered]
    pairs, nviews = _views_with_oracle(tmp_path, files)
    # softflowd refuses a few captures (it exits 1): those drop out of the comparison.
    assert len(pairs) >= 0.8 * nviews and len(pairs) > (100 if ordered else 5)
    cand = tmp_path / "agent.csv"
    res = oracle.run_agent_csv([v for v, _ in pairs], cand)
    assert res.returncode == 0, res.stderr
    check_against_oracle(cand, _merge(pairs, tmp_path / "oracle.csv"), check_times=ordered)


@pytest.mark.slow
def test_bench_mix_matches_oracle(tmp_path):
    if not BENCH.exists():
        pytest.skip("bench-mix.pcap absent")
    view = tmp_path / "bench.view.pcap"
    kept, dropped = oracle.softflowd_view(BENCH, view)
    assert kept > 1300000
    orac = tmp_path / "oracle.csv"
    res = oracle.run_oracle(view, orac)
    assert res.returncode == 0, res.stderr
    cand = tmp_path / "agent.csv"
    res = oracle.run_agent_csv([view], cand)
    assert res.returncode == 0, res.stderr
    check_against_oracle(cand, orac)


@pytest.mark.slow
def test_bench_mix_full_file_totals_against_stored_oracle(tmp_path):
    """On the whole file the agent meters exactly the IP frames tshark finds: every packet the
    oracle counted plus those behind encapsulations softflowd does not parse (QinQ, PPPoE...)."""
    results = oracle.ORACLE / "results"
    stored = [results / "bench-mix.oracle.csv.totals", results / "bench-mix.crosscheck.txt"]
    if not BENCH.exists() or not all(p.exists() for p in stored):
        pytest.skip("bench-mix or its stored oracle absent")
    totals = {}
    for path in stored:
        totals.update(line.strip().split("=", 1) for line in open(path) if "=" in line)
    cand = tmp_path / "agent.csv"
    res = oracle.run_agent_csv([BENCH], cand)
    assert res.returncode == 0, res.stderr
    packets = 0
    with open(cand, newline="") as fh:
        for row in csv.DictReader(fh):
            packets += int(row["packets"])
    # tshark's count of IP frames is the ceiling: every IP frame, whatever its framing.
    # Every IP frame tshark finds, whatever its framing, and nothing else.
    assert packets == int(totals["ip_frames"])
    assert packets > int(totals["packets"])
