"""FastFlowCache against the reference FlowCache: random packet streams give the same records."""
import math
import random
import socket
import struct
from collections import Counter

import numpy as np
import pytest

from myason import kernels
from myason.agent import fastcache
from myason.agent.cache import FIN, RST, FlowCache
from myason.kernels.constants import TCP_SYN as SYN
from myason.agent.process import pack_key
from myason.agent.rowvalues import round6

ACK = 0x10

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="numba is not installed")


def make_keys(rnd, n):
    keys = []
    for _ in range(n):
        if rnd.random() < 0.3:
            src, dst = rnd.randbytes(16), rnd.randbytes(16)
        else:
            src, dst = bytes([10, 0, 0, rnd.randrange(4)]), bytes([10, 0, 1, rnd.randrange(256)])
        keys.append(pack_key(src, dst, rnd.randrange(65536), rnd.choice([80, 443, 53]),
                             rnd.choice([6, 17, 1]), rnd.choice([0, 0x10]), rnd.choice([0, 3, 70000])))
    return keys


def random_stream(rnd, n):
    """(ts, key index, length, flags, vlan) with gaps, backward jumps and FIN/RST."""
    t = 1700000000.0 + rnd.random()
    out = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.01:
            t += rnd.uniform(10, 100)          # long gap
        elif r < 0.02:
            t -= rnd.uniform(0, 50)            # clock stepped back
        elif r < 0.1:
            t -= rnd.uniform(0, 1)             # out of order
        else:
            t += rnd.expovariate(50)
        flags = rnd.choice([ACK, ACK, ACK, ACK | 0x08, SYN, FIN | ACK, RST, FIN, 0])
        out.append((t, rnd.randrange(1 << 30), rnd.randrange(40, 1500), flags, rnd.choice([0, 0, 7])))
    return out


def same(ref, fast):
    """Both caches agree on records, counters and timers."""
    assert Counter(fast.take()) == Counter(ref.take())
    assert len(fast) == len(ref)
    assert fast.counts == ref.counts
    assert fast.packets == ref.packets and fast.flows_created == ref.flows_created
    assert fast.next_deadline() == ref.next_deadline()


def differential(seed, npk=2500):
    rnd = random.Random(seed)
    args = dict(limit=rnd.choice([1, 2, 5, 20, 100, 10000]), active=rnd.choice([5.0, 30.0, 1800.0]),
                inactive=rnd.choice([1.0, 2.5, 15.0]), fin=rnd.choice([0.0, 0.5, 2.0]))
    ref, fast = FlowCache(**args), fastcache.FastFlowCache(**args)
    keys = make_keys(rnd, rnd.choice([3, 30, 300, 3000]))
    for ts, k, length, flags, vlan in random_stream(rnd, npk):
        key = keys[k % len(keys)]
        ref.add(ts, key, length, flags, vlan)
        fast.add(ts, key, length, flags, vlan)
        if rnd.random() < 0.02:
            now = ts + rnd.uniform(-1, 3)
            assert fast.tick(now) == ref.tick(now)
            same(ref, fast)
    same(ref, fast)
    ref.flush()
    fast.flush()
    same(ref, fast)
    return ref.counts


def test_random_streams_give_the_reference_records():
    totals = Counter()
    for seed in range(40):
        totals.update(differential(seed))
    # Every end reason was exercised.
    assert all(totals[r] > 0 for r in ("idle", "active", "fin", "rst", "cache_full", "shutdown")), totals


def test_random_streams_with_tiny_buffers(monkeypatch):
    # Growth of the columns, the heap (and its rebuild), refills of LRU candidates and ticks that
    # fill the output buffer and resume: all on small arrays.
    monkeypatch.setattr(fastcache, "_INITIAL_CAPACITY", 16)
    monkeypatch.setattr(fastcache, "_INITIAL_OUT", 4)
    monkeypatch.setattr(fastcache, "_CANDIDATES", 3)
    for seed in range(100, 125):
        differential(seed, npk=1500)


def test_heap_of_stale_entries_is_rebuilt(monkeypatch):
    monkeypatch.setattr(fastcache, "_INITIAL_CAPACITY", 16)
    ref, fast = FlowCache(1000, 1e6, 1e6, 2.0), fastcache.FastFlowCache(1000, 1e6, 1e6, 2.0)
    keys = make_keys(random.Random(3), 500)
    for i, key in enumerate(keys * 3):
        flags = RST if i % 3 else ACK       # flows leave at once: their heap entries go stale
        ref.add(float(i), key, 60, flags)
        fast.add(float(i), key, 60, flags)
    same(ref, fast)
    assert len(fast._HK) <= 4 * fast._I[fastcache.CAP] + 128
    assert fast.tick(1e7) == ref.tick(1e7)
    same(ref, fast)


