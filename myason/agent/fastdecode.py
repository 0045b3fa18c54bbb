"""Fast path, phase 1: classic-pcap record walk and common-case decoding in numba.

The kernels fill per-packet arrays (a Chunk) for the frames they fully understand: Ethernet
[+ one VLAN tag], raw IP, BSD null/loop and Linux SLL/SLL2 carrying unfragmented IPv4 (options
allowed) or IPv6 without extension headers. Every other frame is marked slow and decoded by the
reference decode() in Python, so exotic encapsulations, fragments and extension chains keep the
reference behaviour exactly; rejected frames keep the reference reason names.

Key words (uint64, per packet): src hi, src lo, dst hi, dst lo (IPv4 in the lo word, hi 0),
sport << 48 | dport << 32 | proto << 24 | tos << 16 | ip version, ifindex.
"""
import numpy as np

from myason.agent import decode as dec
from myason.agent import fastjit
from myason.agent.fastjit import RO_BYTES, helper, kernel
from myason.agent.pcapfile import STAT_KEYS

# Chunk.status values.
OK, SLOW, REJECTED = 0, 1, 2
KEY_WORDS = 6
DEFAULT_CHUNK = 1 << 17
MAX_RECORD = 256 * 1024       # as pcapfile.MAX_RECORD: a longer record is corruption
_IPV6_EXT = (0, 43, 44, 51, 60, 140)
_MASK64 = (1 << 64) - 1


# -- kernels ----------------------------------------------------------------------------------

@helper(inline=True)
def _transport(b, t, end, proto):
    """(sport, dport, tcp flags) exactly as decode._transport."""
    if proto == 6:
        if t + 20 <= end:
            return (b[t] << 8) | b[t + 1], (b[t + 2] << 8) | b[t + 3], np.int64(b[t + 13])
    elif proto == 17 or proto == 136:
        if t + 8 <= end:
            return (b[t] << 8) | b[t + 1], (b[t + 2] << 8) | b[t + 3], 0
    elif proto == 132:
        if t + 12 <= end:
            return (b[t] << 8) | b[t + 1], (b[t + 2] << 8) | b[t + 3], 0
    elif proto == 1 or proto == 58:
        if t + 2 <= end:
            return 0, (b[t] << 8) | b[t + 1], 0
    return 0, 0, 0


@helper(inline=True)
def _be64(b, p):
    r = np.uint64(0)
    for j in range(8):
        r = (r << np.uint64(8)) | np.uint64(b[p + j])
    return r


@helper(inline=True)
def _misc(sport, dport, proto, tos, version):
    return ((np.uint64(sport) << np.uint64(48)) | (np.uint64(dport) << np.uint64(32))
            | (np.uint64(proto) << np.uint64(24)) | (np.uint64(tos) << np.uint64(16))
            | np.uint64(version))


@helper(inline=True)
def _ipv4(b, q, end, vlan, i, kw, iplen, tflags, vlans):
    """Unfragmented IPv4 at q; False leaves the frame to decode()."""
    if q + 20 > end:
        return False
    vihl = b[q]
    if vihl >> 4 != 4:
        return False
    ihl = (vihl & 15) << 2
    t = q + ihl
    if ihl < 20 or t > end:
        return False
    if ((b[q + 6] << 8) | b[q + 7]) & 0x3FFF:
        return False   # a fragment: the processor attributes its ports in packet order
    ip_len = (b[q + 2] << 8) | b[q + 3]
    if ip_len:
        e = q + ip_len
        if e > end:
            e = end
    else:
        # TSO/GSO captures carry total length 0: the captured bytes, as decode() does.
        ip_len = end - q
        e = end
    proto = b[q + 9]
    sport, dport, fl = _transport(b, t, e, proto)
    src = np.uint64((b[q + 12] << 24) | (b[q + 13] << 16) | (b[q + 14] << 8) | b[q + 15])
    dst = np.uint64((b[q + 16] << 24) | (b[q + 17] << 16) | (b[q + 18] << 8) | b[q + 19])
    kw[i, 0] = 0
    kw[i, 1] = src
    kw[i, 2] = 0
    kw[i, 3] = dst
    kw[i, 4] = _misc(sport, dport, proto, b[q + 1], 4)
    iplen[i] = ip_len
    tflags[i] = fl
    vlans[i] = vlan
    return True


