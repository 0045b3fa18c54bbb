"""validate_row / validate_rows: every field of FIELDS checked, exact reasons, normalisation."""
import math

import pytest

from myason.collector.validate import (DEFAULT_LIMITS, Limits, MIN_TIME, ValidationError,
                                       check_sent, validate_row, validate_rows)
from myason.errors import MyasonError
from myason.schema import FIELDS

NOW = 1_700_000_100.0
AGENT = "edge-01"
IDX = {name: i for i, name in enumerate(FIELDS)}


def good(**changes):
    row = ["192.0.2.1", "198.51.100.7", 40000, 443, 6, 0, 10, 5000, NOW - 10.5, NOW - 1.25, 0x1B,
           AGENT, "eth0", 2, 3, 4, 0, "10.0.0.1", 24, 16, 64500, 15169, "fin"]
    for name, value in changes.items():
        row[IDX[name]] = value
    return row


def good6(**changes):
    base = dict(src_ip="2001:db8::1", dst_ip="fe80::1", ip_version=6, src_mask=64, dst_mask=128,
                next_hop="fe80::2")
    base.update(changes)
    return good(**base)


def reason(row, sent=NOW, now=NOW, limits=DEFAULT_LIMITS):
    with pytest.raises(ValidationError) as exc:
        validate_row(row, AGENT, sent, now, limits)
    return exc.value.reason


def test_valid_rows_pass_unchanged():
    for row in (good(), good6(), good(next_hop=""), good6(next_hop="192.0.2.254"),
                good(first=NOW - 5, last=NOW - 5), good(packets=1, bytes=1),
                good(packets=2, bytes=2 << 32), good(if_name="", vlan=4095, proto=255, tos=255),
                good(src_port=0, dst_port=65535, in_if=2**32 - 1, src_as=2**32 - 1),
                good(end_reason="cache_full"), good(last=NOW + 59)):
        assert validate_row(row, AGENT, NOW, NOW) == row


def test_validation_error_is_a_myason_error():
    assert issubclass(ValidationError, MyasonError)
    assert ValidationError("x").reason == "x"


@pytest.mark.parametrize("field, value, expected", [
    ("src_ip", "192.0.2.256", "src_ip"), ("src_ip", "2001:db8::1", "src_ip"),
    ("src_ip", 3221225985, "src_ip"), ("dst_ip", "", "dst_ip"), ("dst_ip", "1.2.3.4\x00", "dst_ip"),
    ("src_port", -1, "src_port"), ("src_port", 65536, "src_port"), ("src_port", True, "src_port"),
    ("dst_port", 1.0, "dst_port"), ("dst_port", "80", "dst_port"),
    ("proto", 256, "proto"), ("tos", -1, "tos"),
    ("packets", 0, "packets"), ("packets", 2**63, "packets"), ("packets", None, "packets"),
    ("bytes", 9, "bytes"), ("bytes", 10 * 2**32 + 1, "bytes"), ("bytes", False, "bytes"),
    ("first", "x", "first"), ("first", MIN_TIME - 1, "first"), ("first", math.nan, "first"),
    ("first", NOW - 1.0, "first_after_last"),
    ("last", NOW + 61, "last"), ("last", math.inf, "last"),
    ("tcp_flags", 256, "tcp_flags"), ("agent", "edge-02", "agent"), ("agent", None, "agent"),
    ("if_name", "x" * 65, "if_name"), ("if_name", "eth\x000", "if_name"), ("if_name", 5, "if_name"),
    ("in_if", -1, "in_if"), ("out_if", 2**32, "out_if"),
    ("ip_version", 5, "ip_version"), ("ip_version", 0, "ip_version"),
    ("vlan", 4096, "vlan"), ("next_hop", "gateway", "next_hop"), ("next_hop", None, "next_hop"),
    ("src_mask", 33, "src_mask"), ("dst_mask", -1, "dst_mask"),
    ("src_as", 2**32, "src_as"), ("dst_as", -5, "dst_as"),
    ("end_reason", "crash", "end_reason"), ("end_reason", "", "end_reason"),
])
def test_each_field_is_checked(field, value, expected):
    assert reason(good(**{field: value})) == expected


