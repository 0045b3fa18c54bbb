"""Tests for myason.agent.routes: /proc parsers and longest-prefix match."""
import ipaddress
import random
import socket

import pytest

from myason.agent.routes import (
    Route, RouteTable, parse_proc_ipv6_route, parse_proc_route,
)

LO_INDEX = socket.if_nametoindex("lo")

# Little-endian /proc/net/route, as Linux prints it on x86 (trailing spaces included).
PROC_ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT       \n"
    # default via 192.168.1.1 dev nosuch0
    "nosuch0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0            \n"
    # 192.168.1.0/24 dev nosuch0 (connected)
    "nosuch0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0            \n"
    # 10.9.8.7/32 via 192.168.1.254 (host route)
    "nosuch0\t0708090A\tFE01A8C0\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0            \n"
    # 10.0.0.0/8 via 192.168.1.2 metric 100, and the same prefix via .3 metric 50
    "nosuch0\t0000000A\t0201A8C0\t0003\t0\t0\t100\t000000FF\t0\t0\t0            \n"
    "nosuch1\t0000000A\t0301A8C0\t0003\t0\t0\t50\t000000FF\t0\t0\t0            \n"
    # 10.1.0.0/16 dev lo (connected, resolvable ifindex)
    "lo\t0000010A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0            \n"
    # unreachable 172.16.0.0/12 (RTF_UP|RTF_REJECT, no device) -> dropped
    "*\t000010AC\t00000000\t0201\t0\t0\t0\t0000F0FF\t0\t0\t0            \n"
    # route without RTF_UP -> dropped
    "nosuch0\t000014AC\t00000000\t0000\t0\t0\t0\t0000FFFF\t0\t0\t0            \n"
    "garbage line\n"
    "nosuch0\tZZZZ\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)

Z = "0" * 32
PROC_IPV6_ROUTE = "\n".join((
    # 2001:db8::/32 dev nosuch0 metric 1024 (connected)
    "20010db8000000000000000000000000 20 %s 00 %s 00000400 00000001 00000000 00000001  nosuch0" % (Z, Z),
    # 2001:db8:1::/48 via fe80::1 metric 256, and via fe80::2 metric 100 (wins)
    "20010db8000100000000000000000000 30 %s 00 fe800000000000000000000000000001 00000100 00000001 00000000 00000003  nosuch1" % Z,
    "20010db8000100000000000000000000 30 %s 00 fe800000000000000000000000000002 00000064 00000001 00000000 00000003  nosuch2" % Z,
    # fe80::/64 dev nosuch0
    "fe800000000000000000000000000000 40 %s 00 %s 00000100 00000002 00000000 00000001  nosuch0" % (Z, Z),
    # default via fe80::1 dev nosuch0 (RA-learnt: DEFAULT|EXPIRES|ADDRCONF|GATEWAY|UP)
    "%s 00 %s 00 fe800000000000000000000000000001 00000400 00000002 00000000 00450003  nosuch0" % (Z, Z),
    # local ::1/128 on lo
    "00000000000000000000000000000001 80 %s 00 %s 00000000 00000002 00000000 80200001       lo" % (Z, Z),
    # multicast ff00::/8
    "ff000000000000000000000000000000 08 %s 00 %s 00000100 00000003 00000000 00000001  nosuch0" % (Z, Z),
    # unreachable default on lo (no RTF_UP) -> dropped
    "%s 00 %s 00 %s ffffffff 00000001 00000000 00200200       lo" % (Z, Z, Z),
    # RTF_CACHE clone -> dropped
    "20010db8000000000000000000000099 80 %s 00 fe800000000000000000000000000001 00000000 00000001 00000000 01000003  nosuch0" % Z,
    "not a route",
    "zz 40 %s 00 %s 00000100 00000002 00000000 00000001  nosuch0" % (Z, Z),
)) + "\n"


def packed(text):
    return ipaddress.ip_address(text).packed


@pytest.fixture
def table():
    return RouteTable(parse_proc_route(PROC_ROUTE) + parse_proc_ipv6_route(PROC_IPV6_ROUTE))