@helper(inline=True)
def _ipv6(b, q, end, vlan, i, kw, iplen, tflags, vlans):
    """IPv6 without extension headers at q; False leaves the frame to decode()."""
    if q + 40 > end or b[q] >> 4 != 6:
        return False
    nh = b[q + 6]
    for x in _IPV6_EXT:
        if nh == x:
            return False
    plen = (b[q + 4] << 8) | b[q + 5]
    t = q + 40
    if plen:
        ip_len = 40 + plen
        e = t + plen
        if e > end:
            e = end
    else:
        ip_len = end - q
        e = end
    sport, dport, fl = _transport(b, t, e, nh)
    kw[i, 0] = _be64(b, q + 8)
    kw[i, 1] = _be64(b, q + 16)
    kw[i, 2] = _be64(b, q + 24)
    kw[i, 3] = _be64(b, q + 32)
    kw[i, 4] = _misc(sport, dport, nh, ((b[q] & 15) << 4) | (b[q + 1] >> 4), 6)
    iplen[i] = ip_len
    tflags[i] = fl
    vlans[i] = vlan
    return True


@helper(inline=True)
def _link(b, p, n, lt):
    """(IP offset, ethertype, vlan) behind the link layer of b[p:p+n]; ethertype 0: slow."""
    if lt == 1:
        if n < 14:
            return 0, 0, 0
        et = (b[p + 12] << 8) | b[p + 13]
        if et == 0x8100 or et == 0x88A8 or et == 0x9100 or et == 0x9200 or et == 0x9300:
            if n < 18:
                return 0, 0, 0
            return p + 18, (b[p + 16] << 8) | b[p + 17], ((b[p + 14] << 8) | b[p + 15]) & 0xFFF
        return p + 14, et, 0
    if lt == 101 or lt == 12 or lt == 14:
        if n < 1:
            return 0, 0, 0
        v = b[p] >> 4
        return p, 0x0800 if v == 4 else 0x86DD if v == 6 else 0, 0
    if lt == 228:
        return p, 0x0800, 0
    if lt == 229:
        return p, 0x86DD, 0
    if lt == 113:
        if n < 16 or ((b[p + 2] << 8) | b[p + 3]) == 824:
            return 0, 0, 0
        return p + 16, (b[p + 14] << 8) | b[p + 15], 0
    if lt == 276:
        if n < 20 or ((b[p + 8] << 8) | b[p + 9]) == 824:
            return 0, 0, 0
        return p + 20, (b[p] << 8) | b[p + 1], 0
    if lt == 0 or lt == 108:
        if n < 4:
            return 0, 0, 0
        be = (b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]
        if lt == 108:
            fam = be
        else:
            # Host byte order, unknown: a value above 16 bits means the other order.
            fam = (b[p + 3] << 24) | (b[p + 2] << 16) | (b[p + 1] << 8) | b[p]
            if fam > 0xFFFF:
                fam = be
        if fam == 2:
            return p + 4, 0x0800, 0
        if fam == 24 or fam == 28 or fam == 30:
            return p + 4, 0x86DD, 0
    return 0, 0, 0


@helper(inline=True)
def _frame(b, p, n, lt, i, kw, iplen, tflags, vlans):
    """Decode the frame b[p:p+n] of link type lt into row i; False: leave it to decode()."""
    q, et, vlan = _link(b, p, n, lt)
    if et == 0x0800:
        return _ipv4(b, q, p + n, vlan, i, kw, iplen, tflags, vlans)
    if et == 0x86DD:
        return _ipv6(b, q, p + n, vlan, i, kw, iplen, tflags, vlans)
    return False


@helper(inline=True)
def _u32(b, p, little):
    if little:
        return (np.int64(b[p + 3]) << 24) | (b[p + 2] << 16) | (b[p + 1] << 8) | b[p]
    return (np.int64(b[p]) << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]


