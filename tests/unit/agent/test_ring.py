"""The TPACKET_V3 block walker on hand-built ring blocks, against the reference path.

Each fixture is a frame as the kernel leaves it in a ring (outer VLAN tag taken out and given in
hv1, cooked frames without a link header and their sockaddr_ll beside them) and the bytes
LiveSource would have read for it (tag put back, SLL header made). The walker's chunk must equal
fastdecode.chunk_from_batch of those bytes (itself proved equal to the reference decode()), and
the records of both engines must be the same.
"""
import struct

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1Q, Ether

from myason import kernels
from myason.agent import fastdecode as fd
from myason.agent.config import load_agent_config
from myason.agent.process import PacketProcessor
from myason.kernels.ring import (BLOCK_DESC_LEN, HDR_SLL, TP_STATUS_KERNEL, TP_STATUS_USER, TP_STATUS_VLAN_TPID_VALID,
                                 TP_STATUS_VLAN_VALID, TPACKET3_HDRLEN)

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="numba is not installed")

TP_STATUS_BLK_TMO = 0x20
IFINDEX = 7
BLOCK = 1 << 16

_BLOCK_HDR = struct.Struct("=IIIIIIQ")          # version, offset_to_priv, status, num_pkts, first, blk_len, seq
_HDR = struct.Struct("=IIIIIIHHIIHH")           # tpacket3_hdr up to hv1.tp_padding
_SLL = struct.Struct("=HHiHBB8s")               # sockaddr_ll (sll_protocol stored big-endian)


class Frame:
    """A frame as it sits in the ring, and what LiveSource would have made of it."""

    def __init__(self, data, sec=1700000000, nsec=123456789, wire=None, tci=None, tpid=None,
                 sll=None, linktype=1):
        self.data = bytes(data)
        self.sec, self.nsec = sec, nsec
        self.wire = len(self.data) if wire is None else wire
        self.tci, self.tpid = tci, tpid
        self.sll = sll or (0x0800, 0, 1, b"")    # protocol, pkttype, hatype, address
        self.linktype = linktype

    @property
    def status(self):
        st = TP_STATUS_USER
        if self.tci is not None:
            st |= TP_STATUS_VLAN_VALID
            if self.tpid is not None:
                st |= TP_STATUS_VLAN_TPID_VALID
        return st

    def reference(self):
        """LiveSource.read_batch's bytes for this frame."""
        frame = self.data
        cooked = self.linktype == 113
        if cooked:
            proto, pkttype, hatype, addr = self.sll
            frame = struct.pack("!HHH8sH", pkttype, hatype, len(addr), addr, proto) + frame
        if self.tci is not None and self.linktype in (1, 113):
            at = 14 if cooked else 12
            frame = frame[:at] + struct.pack("!HH", self.tpid or 0x8100, self.tci) + frame[at:]
        return frame


def build_ring(blocks_of_frames, nblocks=None, block=BLOCK, mac=82, ready=True):
    """A ring of `nblocks` blocks; block k holds the frames blocks_of_frames[k] (TP_STATUS_USER)."""
    nblocks = nblocks or len(blocks_of_frames)
    ring = bytearray(block * nblocks)
    for k, frames in enumerate(blocks_of_frames):
        base = k * block
        off = BLOCK_DESC_LEN
        for j, f in enumerate(frames):
            size = mac + len(f.data)
            nxt = 0 if j == len(frames) - 1 else (size + 7) & ~7
            assert off + size <= block
            _HDR.pack_into(ring, base + off, nxt, f.sec, f.nsec, len(f.data), f.wire, f.status, mac,
                           mac + 14, 0x1234, f.tci or 0, f.tpid or 0, 0)
            proto, pkttype, hatype, addr = f.sll
            _SLL.pack_into(ring, base + off + HDR_SLL, 17, 0, IFINDEX, hatype, pkttype, len(addr),
                           addr.ljust(8, b"\0"))
            struct.pack_into("!H", ring, base + off + HDR_SLL + 2, proto)
            ring[base + off + mac:base + off + size] = f.data
            off += nxt
        status = (TP_STATUS_USER | TP_STATUS_BLK_TMO) if ready else TP_STATUS_KERNEL
        _BLOCK_HDR.pack_into(ring, base, 1, BLOCK_DESC_LEN, status, len(frames), BLOCK_DESC_LEN, off, k)
    return ring


def eth(payload, src="02:00:00:00:00:01"):
    return bytes(Ether(src=src, dst="02:00:00:00:00:02") / payload)


