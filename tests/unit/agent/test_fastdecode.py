"""The fast decoder against the reference decode(): every frame is either left slow or decoded
to exactly decode()'s fields; the chunk path of PacketProcessor gives process()'s rows."""
import dataclasses
import functools
import random
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, Jumbo,
)
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.sctp import SCTP

from myason import kernels
from myason.agent import fastdecode as fd
from myason.agent.decode import decode
from myason.agent.pcapfile import open_capture
from myason.agent.process import PacketProcessor
from myason.agent.config import load_agent_config

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="numba is not installed")


def eth(**fields):
    return Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", **fields)


def ip4(**kw):
    return IP(src="192.0.2.1", dst="198.51.100.2", tos=0x28, **kw)


def ip6(**kw):
    return IPv6(src="2001:db8::1", dst="2001:db8:ffff::2", tc=0xB8, **kw)


@functools.lru_cache(maxsize=None)
def fixtures():
    """(frame, linktype) of every encapsulation the decoders know, fast and slow ones."""
    l4 = [TCP(sport=40000, dport=443, flags="SA"), UDP(sport=5353, dport=53), ICMP(type=3, code=1),
          SCTP(sport=1, dport=2), UDP(sport=9, dport=9) / (b"x" * 30)]
    v4 = [bytes(ip4() / x) for x in l4] + [
        bytes(ip4(options=b"\x01" * 8) / TCP()), bytes(ip4(proto=47) / b"gre!"),
        bytes(ip4(flags="DF") / UDP()),
        bytes(ip4(len=0) / TCP()), bytes(ip4(flags="MF") / UDP()), bytes(ip4(frag=10) / b"frag"),
        bytes(ip4() / TCP() / b"payload") + b"\0" * 12,    # Ethernet padding after the IP packet
        bytes(ip4(len=400) / UDP()), bytes(ip4(ihl=4) / TCP()), bytes(ip4(proto=58) / b"\x80\x00"),
    ]
    v6 = [bytes(ip6() / x) for x in (TCP(sport=1, dport=2, flags="FA"), UDP(sport=3, dport=4),
                                     ICMPv6EchoRequest())] + [
        bytes(ip6(nh=132) / SCTP()), bytes(ip6(plen=0) / UDP()), bytes(ip6(nh=59)),
        bytes(ip6() / IPv6ExtHdrHopByHop() / TCP()), bytes(ip6() / IPv6ExtHdrFragment(m=1) / UDP()),
        bytes(ip6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(offset=8) / (b"x" * 8)),
        bytes(ip6() / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=9)]) / UDP()),
    ]
    out = []
    for p in v4 + v6:
        v4p = p[0] >> 4 == 4
        et, fam = (0x0800, 2) if v4p else (0x86DD, 24)
        out += [(bytes(eth(type=et)) + p, 1), (bytes(eth() / Dot1Q(vlan=5, type=et)) + p, 1),
                (bytes(eth(type=0x88A8) / Dot1Q(vlan=4094, type=et)) + p, 1), (p, 101), (p, 12), (p, 14),
                (struct.pack("<I", fam) + p, 0), (struct.pack(">I", fam if v4p else 30) + p, 0),
                (struct.pack(">I", fam if v4p else 28) + p, 108),
                (struct.pack("<I", 2 if v4p else 0x1E) + p, 0),
                (bytes(CookedLinux(proto=et)) + p, 113), (bytes(CookedLinuxV2(proto=et)) + p, 276),
                (p, 228 if v4p else 229)]
    tcp4 = bytes(ip4() / TCP())
    out += [
        (bytes(eth(type=0x88A8) / Dot1AD(vlan=1) / Dot1Q(vlan=2)) + tcp4, 1),
        (bytes(eth(type=0x9100)) + b"\x00\x07\x08\x00" + tcp4, 1),
        (bytes(eth(type=0x8847) / MPLS(s=1)) + tcp4, 1), (bytes(eth() / PPPoE() / PPP(proto=0x21)) + tcp4, 1),
        (bytes(eth() / ARP()), 1), (b"\xff\x03\x00\x21" + tcp4, 9), (b"\x0f\x00\x08\x00" + tcp4, 104),
        (bytes(CookedLinux(proto=0x800, lladdrtype=824)) + tcp4, 113), (tcp4, 127), (tcp4, 228),
        (bytes(ip6()), 228),
        (bytes(CookedLinuxV2(proto=0x800, lladdrtype=824)) + tcp4, 276),
    ]
    return out


def kernel_only(frames):
    """A Chunk of (frame, linktype, ifindex) decoded by the kernel alone (slow frames left slow)."""
    n = len(frames)
    c = fd.Chunk(n)
    raw = b"".join(f for f, _, _ in frames)
    lens = np.array([len(f) for f, _, _ in frames], np.int64)
    c.lens[:] = lens
    c.offs[:] = np.concatenate(([0], np.cumsum(lens)[:-1]))
    kernels.load().decode_frames(np.frombuffer(raw, np.uint8), c.offs, c.lens,
                                 np.array([lt for _, lt, _ in frames], np.int64),
                                 np.array([x for _, _, x in frames], np.int64), c.kw, c.iplen, c.flags,
                                 c.vlan, c.status)
    return c


