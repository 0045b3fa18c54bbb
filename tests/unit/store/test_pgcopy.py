"""PostgreSQL binary COPY encoding: the compiled path and the pure-Python path give the same,
correct bytes, and both refuse what PostgreSQL could not take."""
import random
import struct

import pytest

from myason.store import pgcopy
from myason.schema import ENRICHED_ROW_FIELDS, ROW_FIELDS
from myason.store.pgcopy import _ENCODE_ERRORS, COPY_COLUMNS, ENRICH_COPY_COLUMNS, encode_binary, encode_binary_python

compiled = pytest.mark.skipif(pgcopy._kernels() is None, reason="numba is not installed")
EPOCH = 946684800


def make_row(rnd, i, v6=False, enriched=False):
    if v6:
        src, dst = "2001:db8:%x::%x" % (rnd.randrange(65536), i + 1), "2001:db8:ffff::%x" % rnd.randrange(1, 99)
    else:
        src, dst = "10.%d.%d.%d" % (rnd.randrange(256), rnd.randrange(256), i % 250 + 1), "192.0.2.%d" % rnd.randrange(1, 9)
    first = 1.7e9 + rnd.random() * 1000
    row = [src, dst, rnd.randrange(65536), rnd.randrange(65536), rnd.choice((6, 17, 1, 58)), rnd.randrange(256),
           rnd.randrange(1, 10**6), rnd.randrange(10**6, 10**12), round(first, 6), round(first + rnd.random() * 9, 6),
           rnd.randrange(256), "agent-%d" % (i % 3), rnd.choice(("eth0", "eth1", "ens3")), rnd.randrange(2**32),
           rnd.randrange(2**32), 6 if v6 else 4, rnd.randrange(4096), rnd.choice(("", "10.0.0.1", "fe80::1")),
           rnd.randrange(33), rnd.randrange(33), rnd.randrange(2**32), rnd.randrange(2**32),
           rnd.choice(("idle", "active", "fin", "rst")), round(first + 10 + rnd.random(), 6),
           rnd.choice(("127.0.0.1", "::1"))]
    if enriched:
        row += [rnd.choice(("in", "out", "")), rnd.choice(("https", "dns", "")), "CZ", rnd.choice(("US", "")),
                rnd.randrange(70000), rnd.randrange(70000), "Org é", "", "host-%d" % (i % 5), ""]
    return row


def rows_of(n, seed=1, enriched=False, v6_share=0.3):
    rnd = random.Random(seed)
    return [make_row(rnd, i, rnd.random() < v6_share, enriched) for i in range(n)]