def ether_fixtures():
    """Ethernet frames with and without a stripped tag, fast and slow ones."""
    t = [1700000000 + i for i in range(100)]
    ip4 = IP(src="192.0.2.1", dst="198.51.100.2", tos=0x28)
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0xB8)
    frames = [
        Frame(eth(ip4 / TCP(sport=40000, dport=443, flags="S")), t[0], 1),
        Frame(eth(ip4 / UDP(sport=5353, dport=53) / (b"x" * 60)), t[0], 999999999),
        Frame(eth(ip6 / TCP(sport=1, dport=2, flags="FA")), t[1], 5),
        Frame(eth(ip6 / UDP(sport=3, dport=4)), t[1], 6, wire=500),                    # truncated
        Frame(eth(ip4 / UDP(sport=7, dport=8)), t[2], 0, tci=0x2005),                  # stripped 802.1Q
        Frame(eth(ip6 / TCP(sport=9, dport=10)), t[2], 1, tci=0x0FFF, tpid=0x88A8),   # stripped 802.1ad
        Frame(eth(Dot1Q(vlan=42) / ip4 / UDP(sport=11, dport=12)), t[3], 0, tci=7, tpid=0x88A8),  # QinQ
        Frame(eth(ip4 / UDP(sport=13, dport=14)), t[3], 1, tci=3, tpid=0x0800),       # odd TPID: decode()
        Frame(eth(IP(src="192.0.2.9", dst="192.0.2.10", flags="MF", id=77) / UDP(sport=15, dport=16)
                  / (b"f" * 16)), t[4], 0),
        Frame(eth(IP(src="192.0.2.9", dst="192.0.2.10", frag=3, id=77, proto=17) / (b"g" * 16)), t[4], 1),
        Frame(eth(ip6 / IPv6ExtHdrFragment(m=1) / UDP(sport=17, dport=18)), t[5], 0),
        Frame(eth(ARP()), t[5], 1),
        Frame(eth(ARP()), t[5], 2, tci=100),
        Frame(eth(ip4 / TCP())[:20], t[6], 0, wire=60),                                 # cut in the IP header
        Frame(eth(ip4 / TCP())[:10], t[6], 1, tci=5),                                   # shorter than MACs + type
        Frame(b"", t[6], 2, wire=60),
    ]
    return frames


def chunk_of(frames, linktype, per_block=5, digests=False):
    """The walker's chunk of `frames` spread over blocks of per_block frames (one read)."""
    from myason.agent.ring import BlockReader
    groups = [frames[i:i + per_block] for i in range(0, len(frames), per_block)]
    ring = build_ring(groups)
    reader = BlockReader(ring, BLOCK, len(groups), linktype, IFINDEX, max_blocks=len(groups))
    got = reader.read(digests)
    assert reader.read() is None
    reader.close()
    return got, ring


def reference_chunk(frames, linktype):
    return fd.chunk_from_batch([(f.sec + f.nsec * 1e-9, f.reference()) for f in frames], linktype, IFINDEX)


def assert_same_chunk(got, want):
    assert got.n == want.n
    np.testing.assert_array_equal(got.ts, want.ts)
    np.testing.assert_array_equal(got.status, want.status)
    ok = want.status == fd.OK
    np.testing.assert_array_equal(got.kw[ok], want.kw[ok])
    for name in ("iplen", "flags", "vlan"):
        np.testing.assert_array_equal(getattr(got, name)[ok], getattr(want, name)[ok], err_msg=name)
    assert got.rejects == want.rejects
    assert got.frags == want.frags


@pytest.mark.parametrize("per_block", [1, 3, 16])
def test_ethernet_blocks_decode_as_the_reference(per_block):
    frames = ether_fixtures()
    (chunk, nbytes, truncated), _ = chunk_of(frames, 1, per_block)
    assert_same_chunk(chunk, reference_chunk(frames, 1))
    assert nbytes == sum(len(f.reference()) for f in frames)
    assert truncated == sum(f.wire > len(f.data) for f in frames)
    # Fast rows, slow rows and rejects all occur.
    assert set(chunk.status.tolist()) == {fd.OK, fd.REJECTED}
    assert {r for _, r, _ in chunk.rejects} >= {"non_ip", "short_frame"}
    assert chunk.frags


def test_vlan_from_the_ring_metadata():
    frames = ether_fixtures()
    (chunk, _, _), _ = chunk_of(frames, 1)
    assert chunk.vlan[4] == 5 and chunk.vlan[5] == 0xFFF       # the TCI's VLAN id, priority bits off
    assert chunk.vlan[6] == 7                                   # QinQ: the outer (stripped) tag
    assert chunk.vlan[0] == 0


def test_timestamps_and_ifindex():
    frames = ether_fixtures()
    (chunk, _, _), _ = chunk_of(frames, 1)
    assert chunk.ts[1] == 1700000000 + 999999999 * 1e-9        # exactly LiveSource's arithmetic
    assert (chunk.kw[chunk.status == fd.OK, 5] == IFINDEX).all()


def cooked_fixtures():
    l3 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    l3v6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=3, dport=4, flags="R"))
    return [
        Frame(l3, linktype=113, sll=(0x0800, 0, 519, b"")),
        Frame(l3v6, linktype=113, sll=(0x86DD, 4, 1, b"\x02\x00\x00\x00\x00\x09")),
        Frame(l3, linktype=113, sll=(0x0800, 0, 824, b"")),                  # netlink: non_ip
        Frame(l3, linktype=113, sll=(0x0800, 0, 1, b"\x02\x00\x00\x00\x00\x09"), tci=12),
        Frame(l3, linktype=113, sll=(0x0806, 1, 1, b"\x02\x00\x00\x00\x00\x09")),
        Frame(l3, linktype=113, sll=(0x0800, 0, 1, b"0123456789"[:8])),
    ]