def reference(frame, linktype, ifindex):
    """decode()'s answer in Chunk terms: (words, ip_len, flags, vlan, frag) or the reason."""
    p = decode(frame, linktype)
    if isinstance(p, str):
        return p
    src, dst, sport, dport, proto, tos, length, flags, ver, vlan, frag = p
    return (fd.words_of(src, dst) + (fd.misc_word(sport, dport, proto, tos, ver), ifindex),
            length, flags, vlan, frag)


def fields(c, i):
    return tuple(int(x) for x in c.kw[i]), int(c.iplen[i]), int(c.flags[i]), int(c.vlan[i])


def check(frames):
    """Kernel: slow or exact. Kernel + finish_slow (chunk_from_batch): exactly decode()."""
    c = kernel_only(frames)
    fast = 0
    for i, (frame, lt, ifx) in enumerate(frames):
        if c.status[i] == fd.OK:
            ref = reference(frame, lt, ifx)
            assert not isinstance(ref, str) and ref[4] == 0, (frame.hex(), lt, ref)
            assert fields(c, i) == ref[:4], (frame.hex(), lt)
            fast += 1
        else:
            assert c.status[i] == fd.SLOW
    full = fd.chunk_from_batch([(1.5 + i, f, lt, x, len(f)) for i, (f, lt, x) in enumerate(frames)])
    rejects = {i: (r, lt) for i, r, lt in full.rejects}
    frags = {i: rest for i, *rest in full.frags}
    for i, (frame, lt, ifx) in enumerate(frames):
        ref = reference(frame, lt, ifx)
        assert full.ts[i] == 1.5 + i
        if isinstance(ref, str):
            assert full.status[i] == fd.REJECTED and rejects[i] == (ref, lt)
        else:
            assert full.status[i] == fd.OK and fields(full, i) == ref[:4]
            assert (frags[i][5] if i in frags else 0) == ref[4]
    return fast


def test_every_encapsulation_is_slow_or_exact():
    frames = [(f, lt, 3) for f, lt in fixtures()]
    assert check(frames) > len(frames) // 2    # most of them take the fast path


def test_truncations_and_mutations_are_slow_or_exact():
    rng = random.Random(5)
    frames = []
    for frame, lt in fixtures():
        frames += [(frame[:cut], lt, 0) for cut in range(len(frame) + 1)]
        for _ in range(30):
            m = bytearray(frame)
            for _ in range(rng.randrange(1, 4)):
                m[rng.randrange(len(m))] = rng.randrange(256)
            frames.append((bytes(m), lt, 0))
    frames += [(rng.randbytes(rng.randrange(0, 80)), rng.choice([0, 1, 12, 101, 108, 113, 228, 229, 276]), 0)
               for _ in range(5000)]
    check(frames)


