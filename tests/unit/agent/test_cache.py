"""Aging rules of the flow cache, driven by packet timestamps and explicit ticks."""
import random

import pytest

from myason.agent.cache import FIN, RST, FlowCache
from myason.kernels.constants import TCP_SYN as SYN

ACK = 0x10


def cache(**kw):
    args = dict(limit=100, active=60.0, inactive=10.0, fin=2.0)
    args.update(kw)
    return FlowCache(**args)


def records(c):
    return [dict(zip(("key", "packets", "bytes", "first", "last", "flags", "vlan", "reason"), r))
            for r in c.take()]


def test_counts_packets_bytes_flags_and_times():
    c = cache()
    c.add(1.0, b"k", 60, SYN)
    c.add(1.5, b"k", 1500, ACK)
    c.add(2.25, b"k", 40, ACK, vlan=7)
    assert c.take() == []
    c.flush()
    (r,) = records(c)
    assert (r["packets"], r["bytes"], r["first"], r["last"], r["flags"], r["reason"]) == \
        (3, 1600, 1.0, 2.25, SYN | ACK, "shutdown")
    assert r["vlan"] == 0  # the first packet's VLAN
    assert len(c) == 0


def test_inactive_timeout_on_next_packet_splits_flow():
    c = cache()
    c.add(0.0, b"k", 10)
    c.add(10.0, b"k", 10)          # exactly the limit: still the same flow
    c.add(20.5, b"k", 10)          # 10.5 s idle: new flow
    (r,) = records(c)
    assert (r["packets"], r["first"], r["last"], r["reason"]) == (2, 0.0, 10.0, "idle")
    assert len(c) == 1


def test_inactive_timeout_on_tick_without_packets():
    c = cache()
    c.add(0.0, b"a", 10)
    c.add(5.0, b"b", 10)
    assert c.tick(10.0) == 0
    assert c.tick(10.5) == 1
    (r,) = records(c)
    assert r["key"] == b"a" and r["reason"] == "idle"
    c.tick(15.01)
    assert [r["key"] for r in records(c)] == [b"b"]


def test_active_timeout_splits_long_flow():
    c = cache(active=60.0, inactive=10.0)
    t = 0.0
    while t <= 130.0:
        c.add(t, b"k", 1)
        t += 5.0
    got = records(c)
    assert [r["reason"] for r in got] == ["active", "active"]
    assert [(r["first"], r["last"], r["packets"]) for r in got] == [(0.0, 60.0, 13), (65.0, 125.0, 13)]
    c.flush()
    (r,) = records(c)
    assert (r["first"], r["packets"]) == (130.0, 1)


def test_active_timeout_on_tick():
    c = cache(active=60.0, inactive=10.0)
    for t in range(0, 61, 5):
        c.add(float(t), b"k", 1)
    c.tick(60.0)
    assert c.take() == []
    c.tick(60.5)
    (r,) = records(c)
    assert r["reason"] == "active"


def test_fin_keeps_teardown_then_exports_after_fin_timeout():
    c = cache(fin=2.0)
    c.add(0.0, b"k", 60, SYN)
    c.add(1.0, b"k", 40, FIN | ACK)
    c.add(1.2, b"k", 40, ACK)
    c.add(3.0, b"k", 40, ACK)       # exactly at the deadline: still in
    c.tick(2.9)
    assert c.take() == []
    c.tick(3.01)
    (r,) = records(c)
    assert (r["packets"], r["reason"], r["flags"]) == (4, "fin", SYN | FIN | ACK)


def test_packet_after_fin_deadline_starts_new_flow_without_tick():
    c = cache(fin=2.0)
    c.add(0.0, b"k", 60, FIN)
    c.add(2.5, b"k", 60, SYN)
    (r,) = records(c)
    assert (r["packets"], r["reason"]) == (1, "fin")
    assert len(c) == 1


def test_second_fin_does_not_extend_deadline():
    c = cache(fin=2.0)
    c.add(0.0, b"k", 1, FIN)
    c.add(1.5, b"k", 1, FIN)
    c.tick(2.1)
    (r,) = records(c)
    assert (r["packets"], r["reason"]) == (2, "fin")


def test_fin_timeout_zero_exports_at_once():
    c = cache(fin=0.0)
    c.add(0.0, b"k", 1, FIN | ACK)
    (r,) = records(c)
    assert r["reason"] == "fin"


