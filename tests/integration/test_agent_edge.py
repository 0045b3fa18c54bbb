"""`myason agent --read` on damaged and hostile captures: it never crashes and accounts every frame.

The curated edge captures live in ../shared (tests skip when it is absent); the fuzz captures
are generated here with struct from random bytes and cut-down copies of valid frames.
"""
import csv
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import trafficgen as gen
from tests.support.summary import parse_summary

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared"
EDGE = SHARED / "pcaps" / "edge"
INDEX = SHARED / "pcaps" / "index.tsv"

_skip_no_shared = pytest.mark.skipif(not EDGE.is_dir() or not INDEX.is_file(),
                                     reason="../shared/pcaps/edge is not available")


def needs_shared(test):
    """Mark a test as reading ../shared; it skips cleanly when the folder is absent."""
    return pytest.mark.shared(_skip_no_shared(test))


def run_agent(*args, timeout=120):
    """`myason agent --no-export ARGS` as a process; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / "myason.py"), "agent", "--no-export", "--no-progress",
                           *args], cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)


def check_accounting(proc, out_csv, frames):
    """Exit 0, a summary, and every one of `frames` frames either metered or rejected by reason."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    s = parse_summary(proc.stderr)
    assert s["capture_packets"] == frames
    assert s["frames"] == frames
    assert s["packets_metered"] + sum(s["rejects"].values()) == frames
    assert s["flows_cached"] == 0
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == s["flows_exported"] == s["flows_created"]
    assert sum(int(r["packets"]) for r in rows) == s["packets_metered"]
    return s


def edge_index():
    """{file name: (link type, packets)} for the edge captures, from index.tsv."""
    out = {}
    with open(INDEX, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["set"] == "edge":
                out[row["file"]] = (row["linktype"], int(row["packets"]))
    return out


# ---- the curated edge captures ------------------------------------------------------------

@needs_shared
def test_every_edge_capture_in_one_run(tmp_path):
    index = edge_index()
    files = sorted(EDGE.iterdir())
    assert sorted(f.name for f in files) == sorted(index)
    out = tmp_path / "edge.csv"
    proc = run_agent("--output", str(out), "--read", *map(str, files))
    s = check_accounting(proc, out, sum(n for _, n in index.values()))
    # The damage is counted by reason, not hidden: these captures hold all of these kinds.
    for reason in ("non_ip", "bad_ip_version", "short_ipv4_header"):
        assert s["rejects"].get(reason, 0) > 0, s["rejects"]
    assert s["fragments"] > 0


def _by_linktype():
    if not INDEX.is_file():
        return ["unavailable"]
    return sorted({lt for lt, _ in edge_index().values()})


@needs_shared
@pytest.mark.parametrize("linktype", _by_linktype())
def test_edge_captures_grouped_by_link_type(linktype, tmp_path):
    group = {name: n for name, (lt, n) in edge_index().items() if lt == linktype}
    out = tmp_path / "group.csv"
    proc = run_agent("--output", str(out), "--read", *(str(EDGE / name) for name in sorted(group)))
    s = check_accounting(proc, out, sum(group.values()))
    if linktype in ("ether", "rawip4", "rawip6"):
        assert s["packets_metered"] > 0
    else:
        assert s["rejects"].get("unsupported_linktype", 0) == sum(group.values())


# ---- generated fuzz --------------------------------------------------------------------------

# Link header put in front of an IP packet, per link type (Ethernet frames are used whole).
LINK_HEADS = {
    101: b"", 12: b"", 228: b"", 229: b"",                       # raw IP (228: v4 only, 229: v6 only)
    113: struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800),   # Linux SLL
    276: struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 8),  # Linux SLL2
    0: struct.pack("<I", 2), 108: struct.pack("!I", 2),          # BSD null (host order), loop
    9: b"\x00\x21",                                               # PPP, IPv4
}
LINKTYPES = (1,) + tuple(LINK_HEADS)


