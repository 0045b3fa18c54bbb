"""--output from the fast engine's arrays (fastoutput.format_block): byte for byte what RecordFile
writes for the same records as rows (csv.writer, orjson), on generated arrays with every edge."""
import ipaddress
import math
import random

import numpy as np
import pytest

from myason.agent import fastoutput
from myason.agent.fastoutput import SLICE, format_block, format_rows
from myason.agent.records import RecordBlock
from myason.agent.output import RecordFile
from myason.schema import END_REASONS

KINDS = ("csv", "jsonl")

V6 = ["::", "::1", "::ffff:10.1.2.3", "::10.1.2.3", "2001:db8::1", "2001:db8:0:0:1::1", "fe80::1:0:0:1",
      "1:0:0:2:0:0:0:3", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "0:0:1::", "64:ff9b::192.0.2.1",
      "2001:db8:1:2:3:4:5:6"]
V4 = ["0.0.0.0", "255.255.255.255", "10.0.0.1", "192.168.100.7", "1.20.3.100", "127.0.0.1"]
TIMES = [0.0, -0.0, 1e-7, 5e-5, 9.9999e-5, 1e-4, 0.000123, 0.5, 1.0, 1.2345675, 59.999999, 1704067200.0,
         1704067200.000001, 1704067200.1234565, 1704067200.9999995, 4294967295.999999, 3999999999.9999995,
         4e9, 4.5e9, 8589934591.999999, 8589934592.0, 1e16, 1.5e300, -1.0, -1704067200.25,
         math.inf, -math.inf, math.nan]


def _words(text):
    addr = ipaddress.ip_address(text)
    v = int(addr)
    return v >> 64, v & 0xFFFFFFFFFFFFFFFF, addr.version


def make_block(n, seed=1, v6_share=0.3, times=TIMES, agent="sensor-1", names=None, shift=0.0,
               routes=None, asn=None):
    rnd = random.Random(seed)
    k = np.zeros((n, 6), np.uint64)
    u = np.zeros((n, 2), np.uint64)
    f = np.zeros((n, 2), np.float64)
    s = np.zeros(n, np.uint32)
    big = [0, 1, 9, 10, 99999, 100000, 123456789, 10 ** 10, 10 ** 15, 2 ** 53 + 1, 2 ** 63, 2 ** 64 - 1]
    for i in range(n):
        v6 = rnd.random() < v6_share
        if v6:
            src = rnd.choice(V6 + [str(ipaddress.IPv6Address(rnd.getrandbits(128)))])
            dst = rnd.choice(V6)
        else:
            src = rnd.choice(V4 + [str(ipaddress.IPv4Address(rnd.getrandbits(32)))])
            dst = rnd.choice(V4)
        sh, sl, ver = _words(src)
        dh, dl, _ = _words(dst)
        sport, dport = rnd.choice([0, 1, 80, 65535, rnd.randrange(65536)]), rnd.randrange(65536)
        proto, tos = rnd.choice([0, 1, 6, 17, 58, 255]), rnd.choice([0, 1, 184, 255])
        k[i] = (sh, sl, dh, dl, (sport << 48) | (dport << 32) | (proto << 24) | (tos << 16) | ver,
                rnd.choice([0, 1, 2, 7, 4096, 2 ** 32 - 1]))
        u[i] = (rnd.choice(big + [rnd.randrange(1000)]), rnd.choice(big + [rnd.randrange(10 ** 7)]))
        a = rnd.choice(times) if rnd.random() < 0.3 else 1704067200 + rnd.randrange(10 ** 10) / 1e6
        b = rnd.choice(times) if rnd.random() < 0.1 else a + rnd.random() * 100
        f[i] = (a, b)
        s[i] = rnd.randrange(256) | (rnd.choice([0, 1, 100, 4095, 65535]) << 8) | (rnd.randrange(6) << 24)
    return RecordBlock(k, u, f, s, agent, names, shift, routes, asn)


def check(block):
    for kind in KINDS:
        rows = block.rows()
        assert format_block(block, kind) == format_rows(rows, kind)


@pytest.mark.parametrize("seed", range(4))
def test_random_records(seed):
    check(make_block(3000, seed))


def test_without_the_c_kernels_the_matrix_path_gives_the_same_bytes(monkeypatch):
    monkeypatch.setattr(fastoutput, "_native", lambda name: None)
    check(make_block(3000, 11))
    check(make_block(500, 12, v6_share=1.0, shift=3.5))


def test_only_ipv4_only_ipv6_and_typical_times():
    check(make_block(2000, 5, v6_share=0.0, times=[1704067200.5]))
    check(make_block(2000, 6, v6_share=1.0))


def test_more_rows_than_a_slice():
    check(make_block(SLICE + 1234, 7, v6_share=0.05))


def test_time_shift():
    check(make_block(500, 8, shift=123.456789))
    check(make_block(500, 9, shift=-1704067200.0))


def test_interface_names_agents_and_quoting():
    names = {0: "eth0", 1: 'we,ird"name', 2: "ünï", 7: "tab\tname", 4096: "", 2 ** 32 - 1: "x" * 15}
    check(make_block(800, 10, names=names))
    check(make_block(800, 11, names={2: "only"}))          # one name known, the rest ""
    check(make_block(300, 12, agent='a,"b"'))


class Routes:
    def annotate(self, src, dst):
        h = (src[-1] * 7 + dst[-1]) % 5
        return (h, ["", "10.0.0.1", "fe80::1", 'q"uote,', ""][h], src[-1] % 33, dst[-1] % 129)


class Asn:
    def lookup(self, addr):
        return 0 if addr[-1] % 3 == 0 else (addr[-1] * 977) % (2 ** 32)


def test_route_and_asn_annotations():
    check(make_block(1000, 13, routes=Routes(), asn=Asn()))
    check(make_block(1000, 14, routes=None, asn=Asn()))
    check(make_block(1000, 15, routes=Routes(), asn=None))


def test_padding_byte_in_a_text_takes_the_row_path():
    check(make_block(50, 16, names={0: "a\0b", 1: "c"}))
    check(make_block(50, 17, agent="a\0"))


def test_empty_block():
    block = make_block(0)
    assert len(block) == 0 and not block
    for kind in KINDS:
        assert format_block(block, kind) == b""


@pytest.mark.parametrize("name", ["f.csv", "f.jsonl"])
def test_record_file_writes_blocks_as_rows(tmp_path, name):
    block = make_block(700, 18, names={0: "eth0"})
    a, b = RecordFile(str(tmp_path / ("a" + name))), RecordFile(str(tmp_path / ("b" + name)))
    a.write(block)
    a.write(make_block(0))
    b.write(block.rows())
    a.close()
    b.close()
    assert (tmp_path / ("a" + name)).read_bytes() == (tmp_path / ("b" + name)).read_bytes()
    assert a.rows == b.rows == 700


def test_bytes_total_and_rows_fields():
    block = make_block(100, 19)
    rows = block.rows()
    assert block.bytes_total == sum(r[7] for r in rows)
    assert {r[-1] for r in rows} <= set(END_REASONS)