def test_rst_exports_at_once():
    c = cache()
    c.add(0.0, b"k", 60, SYN)
    c.add(0.1, b"k", 40, RST)
    (r,) = records(c)
    assert (r["packets"], r["reason"], r["flags"]) == (2, "rst", SYN | RST)
    c.add(0.2, b"k", 40, ACK)
    assert len(c) == 1


def test_cache_full_exports_least_recently_updated():
    c = cache(limit=3)
    c.add(0.0, b"a", 1)
    c.add(0.1, b"b", 1)
    c.add(0.2, b"c", 1)
    c.add(0.3, b"a", 1)            # a is now the most recent; b the least
    c.add(0.4, b"d", 1)
    (r,) = records(c)
    assert (r["key"], r["reason"]) == (b"b", "cache_full")
    c.add(0.5, b"e", 1)
    assert [r["key"] for r in records(c)] == [b"c"]
    assert len(c) == 3


def test_cache_full_lru_matches_reference_model():
    """Random traffic on a small cache: evictions follow an exact LRU model."""
    rnd = random.Random(7)
    limit = 50
    c = cache(limit=limit, active=1e9, inactive=1e9)
    model = {}                      # key -> last update order
    order = 0
    for i in range(20000):
        key = b"%d" % rnd.randrange(120)
        expected_victim = None
        if key not in model and len(model) >= limit:
            expected_victim = min(model, key=model.get)
            del model[expected_victim]
        c.add(float(i), key, 1)
        order += 1
        model[key] = order
        got = records(c)
        if expected_victim is None:
            assert got == []
        else:
            assert [r["key"] for r in got] == [expected_victim]
    assert len(c) == limit


def test_flush_exports_everything_and_counts_by_reason():
    c = cache()
    for i in range(10):
        c.add(float(i) / 10, b"%d" % i, 1)
    c.add(1.0, b"x", 1, RST)
    c.flush()
    got = records(c)
    assert len(got) == 11
    assert c.counts["shutdown"] == 10 and c.counts["rst"] == 1
    assert sum(r["packets"] for r in got) == c.packets == 11


def test_no_packet_is_lost_across_all_rules():
    """Random flags/gaps on a tight cache: every packet and byte ends up in exactly one record."""
    rnd = random.Random(3)
    c = cache(limit=20, active=30.0, inactive=5.0, fin=1.0)
    t, total_pk, total_by, out = 0.0, 0, 0, []
    for _ in range(30000):
        t += rnd.expovariate(50.0)
        flags = rnd.choice([0, 0, 0, ACK, SYN, FIN, RST])
        n = rnd.randrange(40, 1500)
        c.add(t, b"%d" % rnd.randrange(60), n, flags)
        total_pk += 1
        total_by += n
        if rnd.random() < 0.01:
            c.tick(t)
        out += records(c)
    c.flush()
    out += records(c)
    assert sum(r["packets"] for r in out) == total_pk
    assert sum(r["bytes"] for r in out) == total_by
    assert all(r["first"] <= r["last"] for r in out)
    assert {r["reason"] for r in out} <= {"idle", "active", "fin", "rst", "cache_full", "shutdown"}


def test_columns_grow_beyond_initial_capacity():
    c = cache(limit=10000, inactive=1e9, active=1e9)
    for i in range(9000):
        c.add(float(i), b"%d" % i, 1)
    assert len(c) == 9000
    c.tick(10000.0)
    assert c.take() == []
    c.flush()
    assert len(c.take()) == 9000


def test_next_deadline():
    c = cache(active=60.0, inactive=10.0)
    assert c.next_deadline() == float("inf")
    c.add(100.0, b"k", 1)
    assert c.next_deadline() == pytest.approx(110.0)


def test_rejects_bad_limit():
    with pytest.raises(ValueError):
        FlowCache(0)


def test_out_of_order_packets_keep_first_le_last():
    c = cache()
    c.add(10.0, b"k", 1)
    c.add(9.5, b"k", 1)             # earlier than first, within the idle limit: same flow
    c.add(11.0, b"k", 1)
    c.add(10.5, b"k", 1)
    c.flush()
    (r,) = records(c)
    assert (r["packets"], r["first"], r["last"]) == (4, 9.5, 11.0)


def test_packet_far_in_the_past_starts_a_new_flow():
    c = cache(inactive=10.0)
    c.add(1000.0, b"k", 1)
    c.add(500.0, b"k", 1)           # e.g. the next replayed file starts earlier
    (r,) = records(c)
    assert (r["first"], r["last"], r["packets"]) == (1000.0, 1000.0, 1)
    c.flush()
    (r,) = records(c)
    assert (r["first"], r["last"]) == (500.0, 500.0)