def write_pcap(path, frames, magic=0xA1B2C3D4, order="<", linktype=1, tail=b""):
    with open(path, "wb") as fh:
        fh.write(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
        for i, f in enumerate(frames):
            fh.write(struct.pack(order + "IIII", 1700000000 + i, 999999 - i, len(f), len(f) + 4) + f)
        fh.write(tail)


@pytest.mark.parametrize("magic,order", [(0xA1B2C3D4, "<"), (0xA1B2C3D4, ">"), (0xA1B23C4D, "<"),
                                         (0xA1B23C4D, ">")])
@pytest.mark.parametrize("tail", [b"", b"\1\2\3", struct.pack("<IIII", 1, 2, 40, 40) + b"x",
                                  struct.pack("<IIII", 1, 2, 300000, 40) + b"x" * 64])
def test_pcap_walk_matches_the_reader(tmp_path, magic, order, tail):
    frames = [f for f, lt in fixtures() if lt == 1]
    path = tmp_path / "t.pcap"
    write_pcap(path, frames, magic, order, tail=tail)
    with open_capture(path) as cap:
        ref = [p for b in cap.batches() for p in b]
        ref_stats = dict(cap.stats)
        walker = fd.PcapWalker(cap, size=7)
        chunks = list(walker.chunks())
        assert cap.stats == ref_stats
    got = [(float(c.ts[i]), fields(c, i)) for c in chunks for i in range(c.n) if c.status[i] == fd.OK]
    want = [(ts, r[:4]) for ts, f, lt, ifx, _ in ref
            for r in [reference(f, lt, ifx)] if not isinstance(r, str)]
    assert got == want
    assert sum(len(c.rejects) for c in chunks) == sum(isinstance(reference(f, 1, 0), str) for _, f, *_ in ref)


@pytest.mark.shared
def test_real_captures_slow_or_exact():
    real = SHARED / "pcaps" / "real"
    if not real.is_dir():
        pytest.skip("../shared/pcaps/real is absent")
    fast = total = 0
    for path in sorted(real.iterdir()):
        with open_capture(path) as cap:
            frames = [(f, lt, ifx) for b in cap.batches() for _, f, lt, ifx, _ in b]
            ts = [t for b in cap.batches() for t, *_ in b]
            chunks = list(fd.PcapWalker(cap).chunks())
        c = kernel_only(frames)
        for i, (frame, lt, ifx) in enumerate(frames):
            if c.status[i] == fd.OK:
                ref = reference(frame, lt, ifx)
                assert not isinstance(ref, str) and ref[4] == 0 and fields(c, i) == ref[:4], (path.name, i)
                fast += 1
        # The walker (kernel + reference for the slow frames) gives decode()'s fields and the times.
        j = 0
        for ch in chunks:
            rejected = {i for i, _, _ in ch.rejects}
            for i in range(ch.n):
                ref = reference(*frames[j])
                assert float(ch.ts[i]) == ts[j], (path.name, j)
                assert (i in rejected) if isinstance(ref, str) else fields(ch, i) == ref[:4], (path.name, j)
                j += 1
        assert j == len(frames)
        total += len(frames)
    assert fast > 0.9 * total


# -- the processor's chunk path ---------------------------------------------------------------

class FakeRoutes:
    def annotate(self, src, dst):
        return len(src), "next-%d" % src[-1], src[0] % 33, dst[0] % 33


class FakeAsn:
    def lookup(self, raw):
        return raw[-1] * 7


@functools.lru_cache(maxsize=None)
def fragment_templates():
    first = bytes(eth(type=0x800) / IP(src="10.0.0.1", dst="10.9.9.8", id=1, flags="MF") /
                  UDP(sport=5, dport=7) / (b"f" * 16))
    later = bytes(eth(type=0x800) / IP(src="10.0.0.1", dst="10.9.9.8", id=1, frag=3, proto=17) / (b"g" * 16))
    return first, later


def with_id(template, src_last, ident):
    frame = bytearray(template)
    frame[18:20] = ident.to_bytes(2, "big")
    frame[29] = src_last
    return bytes(frame)


def traffic(seed, n=6000):
    """(ts, frame, linktype, ifindex) tuples: first fragments at 50/s (the fragment table stays
    above 1024 entries, so every tick prunes it), later fragments of recent and of nearly
    expired ones, among all fixture frames, with backward time jumps, rejects, several link
    types and interfaces."""
    rng = random.Random(seed)
    first, later = fragment_templates()
    frames = fixtures()
    t = 1700000000.0
    out, pending = [], []
    for _ in range(n):
        t += rng.expovariate(100) if rng.random() > 0.002 else -rng.uniform(0, 2)
        r = rng.random()
        if r < 0.5:
            pending.append((rng.randrange(256), rng.randrange(1 << 16)))
            out.append((t, with_id(first, *pending[-1]), 1, 0))
        elif r < 0.6 and pending:
            # A recent first fragment, or one about 30 s old: a prune may just have taken it.
            pick = pending[-50:] if rng.random() < 0.5 else pending[-1600:-1450] or pending
            out.append((t, with_id(later, *rng.choice(pick)), 1, 0))
        else:
            frame, lt = rng.choice(frames)
            out.append((t, frame, lt, rng.choice([0, 1])))
    return out


def rows_of(proc):
    return Counter(tuple(r) for r in proc.take_rows())


@pytest.mark.parametrize("seed,overrides", [
    (1, {}), (2, {"cache_limit": 5, "cache_fin_timeout": 0.0, "tick": 0.25}),
    (3, {"cache_inactive_timeout": 1.0, "cache_active_timeout": 3.0, "tick": 2.0}),
])
def test_chunk_path_gives_the_reference_rows(seed, overrides):
    cfg = load_agent_config(None, overrides)
    frames = traffic(seed)
    names = {0: "eth0", 1: "eth1"}
    ref = PacketProcessor(cfg, "a1", names, FakeRoutes(), FakeAsn(), engine="python")
    fast = PacketProcessor(cfg, "a1", names, FakeRoutes(), FakeAsn(), engine="fast")
    for start in range(0, len(frames), 600):
        batch = [(ts, f, lt, ifx, len(f)) for ts, f, lt, ifx in frames[start:start + 600]]
        ref.process(batch)
        fast.process_chunk(fd.chunk_from_batch(batch))
        assert rows_of(fast) == rows_of(ref)
    ref.flush()
    fast.flush()
    assert rows_of(fast) == rows_of(ref)
    assert fast.stats() == ref.stats()
    assert fast.linktypes_skipped == ref.linktypes_skipped
    assert ref.fragments > 1100 and 0 < ref.fragments_unmatched < ref.fragments / 5


def test_chunk_path_without_packet_clock_ticks_on_request():
    cfg = dataclasses.replace(load_agent_config(None), tick=1.0)
    frames = [(ts, f, lt, ifx, len(f)) for ts, f, lt, ifx in traffic(4)]
    ref = PacketProcessor(cfg, "a", packet_clock=False, engine="python")
    fast = PacketProcessor(cfg, "a", packet_clock=False, engine="fast")
    ref.process(frames)
    fast.process_chunk(fd.chunk_from_batch(frames))
    assert fast.now == ref.now and fast.next_tick is None
    ref.tick(ref.now + 20)
    fast.tick(fast.now + 20)
    assert rows_of(fast) == rows_of(ref)
