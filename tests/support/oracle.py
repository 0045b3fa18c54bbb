"""Helpers to compare the agent with the independent softflowd -> nfcapd -> nfdump oracle.

The oracle (../shared/oracle/README.md) differs from myason by design in a few documented ways:
it parses fewer link layers (no QinQ, PPPoE, 802.1ah, FabricPath, LLC/SNAP, SLL2...) and it
keys IPv4 non-first fragments with ports 0 and IPv6 non-first fragments with protocol 0, where
myason attributes them to their first fragment's flow; it does not walk IPv6 AH and reports
protocol 0 when the IPv6 extension chain is cut by the snap length; it leaves SCTP ports at 0
(`fold_candidate` does the same to the agent's CSV before comparing). `softflowd_view` writes the frames on
which both meters must agree exactly; those it leaves out are checked by other tests (decoder
fixtures, generated fragment traffic).
"""
import csv
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from myason.agent import decode as dec
from myason.agent.pcapfile import open_capture

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
ORACLE = SHARED / "oracle"

# Link types softflowd 1.1.0 reads (raw IPv4/IPv6 228/229 are relabelled by flows-oracle.sh).
SOFTFLOWD_LINKTYPES = {0, 1, 101, 108, 113, 228, 229}


def have_oracle():
    """True when ../shared and the oracle's tools are present."""
    return (ORACLE / "flows-oracle.sh").exists() and all(
        shutil.which(t) for t in ("softflowd", "nfcapd", "nfdump"))


def _ethernet_ok(frame):
    """Ethernet framing softflowd parses: no tag or one 802.1Q tag, then IP or MPLS."""
    if len(frame) < 14:
        return False
    et = struct.unpack_from("!H", frame, 12)[0]
    if et == 0x8100:
        if len(frame) < 18:
            return False
        et = struct.unpack_from("!H", frame, 16)[0]
    return et in (0x0800, 0x86DD, 0x8847)


def _ip_offset(frame, lt):
    """Where the IP header starts for the framings softflowd_view keeps (None: not found)."""
    if lt == 1:
        off = 18 if struct.unpack_from("!H", frame, 12)[0] == 0x8100 else 14
        if struct.unpack_from("!H", frame, off - 2)[0] == 0x8847:
            while off + 4 <= len(frame):
                off += 4
                if frame[off - 2] & 1:
                    return off
            return None
        return off
    return {0: 4, 108: 4, 113: 16, 101: 0, 228: 0, 229: 0}.get(lt)


def _ipv6_chain_ok(frame, lt):
    """softflowd walks hop-by-hop, routing and destination options only, and reports protocol 0
    when that walk runs past the captured bytes; keep IPv6 frames where that cannot differ."""
    off = _ip_offset(frame, lt)
    if off is None or len(frame) < off + 40:
        return False
    nh, pos = frame[off + 6], off + 40
    while nh in (0, 43, 60):
        if pos + 8 > len(frame):
            return False
        nh, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
    return nh not in (51, 44) and pos <= len(frame)


def softflowd_view(src, dst):
    """Copy the frames both meters key the same way from `src` to classic pcap `dst`.

    Returns (kept, dropped) frame counts, or None when the file mixes link types.
    """
    kept = dropped = 0
    linktype = None
    records = []
    with open_capture(str(src)) as cap:
        for ts, frame, lt, _ifx, orig in cap.packets():
            if linktype is None:
                linktype = lt
            elif lt != linktype:
                return None
            ok = lt in SOFTFLOWD_LINKTYPES and (lt != 1 or _ethernet_ok(frame))
            if ok:
                p = dec.decode(frame, lt)
                ok = p.__class__ is not str and not p[dec.P_FRAG]
                if ok and p[dec.P_IP_VERSION] == 6:
                    ok = _ipv6_chain_ok(frame, lt)
            if ok:
                sec = int(ts)
                usec = int(round((ts - sec) * 1e6))
                if usec == 1000000:
                    sec, usec = sec + 1, 0
                records.append(struct.pack("<IIII", sec, usec, len(frame), orig) + frame)
                kept += 1
            else:
                dropped += 1
    with open(dst, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype or 1))
        fh.writelines(records)
    return kept, dropped


