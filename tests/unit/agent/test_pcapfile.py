"""Tests for myason.agent.pcapfile: classic pcap, pcapng, damaged and real captures."""
import csv
import struct
from pathlib import Path

import pytest

from myason.agent import pcapfile
from myason.agent.pcapfile import CaptureFile, open_capture
from myason.errors import CaptureError

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"
PCAPS = SHARED / "pcaps"

T0 = 1700000000
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def frame(i, n=60):
    """A distinct fake frame of n bytes."""
    return bytes((i + k) & 0xFF for k in range(n))


# ---------------------------------------------------------------- classic pcap writer

def pcap_bytes(records, order="<", nano=False, network=1, snaplen=65535):
    """Classic pcap file bytes; records are (sec, frac, data, orig_len)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, network)]
    for sec, frac, data, orig in records:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), orig) + data)
    return b"".join(out)


def records3(nano=False):
    """Three records with sub-second fractions that are not exact binary fractions."""
    return [
        (T0, 123456789 if nano else 123456, frame(1, 60), 60),
        (T0 + 1, 999999999 if nano else 999999, frame(2, 1514), 1514),
        (T0 + 2, 1, frame(3, 42), 1500),  # truncated capture: orig_len > incl_len
    ]


def write(tmp_path, data, name="x.pcap"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_all_magics(tmp_path, order, nano):
    recs = records3(nano)
    path = write(tmp_path, pcap_bytes(recs, order=order, nano=nano, network=113))
    with open_capture(path) as cap:
        assert cap.format == "pcap"
        assert cap.linktype == 113
        got = list(cap.packets())
        assert cap.stats["packets"] == 3
        assert cap.stats["truncated_records"] == 0
    div = 1e9 if nano else 1e6
    want = [(sec + frac / div, data, 113, 0, orig) for sec, frac, data, orig in recs]
    assert got == want
    # exact floats, spelled out, for the first record
    assert got[0][0] == (1700000000.123456789 if nano else 1700000000.123456)
    assert all(type(p[0]) is float for p in got)


def test_classic_linktype_fcs_bits_masked(tmp_path):
    # FCS-present flag and FCS length 4 in the upper bits, as libpcap writes them
    network = 1 | 0x04000000 | (4 << 28)
    path = write(tmp_path, pcap_bytes(records3(), network=network))
    with open_capture(path) as cap:
        assert cap.linktype == 1
        assert {p[2] for p in cap.packets()} == {1}


def test_classic_scapy_wrpcap(tmp_path):
    from scapy.all import IP, UDP, Ether, wrpcap
    pkts = []
    for i in range(5):
        # explicit MACs: a bare Ether() makes scapy ARP for the destination
        p = Ether(src=MAC1, dst=MAC2) / IP(dst="10.0.0.%d" % (i + 1)) / UDP(dport=1000 + i)
        p = p / (b"x" * i)
        p.time = T0 + i + 0.25
        pkts.append(p)
    path = tmp_path / "s.pcap"
    wrpcap(str(path), pkts)
    with open_capture(path) as cap:
        got = list(cap.packets())
    assert [g[1] for g in got] == [bytes(p) for p in pkts]
    assert [g[0] for g in got] == [T0 + i + 0.25 for i in range(5)]
    assert [g[4] for g in got] == [len(bytes(p)) for p in pkts]
    assert {(g[2], g[3]) for g in got} == {(1, 0)}


def test_classic_header_only_has_no_packets(tmp_path):
    path = write(tmp_path, pcap_bytes([]))
    with open_capture(path) as cap:
        assert list(cap.packets()) == []
        assert cap.stats["packets"] == 0 and cap.stats["truncated_records"] == 0


def test_classic_absurd_record_stops(tmp_path):
    good = records3()
    data = pcap_bytes(good[:2]) + struct.pack("<IIII", T0, 0, 300 * 1024, 300 * 1024) + b"\0" * 64
    data += struct.pack("<IIII", T0, 0, 4, 4) + b"abcd"  # never reached: no resync
    with open_capture(write(tmp_path, data)) as cap:
        got = list(cap.packets())
        assert [g[1] for g in got] == [good[0][2], good[1][2]]
        assert cap.stats["bad_records"] == 1
        assert cap.stats["packets"] == 2


def test_classic_truncated_at_every_byte(tmp_path):
    recs = [(T0 + i, i * 1000, frame(i, 10 + 7 * i), 100) for i in range(4)]
    data = pcap_bytes(recs)
    full = [(s + f / 1e6, d, 1, 0, o) for s, f, d, o in recs]
    ends = []  # file offset where each record ends
    off = 24
    for _, _, d, _ in recs:
        off += 16 + len(d)
        ends.append(off)
    p = tmp_path / "cut.pcap"
    for n in range(len(data) + 1):
        p.write_bytes(data[:n])
        if n < 24:
            with pytest.raises(CaptureError):
                open_capture(p)
            continue
        with open_capture(p) as cap:
            got = list(cap.packets())
            st = cap.stats
        complete = sum(1 for e in ends if e <= n)
        assert got == full[:complete], n
        assert all(v >= 0 for v in st.values())
        assert st["packets"] == complete
        # a partial record is counted exactly when the cut is not on a record boundary
        assert st["truncated_records"] == (0 if n == 24 or n in ends else 1), n


def test_batches_sizes_and_restart(tmp_path):
    recs = [(T0 + i, 0, frame(i), 60) for i in range(10)]
    with open_capture(write(tmp_path, pcap_bytes(recs))) as cap:
        assert [len(b) for b in cap.batches(3)] == [3, 3, 3, 1]
        assert cap.stats["packets"] == 10
        # each pass starts from the beginning with fresh counters
        assert len(list(cap.packets())) == 10
        assert cap.stats["packets"] == 10
        assert [p[0] for p in cap] == [float(T0 + i) for i in range(10)]


def test_close_mid_iteration_and_after(tmp_path):
    recs = [(T0 + i, 0, frame(i), 60) for i in range(10)]
    cap = open_capture(write(tmp_path, pcap_bytes(recs)))
    it = cap.batches(2)
    assert len(next(it)) == 2
    cap.close()
    assert list(it) == []
    with pytest.raises(CaptureError):
        cap.batches()
    cap.close()  # idempotent


# ---------------------------------------------------------------- open errors

@pytest.mark.parametrize("content,words", [
    (b"", "empty"),
    (b"\xd4\xc3", "cut short"),
    (b"\xd4\xc3\xb2\xa1" + b"\0" * 10, "cut short"),
    (b"\x0a\x0d\x0d\x0a" + b"\0" * 10, "cut short"),
    (b"GET / HTTP/1.1\r\n\r\n" + b"\0" * 40, "not a pcap"),
    (b"\x1f\x8b\x08\x00" + b"\0" * 40, "gzip"),
    (b"\x0a\x0d\x0d\x0a" + struct.pack("<I", 28) + b"\x11\x22\x33\x44" + b"\0" * 16, "byte-order"),
])
def test_open_errors(tmp_path, content, words):
    path = write(tmp_path, content)
    with pytest.raises(CaptureError) as ei:
        CaptureFile(path)
    assert words in str(ei.value)
    assert str(path) in str(ei.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CaptureError, match="no such file"):
        open_capture(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="directory"):
        open_capture(tmp_path)


# ---------------------------------------------------------------- pcapng writer

def pad4(b):
    return b + b"\0" * (-len(b) % 4)


def block(order, btype, body):
    """One pcapng block: type, length, padded body, length."""
    body = pad4(body)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def opt(order, code, value):
    return struct.pack(order + "HH", code, len(value)) + pad4(value)


def shb(order="<", major=1):
    body = struct.pack(order + "IHHq", 0x1A2B3C4D, major, 0, -1)
    return block(order, 0x0A0D0D0A, body + opt(order, 0, b""))


def idb(order, linktype, snaplen=0, tsresol=None, tsoffset=None):
    opts = b""
    if tsresol is not None:
        opts += opt(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += opt(order, 14, struct.pack(order + "q", tsoffset))
    if opts:
        opts += opt(order, 0, b"")
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def epb(order, ifid, units, data, orig=None):
    orig = len(data) if orig is None else orig
    head = struct.pack(order + "IIIII", ifid, units >> 32, units & 0xFFFFFFFF, len(data), orig)
    return block(order, 6, head + pad4(data) + opt(order, 1, b"comment") + opt(order, 0, b""))


def spb(order, data, orig=None):
    orig = len(data) if orig is None else orig
    return block(order, 3, struct.pack(order + "I", orig) + data)


def old_pb(order, ifid, units, data):
    n = len(data)
    head = struct.pack(order + "HHIIII", ifid, 0, units >> 32, units & 0xFFFFFFFF, n, n)
    return block(order, 2, head + data)


def two_interface_file(order="<"):
    """SHB, NRB, IDB(ether, 1e-9, +100 s), ISB, IDB(raw IP, 2^-20), packets, SPB, custom blocks."""
    parts = [
        shb(order),
        block(order, 4, b"\x00\x00\x00\x00"),                    # NRB (empty)
        idb(order, 1, tsresol=9, tsoffset=100),
        block(order, 5, struct.pack(order + "III", 0, 0, 0)),    # ISB
        idb(order, 101, snaplen=20, tsresol=0x80 | 20),
        epb(order, 0, T0 * 10**9 + 123456789, frame(1, 60)),
        block(order, 0x00000BAD, b"custom data"),                # custom block
        epb(order, 1, T0 * 2**20 + 2**19, frame(2, 40), orig=1500),
        spb(order, frame(3, 30)),                                # > snaplen 0 (no limit)
        block(order, 0x0000000A, b"\x01\x02\x03\x04"),           # DSB
        old_pb(order, 1, (T0 + 5) * 2**20 + 3, frame(4, 21)),
    ]
    want = [
        (T0 + 100 + 123456789 / 1e9, frame(1, 60), 1, 0, 60),
        (T0 + 0.5, frame(2, 40), 101, 1, 1500),
        (T0 + 0.5, frame(3, 30), 1, 0, 30),                      # SPB: last seen timestamp
        (T0 + 5 + 3 / 2**20, frame(4, 21), 101, 1, 21),
    ]
    return parts, want


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_two_interfaces(tmp_path, order):
    parts, want = two_interface_file(order)
    path = write(tmp_path, b"".join(parts), "x.pcapng")
    with open_capture(path) as cap:
        assert cap.format == "pcapng"
        got = list(cap.packets())
        st = cap.stats
    assert got == want
    assert got[0][0] == 1700000100.123456789
    assert got[1][0] == 1700000000.5
    assert st["packets"] == 4 and st["interfaces"] == 2 and st["sections"] == 1
    assert st["skipped_blocks"] == 4 and st["bad_blocks"] == 0


def test_pcapng_default_resolution_and_spb_snaplen(tmp_path):
    o = "<"
    data = shb(o) + idb(o, 1, snaplen=16) + epb(o, 0, T0 * 10**6 + 123456, frame(1, 16), 99) \
        + spb(o, frame(2, 40), orig=40)
    with open_capture(write(tmp_path, data, "d.pcapng")) as cap:
        got = list(cap.packets())
    assert got == [(T0 + 123456 / 1e6, frame(1, 16), 1, 0, 99),
                   (T0 + 123456 / 1e6, frame(2, 40)[:16], 1, 0, 40)]
    assert got[0][0] == 1700000000.123456


def test_pcapng_sections_reset_interfaces_and_switch_order(tmp_path):
    data = (shb("<") + idb("<", 1) + idb("<", 113) + epb("<", 1, T0 * 10**6, frame(1))
            + shb(">") + idb(">", 228, tsresol=3)
            + epb(">", 1, 0, frame(2))                      # interface 1 gone with the new section
            + epb(">", 0, (T0 + 7) * 1000 + 250, frame(3)))
    with open_capture(write(tmp_path, data, "s.pcapng")) as cap:
        got = list(cap.packets())
        st = cap.stats
    assert got == [(float(T0), frame(1), 113, 1, 60), (T0 + 7.25, frame(3), 228, 0, 60)]
    assert st["sections"] == 2 and st["unknown_interface"] == 1 and st["bad_blocks"] == 1


def test_pcapng_scapy_writer(tmp_path):
    from scapy.all import IP, TCP, Ether
    from scapy.utils import PcapNgWriter
    pkts = []
    for i in range(4):
        p = Ether(src=MAC1, dst=MAC2) / IP(dst="192.0.2.%d" % (i + 1)) / TCP(dport=80 + i)
        p.time = T0 + i + 0.75
        pkts.append(p)
    path = tmp_path / "s.pcapng"
    w = PcapNgWriter(str(path))
    for p in pkts:
        w.write(p)
    w.close()
    with open_capture(path) as cap:
        got = list(cap.packets())
    assert [g[1] for g in got] == [bytes(p) for p in pkts]
    assert [g[0] for g in got] == [T0 + i + 0.75 for i in range(4)]
    assert {(g[2], g[3]) for g in got} == {(1, 0)}


def _damaged(tmp_path, tail):
    o = "<"
    good = shb(o) + idb(o, 1) + epb(o, 0, T0 * 10**6, frame(1))
    with open_capture(write(tmp_path, good + tail, "bad.pcapng")) as cap:
        got = list(cap.packets())
        return got, cap.stats


@pytest.mark.parametrize("tail,reason,after", [
    (struct.pack("<II", 6, 8), "bad_block_length", False),
    (struct.pack("<II", 6, 30) + b"\0" * 22, "bad_block_length", False),
    (struct.pack("<II", 6, 4000) + b"\0" * 40, "block_past_eof", False),
    (b"\x06\x00\x00", "block_past_eof", False),
    (block("<", 6, b"\0" * 24)[:-4] + struct.pack("<I", 99), "block_length_mismatch", False),
    (epb("<", 5, 0, frame(2)), "unknown_interface", True),
    (block("<", 6, struct.pack("<5I", 0, 0, 0, 500, 500) + b"\0" * 8), "bad_packet_length", True),
    (block("<", 6, b"\0" * 8), "bad_packet_length", True),
    (block("<", 1, b"\0" * 4) + epb("<", 1, 0, frame(2)), "bad_interface", True),
    (block("<", 0x0A0D0D0A, b"\x99\x99\x99\x99" + b"\0" * 16), "bad_section", False),
    (shb("<", major=2), "bad_section", False),
])
def test_pcapng_damaged_blocks(tmp_path, tail, reason, after):
    # `after`: the damage is local, so reading continues with the packet appended here
    o = "<"
    got, st = _damaged(tmp_path, tail + epb(o, 0, (T0 + 1) * 10**6, frame(9)))
    assert st[reason] >= 1
    assert st["bad_blocks"] >= 1
    assert got[0] == (float(T0), frame(1), 1, 0, 60)
    assert len(got) == (2 if after else 1)
    if after:
        assert got[1][1] == frame(9)


def test_pcapng_bad_options_keep_defaults(tmp_path):
    o = "<"
    bad_opts = struct.pack(o + "HH", 9, 200) + b"\x09\0\0\0"
    data = shb(o) + block(o, 1, struct.pack(o + "HHI", 1, 0, 0) + bad_opts) \
        + epb(o, 0, T0 * 10**6 + 5, frame(1))
    with open_capture(write(tmp_path, data, "o.pcapng")) as cap:
        got = list(cap.packets())
        assert cap.stats["bad_options"] == 1
    assert got == [(T0 + 5 / 1e6, frame(1), 1, 0, 60)]


def test_pcapng_truncated_at_every_byte(tmp_path):
    parts, want = two_interface_file("<")
    data = b"".join(parts)
    # packet i is readable once the block carrying it is complete
    ends, off = [], 0
    for part in parts:
        off += len(part)
        ends.append(off)
    packet_block_ends = [ends[i] for i in (5, 7, 8, 10)]
    shb_len = len(parts[0])
    p = tmp_path / "cut.pcapng"
    for n in range(len(data) + 1):
        p.write_bytes(data[:n])
        if n < shb_len:
            with pytest.raises(CaptureError):
                open_capture(p)
            continue
        with open_capture(p) as cap:
            got = list(cap.packets())
            st = cap.stats
        complete = sum(1 for e in packet_block_ends if e <= n)
        assert got == want[:complete], n
        assert all(v >= 0 for v in st.values())
        assert st["bad_blocks"] == (0 if n in ends else 1), n


def test_pcapng_batches(tmp_path):
    o = "<"
    data = shb(o) + idb(o, 1) + b"".join(epb(o, 0, (T0 + i) * 10**6, frame(i)) for i in range(7))
    with open_capture(write(tmp_path, data, "b.pcapng")) as cap:
        sizes = [len(b) for b in cap.batches(3)]
        assert sizes == [3, 3, 1]
        assert cap.stats["packets"] == 7


def test_tsresol_units():
    assert pcapfile._tsresol_units(6) == 10**6
    assert pcapfile._tsresol_units(9) == 10**9
    assert pcapfile._tsresol_units(0x80 | 20) == 2**20
    assert pcapfile._tsresol_units(0) == 1


# ---------------------------------------------------------------- shared captures

def _index_counts(subset):
    counts = {}
    with open(PCAPS / "index.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row.get("set") == subset and row.get("packets", "").isdigit():
                counts[row["file"]] = int(row["packets"])
    return counts


@pytest.mark.shared
@pytest.mark.parametrize("subset", ["real", "edge"])
def test_shared_captures(subset):
    folder = PCAPS / subset
    if not folder.is_dir():
        pytest.skip("../shared/pcaps/%s not present" % subset)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert files
    counts = _index_counts(subset) if (PCAPS / "index.tsv").is_file() else {}
    mismatched = []
    for path in files:
        with open_capture(path) as cap:
            n = 0
            for _ in cap.packets():
                n += 1
            assert n == cap.stats["packets"]
            if subset == "real":
                assert cap.stats["truncated_records"] == 0 and cap.stats["bad_records"] == 0, path
        if path.name in counts and counts[path.name] != n:
            mismatched.append((path.name, counts[path.name], n))
    assert not mismatched
    if subset == "real":
        assert len(counts) == len(files)  # every real capture was checked against the index


# ---------------------------------------------------------------- newest timestamp (--time-shift now)

@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_newest_timestamp_is_the_latest_packet_a_replay_reads(tmp_path, order, nano):
    recs = records3(nano)
    recs = [recs[1], recs[0], recs[2]]            # out of order: the newest is not the last
    recs[2] = (T0 - 5, 7, frame(3, 42), 42)
    data = pcap_bytes(recs, order, nano)
    with open_capture(write(tmp_path, data)) as cap:
        expected = max(p[0] for p in cap.packets())
        assert cap.newest_timestamp() == expected == T0 + 1 + (0.999999999 if nano else 0.999999)
    # A record cut by the end of the file is not replayed, so it is not the newest either.
    cut = data + struct.pack(order + "IIII", T0 + 99, 0, 60, 60) + frame(4, 30)
    with open_capture(write(tmp_path, cut, "cut.pcap")) as cap:
        assert cap.newest_timestamp() == expected == max(p[0] for p in cap.packets())


def test_newest_timestamp_of_pcapng_and_of_an_empty_capture(tmp_path):
    parts, want = two_interface_file()
    with open_capture(write(tmp_path, b"".join(parts), "two.pcapng")) as cap:
        assert cap.newest_timestamp() == max(p[0] for p in want) == want[0][0]
    with open_capture(write(tmp_path, pcap_bytes([]))) as cap:
        assert cap.newest_timestamp() is None