def _valid_frames():
    """Ethernet frames of the trafficgen scenario, and the IP packets inside them."""
    eth = [bytes(p) for _, p in gen.scenario(seed=7)]
    ip = [f[18:] if f[12:14] == b"\x81\x00" else f[14:] for f in eth]
    return eth, [p for p in ip if p[:1] and p[0] >> 4 in (4, 6)]


def valid_for(linktype, eth, ip):
    """Well-formed frames of one link type."""
    if linktype == 1:
        return eth
    version = {228: 4, 229: 6}.get(linktype)
    return [LINK_HEADS[linktype] + p for p in ip if version is None or p[0] >> 4 == version]


def write_fuzz(path, linktype, frames, cut_last=False):
    """A classic pcap of `frames` (bytes or (bytes, orig_len)); cut_last chops the final record."""
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for i, f in enumerate(frames):
        data, orig = f if isinstance(f, tuple) else (f, len(f))
        parts.append(struct.pack("<IIII", int(gen.T0) + i // 10, (i % 10) * 1000, len(data), orig) + data)
    blob = b"".join(parts)
    if cut_last:
        blob = blob[:-max(1, len(parts[-1]) // 2)]
    Path(path).write_bytes(blob)


def fuzz_frames(rnd, valid, n=1500):
    """Random byte strings, random truncations of valid frames, and valid frames with random bit flips."""
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 120))))
        elif kind == 1:
            f = rnd.choice(valid)
            out.append((f[:rnd.randrange(0, len(f) + 1)], len(f)))  # as a short snaplen would cut it
        elif kind == 2:
            f = bytearray(rnd.choice(valid))
            for _ in range(rnd.randrange(1, 6)):
                f[rnd.randrange(len(f))] ^= 1 << rnd.randrange(8)
            out.append(bytes(f))
        else:
            f = bytearray(rnd.choice(valid)[:60])
            # A header field set to an extreme: lengths, version/IHL, next-header bytes.
            at = rnd.randrange(min(len(f), 60))
            f[at] = rnd.choice((0x00, 0xFF, 0x45, 0x60, 0x4F, 0x2B, 0x2C, 0x3C))
            out.append(bytes(f))
    return out


def test_fuzz_captures_replay_without_crashing(tmp_path):
    rnd = random.Random(20240101)
    eth, ip = _valid_frames()
    paths, total = [], 0
    for lt in LINKTYPES:
        frames = fuzz_frames(rnd, valid_for(lt, eth, ip))
        path = tmp_path / ("fuzz-%d.pcap" % lt)
        write_fuzz(path, lt, frames)
        paths.append(path)
        total += len(frames)
    # Damage at the file level too: a last record cut short, and an absurd record length.
    cut = tmp_path / "cut.pcap"
    write_fuzz(cut, 1, eth[:20], cut_last=True)
    absurd = tmp_path / "absurd.pcap"
    write_fuzz(absurd, 1, eth[:5])
    with open(absurd, "ab") as fh:
        fh.write(struct.pack("<IIII", int(gen.T0), 0, 0x7FFFFFFF, 0x7FFFFFFF) + eth[0])
    out = tmp_path / "fuzz.csv"
    proc = run_agent("--output", str(out), "--read", *map(str, paths), str(cut), str(absurd))
    s = check_accounting(proc, out, total + 19 + 5)
    assert s["capture_truncated_records"] == 1
    assert s["capture_bad_records"] == 1
    assert sum(s["rejects"].values()) > len(LINKTYPES) * 300
    assert s["packets_metered"] > 0
    # Reasons are the decoder's short names, never an exception text.
    assert all(re.fullmatch(r"[a-z0-9_]+", r) for r in s["rejects"])


def test_header_damage_is_a_clear_error_not_a_crash(tmp_path):
    eth, _ = _valid_frames()
    good = tmp_path / "good.pcap"
    write_fuzz(good, 1, eth[:10])
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x00" * 40)
    cut = tmp_path / "cut-header.pcap"
    cut.write_bytes(good.read_bytes()[:10])
    for path in (bad, cut):
        proc = run_agent("--read", str(path), "--output", str(tmp_path / "x.csv"))
        assert proc.returncode != 0
        assert str(path) in proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
