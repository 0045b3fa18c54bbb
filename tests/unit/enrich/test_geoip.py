"""Tests for myason.enrich.geoip against small real .mmdb files built with mmdb-writer."""
import logging

import pytest

from myason.schema import ENRICH_DEFAULTS
from myason.enrich.base import OUT
from myason.enrich.geoip import GeoipEnricher, asn_of, country_of

mmdb_writer = pytest.importorskip("mmdb_writer")
IPSet = pytest.importorskip("netaddr").IPSet

COUNTRIES = {
    "1.0.0.0/24": {"country": {"iso_code": "AU", "names": {"en": "Australia"}}},
    "8.8.8.0/24": {"country": {"iso_code": "US"}, "city": {"names": {"en": "Mountain View"}}},
    "2001:db8::/32": {"country": {"iso_code": "CZ"}},
    "192.0.2.0/24": {"registered_country": {"iso_code": "NL"}},       # registered only
}
ASNS = {
    "1.0.0.0/24": {"autonomous_system_number": mmdb_writer.MmdbU32(13335),
                   "autonomous_system_organization": "CLOUDFLARENET"},
    "8.8.8.0/24": {"autonomous_system_number": mmdb_writer.MmdbU32(15169),
                   "autonomous_system_organization": "GOOGLE"},
    "2001:db8::/32": {"autonomous_system_number": mmdb_writer.MmdbU32(4200000000),
                      "autonomous_system_organization": "V6-DOC"},
    "203.0.113.0/24": {"autonomous_system_number": "AS64510"},        # text, no org
}


def _write(path, kind, records):
    writer = mmdb_writer.MMDBWriter(ip_version=6, database_type=kind, ipv4_compatible=True,
                                    description="myason test")
    for net, record in records.items():
        writer.insert_network(IPSet([net]), record)
    writer.to_db_file(str(path))
    return str(path)


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    base = tmp_path_factory.mktemp("geoip")
    return {"country_database": _write(base / "country.mmdb", "GeoLite2-Country", COUNTRIES),
            "asn_database": _write(base / "asn.mmdb", "GeoLite2-ASN", ASNS)}


def _apply(step, src, dst):
    out = list(ENRICH_DEFAULTS)
    step.apply([src, dst, 1, 2, 6], out)
    return {name: out[i] for name, i in OUT.items()}


def test_both_databases(dbs):
    step = GeoipEnricher()
    assert step.setup({"geoip": dbs})
    got = _apply(step, "1.0.0.1", "8.8.8.8")
    assert (got["src_country"], got["dst_country"]) == ("AU", "US")
    assert (got["src_asn"], got["dst_asn"]) == (13335, 15169)
    assert (got["src_as_org"], got["dst_as_org"]) == ("CLOUDFLARENET", "GOOGLE")
    got = _apply(step, "2001:db8::1", "192.0.2.5")
    assert (got["src_country"], got["dst_country"]) == ("CZ", "NL")
    assert (got["src_asn"], got["src_as_org"], got["dst_asn"]) == (4200000000, "V6-DOC", 0)
    got = _apply(step, "203.0.113.9", "10.0.0.1")
    assert (got["src_asn"], got["src_as_org"], got["dst_country"]) == (64510, "", "")
    assert got["direction"] == "" and got["src_host"] == ""     # other steps' columns untouched
    step.close()


def test_odd_addresses_give_defaults(dbs):
    step = GeoipEnricher()
    step.setup({"geoip": dbs})
    got = _apply(step, "not an ip", "")
    assert (got["src_country"], got["src_asn"], got["dst_as_org"]) == ("", 0, "")
    step.close()


def test_unset_databases_switch_off_with_one_line(notes, caplog):
    caplog.set_level(logging.INFO, logger="myason.enrich.geoip")
    assert GeoipEnricher().setup({}) is False
    assert GeoipEnricher().setup({"geoip": {"country_database": "", "asn_database": None}}) is False
    lines = [r for r in caplog.records if r.name == "myason.enrich.geoip"]
    # The same note twice in one process: said once (test_setup_notes.py).
    assert len(lines) == 1 and "off" in lines[0].getMessage()


def test_missing_or_broken_database_is_one_line_and_partial(dbs, tmp_path, caplog, notes):
    caplog.set_level(logging.INFO, logger="myason.enrich.geoip")
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a database" * 100)
    step = GeoipEnricher()
    assert step.setup({"geoip": {"country_database": str(tmp_path / "absent.mmdb"),
                                 "asn_database": dbs["asn_database"]}})
    lines = [r.getMessage() for r in caplog.records if r.name == "myason.enrich.geoip"]
    assert len(lines) == 1 and "partial" in lines[0] and "absent.mmdb not found" in lines[0]
    got = _apply(step, "8.8.8.8", "1.0.0.1")
    assert (got["src_country"], got["src_asn"], got["dst_asn"]) == ("", 15169, 13335)
    step.close()
    assert GeoipEnricher().setup({"geoip": {"country_database": str(junk)}}) is False


def test_record_helpers():
    assert country_of(None) == "" and country_of({"country": "US"}) == ""
    assert asn_of({"autonomous_system_number": True}) == (0, "")
    assert asn_of({"autonomous_system_number": "garbage"}) == (0, "")
    assert asn_of({"autonomous_system_number": -5, "autonomous_system_organization": 3}) == (0, "")
    assert asn_of([]) == (0, "")
