"""Country, ASN and AS organisation of both addresses from MaxMind-format databases."""
from __future__ import annotations

import logging

import maxminddb

from myason.enrich.base import COL, Enricher, register, setup_note
from myason.options import check_int, check_mapping, check_optional, check_str, parse_options

_PATH = check_optional(check_str(expected="a file path"))

log = logging.getLogger("myason.enrich.geoip")

_NO_COUNTRY = ""
_NO_ASN = (0, "")


def country_of(record) -> str:
    """ISO country code from a GeoLite2-Country/City record ('' when absent).

    Falls back to the registered country (anycast and satellite ranges often have only that).
    """
    if not isinstance(record, dict):
        return ""
    for key in ("country", "registered_country"):
        part = record.get(key)
        if isinstance(part, dict):
            code = part.get("iso_code")
            if isinstance(code, str) and code:
                return code[:8]
    return ""


def asn_of(record) -> tuple:
    """(autonomous_system_number, autonomous_system_organization) from a GeoLite2-ASN record."""
    if not isinstance(record, dict):
        return _NO_ASN
    number = record.get("autonomous_system_number")
    if isinstance(number, str):
        text = number.strip().upper()
        text = text[2:] if text.startswith("AS") else text
        number = int(text) if text.isdigit() else 0
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 0xFFFFFFFF:
        number = 0
    org = record.get("autonomous_system_organization")
    return number, (org if isinstance(org, str) else "")


def _open(key, path):
    """A maxminddb reader, or (None, reason) when the path is unset or not a usable database."""
    if path is None or not str(path).strip():
        return None, "%s not set" % key
    try:
        return maxminddb.open_database(str(path)), ""
    except FileNotFoundError:
        return None, "%s %s not found" % (key, path)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        return None, "%s %s unusable (%s)" % (key, path, exc)


_NO_INFO = ("", 0, "")


def _lookup(reader, addr):
    """reader.get(addr), None for odd input (not an address, IPv6 in an IPv4-only database)."""
    try:
        return reader.get(addr)
    except (ValueError, TypeError, maxminddb.InvalidDatabaseError):
        return None


@register
class GeoipEnricher(Enricher):
    """Fills src/dst_country and src/dst_asn, src/dst_as_org from `geoip.country_database` and
    `geoip.asn_database`; each missing database leaves its columns empty (one log line)."""

    name = "geoip"

    def __init__(self):
        self._readers = []
        self._country = None
        self._asn = None
        self._info = {}
        self._cache_size = 65536

    SPEC = {"geoip": ({}, check_optional(check_mapping))}
    GEOIP_SPEC = {"country_database": (None, _PATH), "asn_database": (None, _PATH),
                  "cache_size": (65536, check_int(lo=1))}

    def setup(self, config):
        """Open the databases named in `geoip`; False when neither is usable."""
        opts = parse_options("enrich.geoip", self.options(config)["geoip"] or {}, self.GEOIP_SPEC)
        self._cache_size = opts["cache_size"]
        notes = []
        for key in ("country_database", "asn_database"):
            reader, why = _open("geoip." + key, opts[key])
            if reader is None:
                notes.append(why)
                continue
            self._readers.append(reader)
            if key == "country_database":
                self._country = reader
            else:
                self._asn = reader
        if notes:
            # One line whatever is missing, so a host without GeoIP data logs it once.
            setup_note(log, logging.WARNING, "geoip enrichment %s: %s",
                       "off" if not self._readers else "partial", "; ".join(notes))
        return bool(self._readers)

    def lookup(self, addr) -> tuple:
        """(country, asn, as_org) of a text address; ('', 0, '') when unknown."""
        info = self._info.get(addr)
        if info is not None:
            return info
        if not isinstance(addr, str):
            return _NO_INFO
        country = country_of(_lookup(self._country, addr)) if self._country is not None else ""
        asn, org = asn_of(_lookup(self._asn, addr)) if self._asn is not None else _NO_ASN
        info = (country, asn, org)
        cache = self._info
        # One entry per address for both databases; cleared when full, which costs less per flow
        # than LRU bookkeeping and refills within a few batches.
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[addr] = info
        return info

    def apply(self, row, out, _s=COL["src_ip"], _d=COL["dst_ip"]):
        """Set the country and AS columns of out."""
        # Fixed slots 2-7 of ENRICH_FIELDS (test_pipeline checks the order): src/dst country,
        # src/dst ASN, src/dst organisation.
        info = self._info
        src = info.get(row[_s]) or self.lookup(row[_s])
        dst = info.get(row[_d]) or self.lookup(row[_d])
        out[2], out[4], out[6] = src
        out[3], out[5], out[7] = dst

    def close(self):
        """Close the databases; apply() then leaves the columns at their defaults."""
        for reader in self._readers:
            reader.close()
        self._readers = []
        self._country = self._asn = None
        self._info = {}

