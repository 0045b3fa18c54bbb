"""Tests for myason.agent.ifconfig: interface listing, table and helpers."""
import socket

import pytest

from myason.agent import ifconfig
from myason.agent.ifconfig import InterfaceInfo, format_table, list_interfaces, resolve_ifindex


def lo_info():
    matches = [i for i in list_interfaces() if i.name == "lo"]
    assert len(matches) == 1
    return matches[0]


def test_lo_is_listed_with_index_1_and_loopback_address():
    lo = lo_info()
    assert lo.ifindex == 1
    assert "127.0.0.1/8" in lo.ipv4
    assert lo.state in ("up", "down", "unknown")


def test_list_is_sorted_and_indexes_agree_with_the_kernel():
    infos = list_interfaces()
    assert [i.ifindex for i in infos] == sorted(i.ifindex for i in infos)
    for info in infos:
        assert info.ifindex == socket.if_nametoindex(info.name)
        assert all("/" in a for a in info.ipv4 + info.ipv6)
        assert not any("%" in a for a in info.ipv6)


def test_table_has_header_and_lo():
    table = format_table(list_interfaces())
    lines = table.splitlines()
    assert lines[0].split() == ["INDEX", "NAME", "STATE", "MAC", "IPV4", "IPV6"]
    assert any(line.split()[:2] == ["1", "lo"] for line in lines[1:])
    assert "127.0.0.1/8" in table


def test_table_alignment_and_placeholders():
    infos = [
        InterfaceInfo("a", 1, "up", "00:11:22:33:44:55", ["10.0.0.1/24", "10.0.1.1/24"], ["fd00::1/64"]),
        InterfaceInfo("longer-name0", 12, "down"),
    ]
    lines = format_table(infos).splitlines()
    assert len(lines) == 3
    col = lines[0].index("STATE")
    assert lines[1][col:col + 2] == "up" and lines[2][col:col + 4] == "down"
    assert "10.0.0.1/24, 10.0.1.1/24" in lines[1]
    assert lines[2].split()[3:] == ["-", "-", "-"]
    assert format_table([]) == "INDEX  NAME  STATE  MAC  IPV4  IPV6\n"


def test_resolve_ifindex():
    assert resolve_ifindex("lo") == 1
    assert resolve_ifindex("no-such-if0") == 0
    assert resolve_ifindex("bad\x00name") == 0
    assert resolve_ifindex(None) == 0


@pytest.mark.parametrize("content,expected", [
    ("up\n", "up"), ("down\n", "down"), ("lowerlayerdown\n", "down"), ("unknown\n", "unknown"),
    ("dormant\n", "unknown"), (None, "unknown"),
])
def test_read_operstate(tmp_path, content, expected):
    if content is not None:
        (tmp_path / "x0").mkdir()
        (tmp_path / "x0" / "operstate").write_text(content)
    assert ifconfig.read_operstate("x0", str(tmp_path)) == expected


@pytest.mark.parametrize("entry,version,expected", [
    ({"addr": "192.0.2.1", "netmask": "255.255.255.0"}, 4, "192.0.2.1/24"),
    ({"addr": "127.0.0.1", "netmask": "255.0.0.0"}, 4, "127.0.0.1/8"),
    ({"addr": "fe80::1%eth0", "netmask": "ffff:ffff:ffff:ffff::/64"}, 6, "fe80::1/64"),
    ({"addr": "fd00::2", "netmask": "ffff:ffff:ffff:ffff::"}, 6, "fd00::2/64"),
    ({"addr": "10.1.1.1"}, 4, "10.1.1.1"),
    ({"addr": "not-an-ip", "netmask": "255.0.0.0"}, 4, None),
    ({}, 4, None),
])
def test_format_address(entry, version, expected):
    assert ifconfig.format_address(entry, version) == expected


@pytest.mark.parametrize("mask,version,expected", [
    ("255.255.255.255", 4, 32), ("0.0.0.0", 4, 0), ("255.0.255.0", 4, None), ("junk", 4, None),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", 6, 128), ("ffff:ff00::", 6, 24), ("", 6, None),
])
def test_prefix_length(mask, version, expected):
    assert ifconfig.prefix_length(mask, version) == expected


def test_fallback_without_netifaces(monkeypatch):
    monkeypatch.setattr(ifconfig, "netifaces", None)
    lo = lo_info()
    assert lo.ifindex == 1 and lo.ipv4 == [] and lo.mac == "00:00:00:00:00:00"