def fold_candidate(src_csv, dst_csv):
    """The agent's CSV with SCTP ports set to 0, the oracle's convention (README point 6)."""
    with open(src_csv, newline="") as fi, open(dst_csv, "w", newline="") as fo:
        reader = csv.DictReader(fi)
        writer = csv.DictWriter(fo, reader.fieldnames, lineterminator="\n")
        writer.writeheader()
        for row in reader:
            if row["proto"] == "132":
                row["src_port"] = row["dst_port"] = "0"
            writer.writerow(row)
    return dst_csv


def run_oracle(pcap, out_csv, timeout=300):
    """flows-oracle.sh PCAP OUT.csv; returns the CompletedProcess."""
    return subprocess.run(["bash", str(ORACLE / "flows-oracle.sh"), str(pcap), str(out_csv)],
                          capture_output=True, text=True, timeout=timeout)


def run_agent_csv(pcaps, out_csv, timeout=600):
    """myason agent --read PCAPS --no-export --output OUT.csv as a real process."""
    return subprocess.run([sys.executable, str(ROOT / "myason.py"), "agent", "--read", *map(str, pcaps),
                           "--no-export", "--no-progress", "-q", "--output", str(out_csv)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)


def compare(candidate_csv, oracle_csv):
    """../shared/oracle/compare.py CANDIDATE ORACLE; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(ORACLE / "compare.py"), str(candidate_csv), str(oracle_csv),
                           "--show", "20"], capture_output=True, text=True, timeout=300)


def _ms(text):
    """Epoch seconds as text -> whole milliseconds, truncated, without float rounding."""
    sec, _, frac = text.partition(".")
    return int(sec) * 1000 + int((frac + "000")[:3]) if not sec.startswith("-") else int(float(text) * 1000)


def load_by_key(path, files=None):
    """Sum a flow CSV per (src, dst, sport, dport, proto): [packets, bytes, first_ms, last_ms, flags]."""
    agg = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            k = (row["src_ip"], row["dst_ip"], int(row["src_port"]), int(row["dst_port"]), int(row["proto"]))
            pk, by = int(row["packets"]), int(row["bytes"])
            fi, la, fl = _ms(row["first"]), _ms(row["last"]), int(row["tcp_flags"] or 0)
            a = agg.get(k)
            if a is None:
                agg[k] = [pk, by, fi, la, fl]
            else:
                a[0] += pk
                a[1] += by
                a[2] = min(a[2], fi)
                a[3] = max(a[3], la)
                a[4] |= fl
    return agg


def exact_compare(cand_csv, oracle_csv, check_times=True):
    """compare.py's rules with times compared as exact milliseconds (compare.py multiplies the
    oracle's 3-decimal text as a float, which truncates some values 1 ms low near 1e12 ms).
    Returns a dict of lists of offending keys; all empty means agreement."""
    cand, orac = load_by_key(cand_csv), load_by_key(oracle_csv)
    bad = {
        "only_candidate": [k for k in cand if k not in orac],
        "only_oracle": [k for k in orac if k not in cand],
        "packets": [k for k in cand if k in orac and cand[k][0] != orac[k][0]],
        "tcp_flags": [k for k in cand if k in orac and cand[k][4] != orac[k][4]],
        "times": [],
    }
    if check_times:
        def conv(src):
            out = {}
            for (s, d, sp, dp, pr), v in src.items():
                a, b = (s, sp), (d, dp)
                ck = (pr,) + ((a, b) if a <= b else (b, a))
                c = out.setdefault(ck, [v[2], v[3]])
                c[0], c[1] = min(c[0], v[2]), max(c[1], v[3])
            return out
        cc, oc = conv(cand), conv(orac)
        bad["times"] = [k for k in cc if k in oc and cc[k] != oc[k]]
    return bad