def test_parse_proc_route_fields():
    routes = parse_proc_route(PROC_ROUTE)
    assert [str(r.network) for r in routes] == [
        "0.0.0.0/0", "192.168.1.0/24", "10.9.8.7/32", "10.0.0.0/8", "10.0.0.0/8", "10.1.0.0/16"]
    default, connected, host, ten_a, ten_b, lo = routes
    assert default == Route(ipaddress.ip_network("0.0.0.0/0"), 0, 0, "nosuch0", "192.168.1.1", 100)
    assert connected.gateway == "" and connected.prefixlen == 24 and connected.metric == 100
    assert host.gateway == "192.168.1.254" and host.prefixlen == 32
    assert (ten_a.metric, ten_b.metric) == (100, 50)
    assert lo.ifindex == LO_INDEX and lo.ifname == "lo"


def test_parse_proc_route_big_endian_host():
    be = PROC_ROUTE.replace("0101A8C0", "C0A80101").replace("0001A8C0", "C0A80100") \
        .replace("00FFFFFF", "FFFFFF00")
    routes = parse_proc_route(be, byteorder="big")
    assert routes[0].gateway == "192.168.1.1"
    assert str(routes[1].network) == "192.168.1.0/24"


def test_parse_proc_ipv6_route_fields():
    routes = parse_proc_ipv6_route(PROC_IPV6_ROUTE)
    assert [str(r.network) for r in routes] == [
        "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::/48", "fe80::/64", "::/0", "::1/128", "ff00::/8"]
    assert routes[0].gateway == "" and routes[0].metric == 1024
    assert routes[1].gateway == "fe80::1" and routes[2].metric == 100
    assert routes[4].gateway == "fe80::1" and routes[4].prefixlen == 0
    assert routes[5].ifname == "lo" and routes[5].ifindex == LO_INDEX
    assert routes[6].ifindex == 0  # unknown interface name


def test_parsers_tolerate_junk():
    assert parse_proc_route("") == []
    assert parse_proc_ipv6_route("") == []
    assert parse_proc_route("\x00\xff nonsense\n1 2 3 4 5 6 7 8 9\n") == []
    assert parse_proc_ipv6_route("a b c d e f g h i j\n" + "0" * 33 + " 40 x\n") == []


def test_longest_prefix_wins(table):
    assert str(table.lookup("10.9.8.7").network) == "10.9.8.7/32"
    assert str(table.lookup("10.9.8.8").network) == "10.0.0.0/8"
    assert str(table.lookup("10.1.2.3").network) == "10.1.0.0/16"
    assert str(table.lookup("192.168.1.77").network) == "192.168.1.0/24"
    assert str(table.lookup("8.8.8.8").network) == "0.0.0.0/0"
    assert str(table.lookup("2001:db8:1::5").network) == "2001:db8:1::/48"
    assert str(table.lookup("2001:db8:2::5").network) == "2001:db8::/32"
    assert str(table.lookup("fe80::1234").network) == "fe80::/64"
    assert str(table.lookup("::1").network) == "::1/128"
    assert str(table.lookup("ff02::1").network) == "ff00::/8"
    assert str(table.lookup("2a00::1").network) == "::/0"


def test_metric_tie_break(table):
    assert table.lookup("10.200.0.1").gateway == "192.168.1.3"
    assert table.lookup("2001:db8:1::9").gateway == "fe80::2"
    # Order of input must not matter for the winner.
    reversed_table = RouteTable(list(reversed(parse_proc_route(PROC_ROUTE))))
    assert reversed_table.lookup("10.200.0.1").gateway == "192.168.1.3"


def test_packed_and_text_agree(table):
    for text in ("10.9.8.7", "192.168.1.3", "8.8.4.4", "2001:db8:1::1", "fe80::9", "::1"):
        assert table.lookup(packed(text)) == table.lookup(text)
        assert table.lookup(bytearray(packed(text))) == table.lookup(text)