def test_cooked_frames_get_livesources_sll_header():
    frames = cooked_fixtures()
    (chunk, nbytes, _), _ = chunk_of(frames, 113, per_block=2)
    assert_same_chunk(chunk, reference_chunk(frames, 113))
    assert nbytes == sum(len(f.reference()) for f in frames)
    assert chunk.status[0] == fd.OK and chunk.status[1] == fd.OK
    assert chunk.vlan[3] == 12


def test_raw_ip_ignores_vlan_metadata():
    frames = [Frame(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)), linktype=101),
              Frame(bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2)), linktype=101, tci=9),
              Frame(b"\x50" + bytes(30), linktype=101)]
    (chunk, nbytes, _), _ = chunk_of(frames, 101)
    assert_same_chunk(chunk, reference_chunk(frames, 101))
    assert nbytes == sum(len(f.data) for f in frames)


def test_blocks_are_read_in_order_and_given_back():
    from myason.agent.ring import BlockReader
    frames = ether_fixtures()
    groups = [frames[0:4], frames[4:8], frames[8:12]]
    ring = build_ring(groups, nblocks=4)
    # Block 1 is still the kernel's: only block 0 may be read, then nothing until it is handed over.
    struct.pack_into("=I", ring, BLOCK + 8, TP_STATUS_KERNEL)
    reader = BlockReader(ring, BLOCK, 4, 1, IFINDEX, max_blocks=2)
    chunk, _, _ = reader.read()
    assert chunk.n == 4
    assert struct.unpack_from("=I", ring, 8)[0] == TP_STATUS_KERNEL      # handed back
    assert reader.read() is None
    assert reader.pending() == 4                                         # num_pkts of the kernel's block
    struct.pack_into("=I", ring, BLOCK + 8, TP_STATUS_USER)
    chunk, _, _ = reader.read()                                          # blocks 1 and 2 (max_blocks)
    assert chunk.n == 8 and reader.head == 3
    assert_same_chunk(chunk, reference_chunk(frames[4:12], 1))
    assert reader.read() is None and reader.pending() == 0
    # The ring wraps: block 3, then block 0 again.
    struct.pack_into("=IIII", ring, 3 * BLOCK + 8, TP_STATUS_USER, 0, BLOCK_DESC_LEN, BLOCK_DESC_LEN)
    full = build_ring([frames[12:16]])
    ring[0:BLOCK] = full[0:BLOCK]
    chunk, _, _ = reader.read()
    assert chunk.n == 4 and reader.head == 1
    assert_same_chunk(chunk, reference_chunk(frames[12:16], 1))
    reader.close()


def test_a_full_ring_is_read_once_around():
    from myason.agent.ring import BlockReader
    frames = ether_fixtures()
    ring = build_ring([frames[0:5], frames[5:9]])       # every block the user's: a frozen ring
    reader = BlockReader(ring, BLOCK, 2, 1, IFINDEX, max_blocks=8)
    chunk, _, _ = reader.read()
    assert chunk.n == 9 and reader.head == 0
    assert reader.read() is None
    reader.close()


def test_digests_tell_frames_apart_and_select_keeps_rows():
    frames = ether_fixtures()
    (chunk, _, _), ring = chunk_of(frames, 1, digests=True)
    assert len(set(chunk.digest.tolist())) == len(frames)
    (again, _, _), _ = chunk_of(frames, 1, per_block=4, digests=True)
    np.testing.assert_array_equal(chunk.digest, again.digest)     # the same frames, another layout
    keep = [i for i in range(chunk.n) if i % 3]
    sub = chunk.select(keep)
    assert sub.n == len(keep)
    np.testing.assert_array_equal(sub.ts, chunk.ts[keep])
    assert [r for _, r, _ in sub.rejects] == [r for i, r, _ in chunk.rejects if i in keep]
    assert all(chunk.rejects[[i for i, _, _ in chunk.rejects].index(keep[j])][1] == r for j, r, _ in sub.rejects)


def test_records_equal_the_reference_engine():
    cfg = load_agent_config(None)
    frames = ether_fixtures() * 3
    for j, f in enumerate(frames):
        f.sec += j
    (chunk, _, _), _ = chunk_of(frames, 1, per_block=7)
    fast = PacketProcessor(cfg, "a", {IFINDEX: "eth0"}, engine="fast", packet_clock=False)
    ref = PacketProcessor(cfg, "a", {IFINDEX: "eth0"}, packet_clock=False)
    fast.process_chunk(chunk)
    ref.process([(f.sec + f.nsec * 1e-9, f.reference()) for f in frames], 1, IFINDEX)
    for p in (fast, ref):
        p.flush()
    assert sorted(fast.take_rows()) == sorted(ref.take_rows())
    assert fast.stats() == ref.stats()


def test_frame_sizes():
    assert TPACKET3_HDRLEN == 68