def test_ipv6_rules():
    assert reason(good6(src_ip="192.0.2.1")) == "src_ip"
    assert reason(good6(src_mask=129)) == "src_mask"
    assert validate_row(good6(src_mask=128), AGENT, NOW, NOW)


def test_duration_and_sent_limits():
    long = good(first=NOW - 32 * 86400, last=NOW - 10)
    assert reason(long) == "duration"
    assert validate_row(long, AGENT, NOW, NOW, Limits(max_duration=40 * 86400))
    # sent is the datagram's send time: within [now - ttl - skew, now + skew].
    assert reason(good(), sent=NOW - 66) == "sent"
    assert reason(good(), sent=NOW + 61) == "sent"
    assert reason(good(), sent=math.nan) == "sent"
    assert reason(good(), sent="1") == "sent"
    old = good(first=NOW - 130, last=NOW - 124)
    assert validate_row(old, AGENT, NOW - 64, NOW) == old
    # last may not be later than the send time plus the skew.
    assert reason(good(first=NOW - 10, last=NOW - 3.9), sent=NOW - 64) == "last"
    tight = Limits(ttl=100, clock_skew=5)
    assert reason(good(first=NOW - 80, last=NOW - 58.9), sent=NOW - 64, limits=tight) == "last"
    assert validate_row(good(first=NOW - 80, last=NOW - 59), AGENT, NOW - 64, NOW, tight)
    check_sent(NOW, NOW)


def test_shape():
    assert reason(good()[:-1]) == "shape"
    assert reason(None) == "shape"
    assert reason(good() + [1]) == "shape"


def test_normalisation_of_int_times_and_subclasses():
    class MyInt(int):
        pass

    row = good(first=int(NOW - 10), last=int(NOW - 2), packets=MyInt(3), bytes=MyInt(300))
    out = validate_row(row, AGENT, NOW, NOW)
    assert type(out[IDX["first"]]) is float and out[IDX["first"]] == int(NOW - 10)
    assert type(out[IDX["packets"]]) is int
    rows = [good(), row]
    assert validate_rows(rows, AGENT, NOW, NOW) is rows
    assert type(rows[1][IDX["last"]]) is float


def test_validate_rows_stops_on_the_first_bad_row():
    with pytest.raises(ValidationError) as exc:
        validate_rows([good(), good(vlan=5000), good(proto=-1)], AGENT, NOW, NOW)
    assert exc.value.reason == "vlan"
    assert validate_rows([], AGENT, NOW, NOW) == []


def test_fast_path_agrees_with_the_slow_path_on_random_mutations():
    import random

    from myason.collector import validate
    rng = random.Random(7)
    values = [None, True, False, 0, -1, 1, 4, 6, 32, 33, 128, 129, 255, 256, 4095, 4096, 65535,
              65536, 2**32 - 1, 2**32, 2**63, 1.0, NOW - 5, NOW + 100, math.nan, "", "eth0", "fin",
              "10.0.0.1", "2001:db8::1", "x" * 70, [], {}, AGENT]
    accepted = 0
    for _ in range(5000):
        row = rng.choice((good, good6))()
        for _ in range(rng.randint(1, 2)):
            row[rng.randrange(len(row))] = rng.choice(values)
        try:
            fast = ("ok", validate.validate_row(list(row), AGENT, NOW, NOW))
        except ValidationError as exc:
            fast = ("bad", exc.reason)
        try:
            slow = ("ok", validate._slow(list(row), AGENT, NOW + 60, DEFAULT_LIMITS.max_duration))
        except ValidationError as exc:
            slow = ("bad", exc.reason)
        assert fast == slow, row
        if fast[0] == "ok":
            accepted += 1
            assert [type(v) for v in fast[1]] == list(validate._TYPES)
    assert 100 < accepted < 4900
