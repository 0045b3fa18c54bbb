"""The C kernels (myason/kernels/_native.c) against their oracle, the numba kernels: the same
inputs give the same output arrays, element for element; and the C side refuses arrays of the
wrong kind or size instead of reading or writing out of bounds."""
import random
import struct

import numpy as np
import pytest

from myason import kernels
from myason.agent import fastcache, fastdecode
from myason.kernels import flowtable, native, registry
from myason.kernels.constants import (LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
                                      LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP, LINKTYPE_NULL, LINKTYPE_RAW)
from tests.support.captures import shared_files

NATIVE = native.load(registry.cache_roots())
pytestmark = pytest.mark.skipif(NATIVE is None or registry.load_numba() is None,
                                reason="needs the C kernels built and numba (python -m myason.kernels)")
LINKTYPES = (LINKTYPE_ETHERNET, LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
             LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_LOOP, 9, 50)


# -- frames ---------------------------------------------------------------------------------

def transport(rnd, proto):
    if proto == 6:
        return struct.pack("!HHIIBBHHH", rnd.randrange(65536), rnd.randrange(65536), 0, 0, 0x50,
                           rnd.randrange(256), 0, 0, 0)
    if proto in (17, 136):
        return struct.pack("!HHHH", rnd.randrange(65536), rnd.randrange(65536), 8, 0)
    if proto == 132:
        return struct.pack("!HHI", rnd.randrange(65536), rnd.randrange(65536), 0) + bytes(4)
    if proto in (1, 58):
        return bytes([rnd.randrange(256), rnd.randrange(256)]) + bytes(6)
    return rnd.randbytes(rnd.randrange(12))


