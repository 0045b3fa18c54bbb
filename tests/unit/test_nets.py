"""Tests for myason.nets: CIDR sets."""
import ipaddress
import random

import pytest

from myason.nets import NetSet, parse_cidrs, read_cidr_file
from myason.errors import ConfigError


def test_membership_v4_v6_and_mapped():
    nets = NetSet(["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32", "192.168.1.128/25"])
    assert "10.255.255.255" in nets and "10.0.0.0" in nets
    assert "11.0.0.0" not in nets and "9.255.255.255" not in nets
    assert nets.contains("192.168.1.200") and not nets.contains("192.168.2.1")
    assert nets.contains("2001:db8:ffff::1") and not nets.contains("2001:db9::1")
    assert nets.contains("::ffff:10.1.2.3")
    assert len(nets) == 4 and bool(nets) and not NetSet([])


def test_matches_ipaddress_on_random_addresses():
    rnd = random.Random(4)
    cidrs = ["%d.%d.0.0/%d" % (rnd.randrange(256), rnd.randrange(256), rnd.randrange(8, 25))
             for _ in range(50)]
    nets = NetSet(cidrs, cache_size=16)
    parsed = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    for _ in range(3000):
        addr = ipaddress.ip_address(rnd.getrandbits(32))
        assert nets.contains(str(addr)) == any(addr in n for n in parsed), addr


@pytest.mark.parametrize("odd", ["", "not-an-ip", "10.0.0.300", None, 5, b"\x0a\0\0\1"])
def test_odd_addresses_are_not_members(odd):
    assert NetSet(["0.0.0.0/0", "::/0"]).contains(odd) is False


def test_bad_cidrs_name_the_key():
    with pytest.raises(ConfigError) as info:
        NetSet(["10.0.0.0/8", "bogus"], key="enrich.local_networks")
    assert info.value.key == "enrich.local_networks"
    with pytest.raises(ConfigError):
        parse_cidrs("k", 42)
    assert parse_cidrs("k", "10.1.2.3/8")[0][0].with_prefixlen == "10.0.0.0/8"


def test_read_cidr_file(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("# comment\n10.0.0.0/8   # tail\n\n  2001:db8::/32\n")
    assert read_cidr_file("k", path) == ["10.0.0.0/8", "2001:db8::/32"]
    with pytest.raises(ConfigError) as info:
        read_cidr_file("lists.file", tmp_path / "absent")
    assert info.value.key == "lists.file"