@kernel("UniTuple(int64, 3)(%s, int64, int64, boolean, float64, int64, float64[::1], "
        "uint64[:, ::1], int64[::1], uint8[::1], uint16[::1], uint8[::1], int64[::1], int64[::1])"
        % RO_BYTES)
def walk_pcap(b, pos, end, little, div, lt, ts, kw, iplen, tflags, vlans, status, offs, lens):
    """Walk classic-pcap records from pos, decoding up to len(ts) frames.

    Returns (frames, next pos, stop): stop 0 = more to read, 1 = end of file, 2 = truncated
    record, 3 = absurd record length (pcapfile's truncated_records / bad_records rules).
    """
    cap = ts.shape[0]
    i = 0
    while i < cap:
        if pos + 16 > end:
            return i, pos, 2 if pos < end else 1
        incl = _u32(b, pos + 8, little)
        if incl > MAX_RECORD:
            return i, pos, 3
        start = pos + 16
        if start + incl > end:
            return i, pos, 2
        sec = _u32(b, pos, little)
        frac = _u32(b, pos + 4, little)
        ts[i] = np.float64(sec) + np.float64(frac) / div
        offs[i] = start
        lens[i] = incl
        kw[i, 5] = 0
        status[i] = 0 if _frame(b, start, incl, lt, i, kw, iplen, tflags, vlans) else 1
        pos = start + incl
        i += 1
    return i, pos, 1 if pos >= end else 0


@kernel("none(%s, int64[::1], int64[::1], int64[::1], int64[::1], uint64[:, ::1], int64[::1], "
        "uint8[::1], uint16[::1], uint8[::1])" % RO_BYTES)
def decode_frames(b, offs, lens, lts, ifx, kw, iplen, tflags, vlans, status):
    """Decode frames given by offsets/lengths into b (pcapng, live batches)."""
    for i in range(offs.shape[0]):
        kw[i, 5] = ifx[i]
        status[i] = 0 if _frame(b, offs[i], lens[i], lts[i], i, kw, iplen, tflags, vlans) else 1


# -- Python side ------------------------------------------------------------------------------

class Chunk:
    """Per-packet arrays of a run of frames, in packet order; status OK, SLOW or REJECTED."""

    __slots__ = ("n", "ts", "kw", "iplen", "flags", "vlan", "status", "frags", "rejects",
                 "offs", "lens")

    def __init__(self, n):
        self.n = n
        self.ts = np.empty(n, np.float64)
        self.kw = np.empty((n, KEY_WORDS), np.uint64)
        self.iplen = np.zeros(n, np.int64)
        self.flags = np.zeros(n, np.uint8)
        self.vlan = np.zeros(n, np.uint16)
        self.status = np.zeros(n, np.uint8)
        self.offs = np.empty(n, np.int64)
        self.lens = np.empty(n, np.int64)
        self.frags = []     # (index, src, dst, proto, sport, dport, frag) of fragments, in order
        self.rejects = []   # (index, reason, linktype) of frames decode() rejected

    def truncate(self, n):
        """Keep the first n packets."""
        self.n = n
        for name in ("ts", "kw", "iplen", "flags", "vlan", "status", "offs", "lens"):
            setattr(self, name, getattr(self, name)[:n])


def words_of(src, dst):
    """The four address key words of packed src/dst addresses (4 or 16 bytes)."""
    s = int.from_bytes(src, "big")
    d = int.from_bytes(dst, "big")
    return s >> 64, s & _MASK64, d >> 64, d & _MASK64


def misc_word(sport, dport, proto, tos, version):
    """Key word 4: ports, protocol, ToS and IP version."""
    return (sport << 48) | (dport << 32) | (proto << 24) | (tos << 16) | version


