"""Tests for myason.agent.asn against small real .mmdb files built with mmdb-writer."""
import ipaddress

import pytest

from myason.agent.asn import AsnLookup, open_asn
from myason.errors import ConfigError
from tests.support.mmdb import asn_database

# The whole module needs them (mmdb-writer builds the databases).
pytest.importorskip("mmdb_writer")
pytest.importorskip("netaddr")


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    extra = (
        ("203.0.113.0/26", {"autonomous_system_number": "AS64510"}),   # text form
        ("203.0.113.64/26", {"autonomous_system_organization": "NO-NUMBER"}),
        ("203.0.113.128/26", {"autonomous_system_number": "garbage"}),
    )
    return asn_database(tmp_path_factory.mktemp("asn") / "asn.mmdb", extra=extra)


@pytest.fixture
def asn(db_path):
    lookup = AsnLookup(db_path)
    yield lookup
    lookup.close()


def test_ipv4_and_ipv6_lookups(asn):
    assert asn.lookup("1.0.0.1") == 13335
    assert asn.lookup("8.8.8.8") == 15169
    assert asn.lookup("192.0.2.1") == 64500
    assert asn.lookup("192.0.2.200") == 64501
    assert asn.lookup("2001:db8::1") == 64496
    assert asn.lookup("2001:db8:aa::1") == 4200000000
    assert asn.lookup("2001:db8:ab::1") == 64496


def test_packed_addresses(asn):
    for text in ("1.0.0.1", "192.0.2.200", "2001:db8:aa::1", "9.9.9.9"):
        raw = ipaddress.ip_address(text).packed
        assert asn.lookup(raw) == asn.lookup(text)
        assert asn.lookup(bytearray(raw)) == asn.lookup(text)
    assert asn.annotate(ipaddress.ip_address("8.8.8.4").packed,
                        ipaddress.ip_address("1.0.0.9").packed) == (15169, 13335)


def test_outside_every_network_is_zero(asn):
    assert asn.lookup("9.9.9.9") == 0
    assert asn.lookup("10.0.0.1") == 0
    assert asn.lookup("2a00::1") == 0
    assert asn.lookup("::1") == 0


def test_odd_records(asn):
    assert asn.lookup("203.0.113.5") == 64510
    assert asn.lookup("203.0.113.70") == 0
    assert asn.lookup("203.0.113.130") == 0


def test_odd_addresses_never_raise(asn):
    for odd in (b"", b"\x01\x02\x03", b"x" * 17, "not an ip", "", "1.2.3.4.5", None, 7, [1], {}):
        assert asn.lookup(odd) == 0


def test_cache_does_not_change_answers(db_path):
    cached = AsnLookup(db_path, cache_size=65536)
    tiny = AsnLookup(db_path, cache_size=1)
    uncached = AsnLookup(db_path, cache_size=0)
    addrs = ["1.0.0.%d" % i for i in range(0, 256, 7)] + ["192.0.2.%d" % i for i in range(0, 256, 5)]
    addrs += ["2001:db8:aa::%x" % i for i in range(20)] + ["9.9.9.9", "2a00::1"]
    for _ in range(2):
        for a in addrs:
            assert cached.lookup(a) == tiny.lookup(a) == uncached.lookup(a)
    assert cached.cache_info().hits >= len(set(addrs))
    assert tiny.cache_info().currsize <= 1
    for lookup in (cached, tiny, uncached):
        lookup.close()


def test_ipv4_only_database(tmp_path):
    with AsnLookup(asn_database(tmp_path / "v4.mmdb", ip_version=4)) as v4:
        assert v4.lookup("8.8.8.8") == 15169
        assert v4.lookup("2001:db8::1") == 0
        assert v4.lookup(ipaddress.ip_address("2001:db8::1").packed) == 0


def test_lookup_after_close_returns_zero(db_path):
    lookup = AsnLookup(db_path)
    assert lookup.lookup("8.8.8.8") == 15169
    lookup.close()
    assert lookup.lookup("8.8.8.8") == 0


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "garbage", "truncated"])
def test_bad_path_is_config_error(tmp_path, db_path, kind):
    path = tmp_path / "bad.mmdb"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"this is not a MaxMind database\n" * 50)
    elif kind == "truncated":
        path.write_bytes(db_path.read_bytes()[:64])
    with pytest.raises(ConfigError) as info:
        AsnLookup(path)
    assert info.value.key == "asn_database"
    assert "asn_database" in str(info.value)


def test_open_asn(db_path, tmp_path):
    assert open_asn(None) is None
    assert open_asn("") is None
    assert open_asn("   ") is None
    lookup = open_asn(str(db_path))
    assert isinstance(lookup, AsnLookup) and lookup.lookup("1.0.0.1") == 13335
    lookup.close()
    with pytest.raises(ConfigError):
        open_asn(tmp_path / "absent.mmdb")