def test_unknown_and_odd_addresses():
    only_lan = RouteTable(parse_proc_route(PROC_ROUTE)[1:2])
    assert only_lan.lookup("8.8.8.8") is None
    assert only_lan.lookup("2001:db8::1") is None
    assert only_lan.annotate(packed("8.8.8.8"), packed("9.9.9.9")) == (0, "", 0, 0)
    for odd in (b"", b"\x01\x02\x03", b"x" * 5, "not an ip", "", None, 42, [1, 2], {}):
        assert only_lan.lookup(odd) is None
    assert RouteTable([]).lookup("1.2.3.4") is None


def test_annotate(table):
    # dst via host route: out_if of nosuch0 is unknown -> 0; gateway from dst's route.
    assert table.annotate(packed("192.168.1.50"), packed("10.9.8.7")) == (0, "192.168.1.254", 24, 32)
    # dst on lo-connected /16, src only matches the default route -> mask 0.
    assert table.annotate(packed("8.8.8.8"), packed("10.1.0.9")) == (LO_INDEX, "", 0, 16)
    assert table.annotate(packed("2001:db8:1::1"), packed("::1")) == (LO_INDEX, "", 48, 128)
    assert table.annotate(packed("::1"), packed("2a00::1")) == (0, "fe80::1", 128, 0)
    assert table.annotate(b"bad", packed("10.9.8.7"))[2] == 0


def _reference(routes, text):
    """Brute-force LPM: longest prefix, then lowest metric, then first listed."""
    ip = ipaddress.ip_address(text)
    best = None
    for r in routes:
        if r.network.version == ip.version and ip in r.network:
            if best is None or (r.prefixlen, -r.metric) > (best.prefixlen, -best.metric):
                best = r
    return best


def test_cache_does_not_change_answers():
    routes = parse_proc_route(PROC_ROUTE) + parse_proc_ipv6_route(PROC_IPV6_ROUTE)
    rng = random.Random(7)
    pool = [str(ipaddress.IPv4Address(rng.choice([0x0A000000, 0xC0A80100, 0x0A010000, 0x0A090807]) | rng.getrandbits(8)))
            for _ in range(150)]
    pool += [str(ipaddress.IPv6Address((0x20010DB80001 << 80) | rng.getrandbits(16))) for _ in range(50)]
    pool += ["8.8.8.8", "::1", "fe80::1", "ff02::2", "2001:db8:5::1"]
    tables = [RouteTable(routes, cache_size=n) for n in (0, 2, 65536)]
    for _ in range(3):
        for text in pool:
            want = _reference(routes, text)
            for t in tables:
                assert t.lookup(text) == want
                assert t.lookup(packed(text)) == want
    big = tables[2]
    assert big.cache_info().hits > 0
    assert big.cache_info().currsize <= 65536
    assert tables[1].cache_info().currsize <= 2
    big.clear_cache()
    assert big.cache_info().currsize == 0
    assert big.lookup("10.9.8.7").prefixlen == 32


def test_from_system_with_fake_proc(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text(PROC_ROUTE)
    (tmp_path / "net" / "ipv6_route").write_text(PROC_IPV6_ROUTE)
    t = RouteTable.from_system(str(tmp_path))
    assert len(t) == 13
    assert t.lookup("::1").ifname == "lo"


def test_from_system_missing_files(tmp_path):
    t = RouteTable.from_system(str(tmp_path / "nowhere"))
    assert len(t) == 0 and t.lookup("127.0.0.1") is None
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "ipv6_route").write_text(PROC_IPV6_ROUTE)
    assert len(RouteTable.from_system(str(tmp_path))) == 7


def test_from_system_this_machine():
    t = RouteTable.from_system()
    route = t.lookup("127.0.0.1")
    # /proc/net/route shows only the main table, so 127.0.0.1 may well be absent.
    assert route is None or route.network.version == 4
    v6 = t.lookup("::1")
    assert v6 is None or v6.prefixlen <= 128
    assert isinstance(t.annotate(packed("127.0.0.1"), packed("127.0.0.1")), tuple)
