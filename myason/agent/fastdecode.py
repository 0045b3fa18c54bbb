"""Fast path, phase 1: decoded chunks of frames from the compiled kernels of myason.kernels.decode.

The kernels (walk_pcap for classic-pcap files, decode_frames for frame lists) fill a Chunk's
per-packet arrays for the frames they fully understand and mark the others SLOW; finish_slow()
decodes those with the reference decode() in Python, so exotic encapsulations, fragments and
extension chains keep the reference behaviour exactly; rejected frames keep the reference
reason names. Key words: see myason.kernels.decode.
"""
import numpy as np

from myason import kernels
from myason.agent import decode as dec
from myason.agent.pcapfile import STAT_KEYS
from myason.kernels.decode import KEY_WORDS, OK, REJECTED, SLOW

DEFAULT_CHUNK = 1 << 17
_MASK64 = (1 << 64) - 1


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
        self.kernels = kernels.load()

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
    kernels.load().decode_frames(np.frombuffer(raw, dtype=np.uint8), c.offs, c.lens, lts, ifx,
                                 c.kw, c.iplen, c.flags, c.vlan, c.status)
    finish_slow(c, raw, lts)
    return c