def finish_slow(chunk, raw, linktypes):
    """Run the reference decode() on the frames the kernel left slow and store its answers.

    `raw` is the buffer the offsets point into; `linktypes` an int (one for all frames) or an
    array. Fragments keep the decoder's ports: the processor attributes them in packet order.
    """
    slow = np.flatnonzero(chunk.status == SLOW).tolist()
    if not slow:
        return
    decode = dec.decode
    offs, lens = chunk.offs, chunk.lens
    kw = chunk.kw
    one_lt = isinstance(linktypes, int)
    idx, words, lengths, flags, vlans = [], [], [], [], []
    for i in slow:
        lt = linktypes if one_lt else int(linktypes[i])
        o = int(offs[i])
        p = decode(raw[o:o + int(lens[i])], lt)
        if p.__class__ is str:
            chunk.rejects.append((i, p, lt))
            continue
        src, dst, sport, dport, proto, tos, length, fl, ver, vlan, frag = p
        if frag:
            chunk.frags.append((i, src, dst, proto, sport, dport, frag))
        idx.append(i)
        words.append(words_of(src, dst) + (misc_word(sport, dport, proto, tos, ver), int(kw[i, 5])))
        lengths.append(length)
        flags.append(fl)
        vlans.append(vlan)
    st = chunk.status
    st[slow] = REJECTED
    if idx:
        kw[idx] = np.array(words, dtype=np.uint64)
        chunk.iplen[idx] = lengths
        chunk.flags[idx] = flags
        chunk.vlan[idx] = vlans
        st[idx] = OK


class PcapWalker:
    """Walks an open classic-pcap CaptureFile in chunks, counting damage like pcapfile does."""

    def __init__(self, cap, size=DEFAULT_CHUNK):
        self.cap = cap
        self.size = max(1, int(size))
        self.raw = cap._buf
        self.buf = np.frombuffer(self.raw, dtype=np.uint8)
        self.little = cap.byte_order == "<"
        self.div = float(cap._div)
        self.linktype = int(cap.linktype)
        self.kernels = fastjit.load()

    def chunks(self):
        """Yield decoded Chunks from the start; resets cap.stats and counts as its batches() does."""
        st = self.cap.stats = dict.fromkeys(STAT_KEYS, 0)
        pos, end = 24, len(self.buf)
        stop = 1 if pos >= end else 0
        while not stop:
            # A record takes 16 bytes at least: small files get small arrays.
            c = Chunk(min(self.size, (end - pos) // 16 + 1))
            n, pos, stop = self.kernels.walk_pcap(self.buf, pos, end, self.little, self.div,
                                                  self.linktype, c.ts, c.kw, c.iplen, c.flags,
                                                  c.vlan, c.status, c.offs, c.lens)
            if stop == 2:
                st["truncated_records"] += 1
            elif stop == 3:
                st["bad_records"] += 1
            if n:
                c.truncate(n)
                finish_slow(c, self.raw, self.linktype)
                st["packets"] += n
                yield c
        self.close()

    def close(self):
        """Drop the view of the file's buffer so that the CaptureFile can be closed."""
        self.buf = None
        self.raw = None


def chunk_from_batch(batch, default_linktype=1, ifindex=0):
    """A decoded Chunk from a list of (ts, frame[, linktype, ifindex, ...]) tuples (pcapng, live)."""
    n = len(batch)
    c = Chunk(n)
    if not n:
        return c
    frames = [item[1] for item in batch]
    raw = b"".join(frames)
    lens = np.fromiter(map(len, frames), np.int64, n)
    c.lens[:] = lens
    c.offs[0] = 0
    np.cumsum(lens[:-1], out=c.offs[1:])
    c.ts[:] = [item[0] for item in batch]
    if len(batch[0]) > 2:
        lts = np.fromiter((item[2] for item in batch), np.int64, n)
        ifx = np.fromiter((item[3] for item in batch), np.int64, n)
    else:
        lts = np.full(n, default_linktype, np.int64)
        ifx = np.full(n, ifindex, np.int64)
    fastjit.load().decode_frames(np.frombuffer(raw, dtype=np.uint8), c.offs, c.lens, lts, ifx,
                                 c.kw, c.iplen, c.flags, c.vlan, c.status)
    finish_slow(c, raw, lts)
    return c