def test_chunk_with_ticks_matches_reference_ticks():
    rnd = random.Random(11)
    keys = make_keys(rnd, 200)
    stream = random_stream(rnd, 4000)
    ref = FlowCache(50, 30.0, 2.0, 1.0)
    fast = fastcache.FastFlowCache(50, 30.0, 2.0, 1.0)
    ticks = sorted(rnd.sample(range(len(stream)), 300))
    tick_now = [stream[i][0] + rnd.uniform(-0.5, 0.5) for i in ticks]
    status = np.array([rnd.random() < 0.05 for _ in stream], np.uint8)   # rejected frames
    tick_at = dict(zip(ticks, tick_now))
    for i, (ts, k, length, flags, vlan) in enumerate(stream):
        if i in tick_at:
            ref.tick(tick_at[i])
        if not status[i]:
            ref.add(ts, keys[k % len(keys)], length, flags, vlan)
    words = np.array([key_words(keys[k % len(keys)]) for _, k, _, _, _ in stream], np.uint64)
    fast.add_packets(np.array([s[0] for s in stream]), words, np.array([s[2] for s in stream]),
                     np.array([s[3] for s in stream], np.uint8), np.array([s[4] for s in stream], np.uint16),
                     status, np.array(ticks, np.int64), np.array(tick_now))
    same(ref, fast)


def key_words(key):
    alen = (len(key) - 10) // 2
    s, d = int.from_bytes(key[:alen], "big"), int.from_bytes(key[alen:2 * alen], "big")
    sport, dport, proto, tos, ifx = struct.unpack_from("!HHBBI", key, 2 * alen)
    return (s >> 64, s & (2 ** 64 - 1), d >> 64, d & (2 ** 64 - 1),
            (sport << 48) | (dport << 32) | (proto << 24) | (tos << 16) | (4 if alen == 4 else 6), ifx)


def test_key_bytes_round_trip():
    for key in make_keys(random.Random(5), 200):
        assert fastcache.key_bytes(key_words(key)) == key


def test_rules_on_hand_made_cases():
    c = fastcache.FastFlowCache(2, active=60.0, inactive=10.0, fin=2.0)
    a = pack_key(socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"), 1, 2, 6, 0, 0)
    b = pack_key(socket.inet_aton("10.0.0.3"), socket.inet_aton("10.0.0.2"), 1, 2, 6, 0, 0)
    d = pack_key(socket.inet_aton("10.0.0.4"), socket.inet_aton("10.0.0.2"), 1, 2, 6, 0, 0)
    c.add(1.0, a, 60, SYN, vlan=7)
    c.add(2.0, b, 60, ACK)
    c.add(3.0, a, 40, FIN | ACK)
    assert c.take() == []
    c.add(4.0, d, 52, ACK)                 # cache full: b is the least recently updated
    assert [(r[0], r[7]) for r in c.take()] == [(b, "cache_full")]
    assert c.next_deadline() == 5.0        # a's FIN deadline
    assert c.tick(5.0) == 0 and c.tick(5.5) == 1
    (rec,) = c.take()
    assert rec == (a, 2, 100, 1.0, 3.0, SYN | FIN | ACK, 7, "fin")
    c.flush()
    assert [r[7] for r in c.take()] == ["shutdown"] and len(c) == 0
    assert math.isinf(c.next_deadline())
    with pytest.raises(ValueError):
        fastcache.FastFlowCache(0)


def test_memory_per_flow_is_small():
    n = 50000
    c = fastcache.FastFlowCache(n + 1, active=1e9, inactive=1e9)
    for i in range(n):
        key = pack_key(struct.pack("!I", 0x0A000000 + i), b"\xc0\0\2\1", 1024, 443, 6, 0, 2)
        c.add(1.0 + i * 1e-6, key, 60)
    assert len(c) == n
    assert c.memory_bytes() / n < 250


def test_round6_is_round():
    rnd = random.Random(2)
    values = [0.0, 1e-7, 5e-7, 2.5e-6, 0.0078125, 123.4567895, 1e10, -1.5e-6, float("inf")]
    values += [m / 128 for m in range(1, 4000, 2)]                         # exact ties
    values += [1704067200 + rnd.randrange(10 ** 10) / 1e6 for _ in range(20000)]
    values += [1704067200 + rnd.randrange(10 ** 13) / 1e9 for _ in range(20000)]
    values += [(rnd.randrange(2 ** 40) + 0.5) / 1e6 for _ in range(20000)]
    values += [rnd.uniform(0, 5e9) for _ in range(20000)]
    got = round6(np.array(values))
    assert [repr(v) for v in got] == [repr(round(v, 6)) for v in values]