def parse(data, ncols):
    """Decode binary COPY data into lists of raw field bytes (None for NULL): an independent reader."""
    assert data[:11] == b"PGCOPY\n\xff\r\n\x00" and data[11:19] == b"\x00" * 8
    pos, rows = 19, []
    while True:
        (n,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if n == -1:
            assert pos == len(data)
            return rows
        assert n == ncols
        fields = []
        for _ in range(n):
            (size,) = struct.unpack_from(">i", data, pos)
            pos += 4
            fields.append(None if size == -1 else data[pos:pos + size])
            pos += max(size, 0)
        rows.append(fields)


def decode_value(name, raw):
    if raw is None:
        return ""
    if name in ("src_ip", "dst_ip", "exporter", "next_hop"):
        import ipaddress
        fam, bits, _cidr, size = raw[:4]
        assert (fam, bits, size) in ((2, 32, 4), (3, 128, 16))
        return str(ipaddress.ip_address(raw[4:]))
    if name in ("first", "last", "received"):
        return struct.unpack(">q", raw)[0] / 1e6 + EPOCH
    if len(raw) in (2, 4, 8) and name not in ("agent", "if_name", "end_reason") and name in INT_NAMES:
        return int.from_bytes(raw, "big", signed=True)
    return raw.decode("utf-8")


INT_NAMES = {c for c in COPY_COLUMNS if c not in ("src_ip", "dst_ip", "exporter", "next_hop", "agent", "if_name",
                                                  "end_reason", "first", "last", "received")} | {"src_asn", "dst_asn"}


@pytest.mark.parametrize("enriched", [False, True])
@pytest.mark.parametrize("encoder", [pytest.param(encode_binary, marks=compiled), encode_binary_python])
def test_values_round_trip(encoder, enriched):
    rows = rows_of(300, enriched=enriched)
    names = COPY_COLUMNS + (ENRICH_COPY_COLUMNS if enriched else ())
    fields = ENRICHED_ROW_FIELDS if enriched else ROW_FIELDS
    parsed = parse(encoder(rows, enriched), len(names))
    assert len(parsed) == len(rows)
    for row, got in zip(rows, parsed):
        want = dict(zip(fields, row))
        for name, raw in zip(names, got):
            value = decode_value(name, raw)
            if name in ("first", "last", "received"):
                assert abs(value - want[name]) < 2e-6, name
            elif name in ("src_ip", "dst_ip", "exporter", "next_hop"):
                assert value == (str(__import__("ipaddress").ip_address(want[name])) if want[name] else ""), name
            else:
                assert value == want[name], name


@compiled
@pytest.mark.parametrize("v6_share", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("enriched", [False, True])
def test_compiled_and_python_paths_give_the_same_bytes(enriched, v6_share):
    for n in (1, 2, 7, 1000):
        rows = rows_of(n, seed=n, enriched=enriched, v6_share=v6_share)
        assert encode_binary(rows, enriched) == encode_binary_python(rows, enriched)


def test_empty_batch():
    assert encode_binary([]) == encode_binary_python([]) == b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 + b"\xff\xff"


def test_tails_are_reused_across_batches_without_changing_the_bytes():
    rows = rows_of(50, enriched=True)
    first = encode_binary(rows, True)
    assert pgcopy._TAIL_CACHE
    assert encode_binary(rows, True) == first
    pgcopy._TAIL_CACHE.clear()
    assert encode_binary(rows, True) == first


@pytest.mark.parametrize("encoder", [pytest.param(encode_binary, marks=compiled), encode_binary_python])
@pytest.mark.parametrize("index, value", [
    (0, "10.0.0.300"), (1, "not an address"), (2, 1.5), (2, 1 << 40), (2, "80"), (4, -(1 << 20)), (6, 1 << 70),
    (8, "soon"), (8, float("nan")), (9, float("inf")), (11, 7), (12, None)])
def test_refuses_values_postgresql_cannot_take(encoder, index, value):
    rows = rows_of(20)
    rows[13][index] = value
    with pytest.raises(_ENCODE_ERRORS):
        encoder(rows)


@compiled
def test_address_family_comes_from_the_address_itself():
    rows = rows_of(6, v6_share=0.5)
    rows[2][1], rows[3][0], rows[4][15] = "2001:db8::7", "10.9.8.7", 5
    assert encode_binary(rows) == encode_binary_python(rows)


@pytest.mark.parametrize("encoder", [pytest.param(encode_binary, marks=compiled), encode_binary_python])
def test_refuses_short_rows(encoder):
    rows = rows_of(3)
    rows[1] = rows[1][:-1]
    with pytest.raises(_ENCODE_ERRORS):
        encoder(rows)
    rows = rows_of(3, enriched=True)
    rows[2] = rows[2][:-2]
    with pytest.raises(_ENCODE_ERRORS):
        encoder(rows, True)


@compiled
@pytest.mark.parametrize("address", [
    "0.0.0.0", "255.255.255.255", "10.0.0.1", "1.22.133.4", "::ffff:1.2.3.4", "2001:db8::1", "::",
    "01.2.3.4", "1.2.3.04", "1.2.3.00", "256.1.1.1", "1.2.3", "1.2.3.4.5", "", " 1.2.3.4", "1.2.3.4 ", "1..2.3",
    "1.2.3.4\n5.6.7.8", "1.2.3.é", "1.2.3.1000", "9999999999999999999999.1.1.1"])
def test_address_parsing_matches_inet_pton(address):
    rows = rows_of(4, v6_share=0.5)
    rows[1][0] = address
    try:
        want = encode_binary_python(rows)
    except _ENCODE_ERRORS:
        with pytest.raises(_ENCODE_ERRORS):
            encode_binary(rows)
    else:
        assert encode_binary(rows) == want