def ip_packet(rnd):
    proto = rnd.choice([6, 17, 1, 58, 132, 136, 47, 0, 43, 44, 60])
    payload = transport(rnd, proto) + rnd.randbytes(rnd.randrange(30))
    if rnd.random() < 0.6:
        ihl = rnd.choice([5, 5, 5, 6, 15, 4])
        frag = rnd.choice([0, 0, 0, 0x4000, 0x2000, 0x0001])
        total = rnd.choice([20 * ihl // 5 + len(payload), 0, 10, 65535])
        hdr = struct.pack("!BBHHHBBH4s4s", (rnd.choice([4, 4, 4, 6]) << 4) | ihl, rnd.randrange(256),
                          total & 0xFFFF, 1, frag, 64, proto, 0, rnd.randbytes(4), rnd.randbytes(4))
        return hdr + bytes(max(0, 4 * ihl - 20)) + payload
    plen = rnd.choice([len(payload), 0, 3, 65535])
    return struct.pack("!IHBB16s16s", (6 << 28) | rnd.randrange(1 << 28), plen, proto, 64,
                       rnd.randbytes(16), rnd.randbytes(16)) + payload


def frame(rnd, lt):
    ip = ip_packet(rnd)
    et = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    if rnd.random() < 0.05:
        et = rnd.choice([0x0806, 0x8847, 0])
    if lt == LINKTYPE_ETHERNET:
        head = rnd.randbytes(12)
        if rnd.random() < 0.3:
            head += struct.pack("!HH", rnd.choice([0x8100, 0x88A8, 0x9100]), rnd.randrange(65536))
            if rnd.random() < 0.2:
                head += struct.pack("!HH", 0x8100, rnd.randrange(65536))
        return head + struct.pack("!H", et) + ip
    if lt == LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8sH", 0, rnd.choice([1, 824, 772]), 6, bytes(8), et) + ip
    if lt == LINKTYPE_LINUX_SLL2:
        return struct.pack("!HHIHBB8s", et, 0, 2, rnd.choice([1, 824]), 0, 6, bytes(8)) + ip
    if lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
        fam = rnd.choice([2, 24, 28, 30, 7])
        return struct.pack(rnd.choice(["<I", ">I"]), fam) + ip
    return ip


def capture(rnd, n, little=True, nano=False):
    """A classic pcap body (no file header) of n random frames, some cut short."""
    out = bytearray()
    for _ in range(n):
        lt_frame = frame(rnd, rnd.choice(LINKTYPES))
        if rnd.random() < 0.1:
            lt_frame = lt_frame[:rnd.randrange(len(lt_frame) + 1)]
        sec, frac = rnd.randrange(1 << 32), rnd.randrange(10 ** 9 if nano else 10 ** 6)
        out += struct.pack("<IIII" if little else ">IIII", sec, frac, len(lt_frame), len(lt_frame) + 4)
        out += lt_frame
    return bytes(out)


def outputs(n):
    c = fastdecode.Chunk(n)
    for a in (c.ts, c.kw, c.iplen, c.flags, c.vlan, c.status, c.offs, c.lens):
        a.fill(0)
    return c


def walk_both(b, little, div, lt, cap):
    """walk_pcap over b with both builds, chunk by chunk; returns their outputs."""
    results = []
    for k in (NATIVE, registry.load_numba()):
        pos, end, got = 0, len(b), []
        while True:
            c = outputs(cap)
            n, pos, stop = k.walk_pcap(b, pos, end, little, div, lt, c.ts, c.kw, c.iplen, c.flags, c.vlan,
                                       c.status, c.offs, c.lens)
            got.append((n, pos, stop, c))
            if stop or n == 0:
                break
        results.append(got)
    return results


def assert_same_chunks(a, b):
    assert len(a) == len(b)
    for (n1, p1, s1, c1), (n2, p2, s2, c2) in zip(a, b, strict=True):
        assert (n1, p1, s1) == (n2, p2, s2)
        for name in ("ts", "kw", "iplen", "flags", "vlan", "status", "offs", "lens"):
            np.testing.assert_array_equal(getattr(c1, name), getattr(c2, name), err_msg=name)


@pytest.mark.parametrize("seed", range(6))
def test_walk_pcap_matches_numba_on_random_frames(seed):
    rnd = random.Random(seed)
    lt = LINKTYPES[seed % len(LINKTYPES)]
    little, nano = seed % 2 == 0, seed % 3 == 0
    b = np.frombuffer(capture(rnd, 3000, little, nano), np.uint8)
    assert_same_chunks(*walk_both(b, little, 1e9 if nano else 1e6, lt, 700))


def test_walk_pcap_matches_numba_on_broken_records():
    rnd = random.Random(7)
    body = bytearray(capture(rnd, 200))
    absurd = body + struct.pack("<IIII", 1, 2, 300000, 300000) + bytes(64)
    for b in (bytes(body[:-5]), bytes(absurd), bytes(body[:10]), b""):
        assert_same_chunks(*walk_both(np.frombuffer(b, np.uint8), True, 1e6, LINKTYPE_ETHERNET, 64))


def test_walk_pcap_matches_numba_on_real_captures():
    files = [p for p in shared_files("real") if p.suffix in (".pcap", ".cap")][::25] + shared_files("edge")
    checked = 0
    for path in files:
        raw = path.read_bytes()
        if len(raw) < 24 or raw[:4] not in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            continue    # pcapng: decode_frames is compared below
        nano = raw[:4] == b"\x4d\x3c\xb2\xa1"
        lt = struct.unpack("<I", raw[20:24])[0] & 0x0FFFFFFF
        b = np.frombuffer(raw, np.uint8)
        assert_same_chunks(*walk_both(b[24:], True, 1e9 if nano else 1e6, lt, 4096))
        checked += 1
    assert checked


@pytest.mark.parametrize("seed", range(3))
def test_decode_frames_matches_numba(seed):
    rnd = random.Random(100 + seed)
    kinds = rnd.choices(LINKTYPES, k=2000)
    frames = [frame(rnd, lt) for lt in kinds]
    # Mostly the frame's own link type; some frames read as another one.
    lts = np.array([lt if rnd.random() < 0.8 else rnd.choice(LINKTYPES) for lt in kinds], np.int64)
    raw = b"".join(frames)
    offs = np.cumsum([0] + [len(f) for f in frames[:-1]]).astype(np.int64)
    lens = np.array([len(f) for f in frames], np.int64)
    ifx = np.array([rnd.randrange(1 << 31) for _ in frames], np.int64)
    got = []
    for k in (NATIVE, registry.load_numba()):
        c = outputs(len(frames))
        k.decode_frames(np.frombuffer(raw, np.uint8), offs, lens, lts, ifx, c.kw, c.iplen, c.flags, c.vlan, c.status)
        got.append(c)
    for name in ("kw", "iplen", "flags", "vlan", "status"):
        np.testing.assert_array_equal(getattr(got[0], name), getattr(got[1], name), err_msg=name)
    assert (got[0].status == 0).sum() > 300 and (got[0].status == 1).sum() > 100


# -- the flow table -------------------------------------------------------------------------

def packet_arrays(rnd, n, nkeys):
    keys = np.array([[rnd.randrange(1 << 64) for _ in range(5)] + [rnd.choice([0, 3])] for _ in range(nkeys)],
                    np.uint64)
    t, ts = 1.7e9, np.empty(n)
    for i in range(n):
        r = rnd.random()
        t += rnd.uniform(10, 100) if r < 0.01 else -rnd.uniform(0, 50) if r < 0.02 else \
            -rnd.uniform(0, 1) if r < 0.1 else rnd.expovariate(50)
        ts[i] = t
    kw = keys[np.array([rnd.randrange(nkeys) for _ in range(n)])]
    iplen = np.array([rnd.randrange(40, 1500) for _ in range(n)], np.int64)
    flags = np.array([rnd.choice([0x10, 0x10, 0x10, 0x18, 0x02, 0x11, 0x04, 0x01, 0]) for _ in range(n)], np.uint8)
    vlan = np.array([rnd.choice([0, 0, 7]) for _ in range(n)], np.uint16)
    status = np.array([rnd.choice([0] * 9 + [1]) for _ in range(n)], np.uint8)
    return ts, kw, iplen, flags, vlan, status


def drive(ns, monkeypatch, arrays, limit, fin, seed):
    """A FastFlowCache on kernels `ns` fed the packets in random batches with random ticks;
    returns every output record block and the final table."""
    monkeypatch.setattr(kernels, "load", lambda: ns)
    rnd = random.Random(seed)
    cache = fastcache.FastFlowCache(limit, active=rnd.choice([30.0, 1800.0]), inactive=15.0, fin=fin)
    ts, kw, iplen, flags, vlan, status = arrays
    out, i = [], 0
    while i < len(ts):
        j = min(len(ts), i + rnd.randrange(1, 3000))
        k = rnd.randrange(0, 4)
        tidx = np.sort(np.array([rnd.randrange(0, j - i) for _ in range(k)], np.int64))
        tnow = np.sort(ts[i:j][tidx] + rnd.uniform(-1, 30)) if k else np.empty(0)
        cache.add_packets(ts[i:j], kw[i:j], iplen[i:j], flags[i:j], vlan[i:j], status[i:j], tidx, tnow)
        out.append(cache.take_arrays())
        i = j
    cache.tick(float(ts.max()) + 5)
    out.append(cache.take_arrays())
    cache.flush()
    out.append(cache.take_arrays())
    return out, cache._T, (cache.counts, cache.packets, cache.flows_created)


@pytest.mark.parametrize("seed,limit,nkeys,fin", [(1, 50, 400, 2.0), (2, 100000, 3000, 2.0),
                                                  (3, 7, 40, 0.0), (4, 1000, 5000, 5.0)])
def test_flow_table_matches_numba(monkeypatch, seed, limit, nkeys, fin):
    arrays = packet_arrays(random.Random(seed), 20000, nkeys)
    a = drive(NATIVE, monkeypatch, arrays, limit, fin, seed)
    b = drive(registry.load_numba(), monkeypatch, arrays, limit, fin, seed)
    assert a[2] == b[2]
    assert len(a[0]) == len(b[0])
    for blocks_a, blocks_b in zip(a[0], b[0], strict=True):
        for x, y in zip(blocks_a, blocks_b, strict=True):
            np.testing.assert_array_equal(x, y)
    # The final tables, but for the parts that are scratch: the heap past its length, HR, the
    # free list past its top and the output past its count (np.empty there).
    (K, U, F, M, CA, HT, HK, HS, _HR, FR, I, P, OK, OU, OF, OS), tb = a[1], b[1]
    np.testing.assert_array_equal(I, tb[10])
    heap, top, out = int(I[flowtable.HEAP_N]), int(I[flowtable.FREE_TOP]), int(I[flowtable.OUT_N])
    for j, x in enumerate((K, U, F, M, CA, HT, HK[:heap], HS[:heap], None, FR[:top], I, P, OK[:out], OU[:out],
                           OF[:out], OS[:out])):
        if x is not None:
            np.testing.assert_array_equal(x, tb[j][:len(x)], err_msg="T[%d]" % j)
    assert sum(len(blocks[0]) for blocks in a[0]) > 100


def test_tick_schedule_matches_numba():
    rnd = random.Random(5)
    # A packet clock that mostly moves on, sometimes steps back.
    ts = np.cumsum([rnd.uniform(-0.2, 0.3) for _ in range(5000)]) + 1e9
    status = np.array([rnd.choice([0, 0, 0, 1]) for _ in ts], np.uint8)
    got = []
    for k in (NATIVE, registry.load_numba()):
        tidx, tnow = np.zeros(len(ts), np.int64), np.zeros(len(ts))
        got.append((k.tick_schedule(ts, status, 1e9, 1e9 + 1.0, False, 1.0, tidx, tnow), tidx, tnow))
    assert got[0][0] == got[1][0] and got[0][0][0] > 10
    np.testing.assert_array_equal(got[0][1], got[1][1])
    np.testing.assert_array_equal(got[0][2], got[1][2])


# -- what the C side refuses ------------------------------------------------------------------

def test_wrong_arrays_are_refused_not_read():
    c = outputs(4)
    b = np.zeros(100, np.uint8)
    args = [b, 0, 100, True, 1e6, 1, c.ts, c.kw, c.iplen, c.flags, c.vlan, c.status, c.offs, c.lens]
    with pytest.raises(TypeError, match="kw"):
        NATIVE.walk_pcap(*args[:7], c.kw.astype(np.int64), *args[8:])
    with pytest.raises(TypeError, match="ts"):
        NATIVE.walk_pcap(*args[:6], c.ts[::2], *args[7:])
    with pytest.raises(ValueError, match="outside the buffer"):
        NATIVE.walk_pcap(b, 0, 101, *args[3:])
    with pytest.raises(ValueError, match="shorter"):
        NATIVE.walk_pcap(*args[:12], c.offs[:2], c.lens)
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="writable"):
        NATIVE.walk_pcap(*args[:6], ro, *args[7:])
    with pytest.raises(ValueError, match="outside the buffer"):
        NATIVE.decode_frames(b, np.array([90], np.int64), np.array([20], np.int64), np.ones(1, np.int64),
                             np.ones(1, np.int64), c.kw, c.iplen, c.flags, c.vlan, c.status)
    cache = fastcache.FastFlowCache(10)
    T = list(cache._T)
    T[0] = T[0][:, :5].copy()
    with pytest.raises(TypeError, match="K"):
        NATIVE.flush_all(tuple(T), 0)
    T = list(cache._T)
    T[5] = T[5][:8].copy()
    with pytest.raises(ValueError, match="disagree"):
        NATIVE.rebuild_heap(tuple(T))
    with pytest.raises(TypeError, match="16 arrays"):
        NATIVE.rebuild_heap(tuple(T[:15]))


def test_assemble_is_the_matrix_without_its_zero_bytes():
    # fastoutput's rows: the C pass against the matrix-and-translate path it replaces.
    rng = np.random.default_rng(3)

    def words(shape):
        a = rng.integers(0, 5, size=int(np.prod(shape)) * 8, dtype=np.uint8)
        a[rng.random(a.size) < 0.4] = 0
        return a.view(np.uint64).reshape(shape)
    for n in (0, 1, 7, 3000):
        parts = [words((n, 2)), words((3,)), words((n, 1)), words((1,)), words((n, 5))]
        mat = np.hstack([p if p.ndim == 2 else np.broadcast_to(p, (n, len(p))) for p in parts])
        assert NATIVE.assemble(n, parts) == mat.tobytes().translate(None, b"\0")
    assert NATIVE.assemble(2, [np.zeros((2, 4), np.uint64)]) == b""
    assert NATIVE.assemble(0, []) == b""
    with pytest.raises(ValueError, match="part 1"):
        NATIVE.assemble(3, [np.zeros((3, 2), np.uint64), np.zeros((2, 2), np.uint64)])
    with pytest.raises(ValueError, match="part 0"):
        NATIVE.assemble(3, [np.zeros((3, 2), np.uint32)])
    with pytest.raises(ValueError, match="not C-contiguous"):
        NATIVE.assemble(3, [np.zeros((3, 4), np.uint64)[:, ::2]])
