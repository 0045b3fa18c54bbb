"""Autonomous system numbers for addresses, from a MaxMind-format ASN database."""
from __future__ import annotations

import functools
import ipaddress
from typing import Optional, Union

import maxminddb

from myason.errors import ConfigError

_KEY = "asn_database"


def _as_number(record):
    """autonomous_system_number from a database record, 0 when absent or not a number."""
    if not isinstance(record, dict):
        return 0
    value = record.get("autonomous_system_number")
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if 0 <= value <= 0xFFFFFFFF else 0
    if isinstance(value, str):
        # Some "compatible" databases store the number as text, sometimes as "AS64500".
        text = value.strip().upper()
        text = text[2:] if text.startswith("AS") else text
        if text.isdigit() and int(text) <= 0xFFFFFFFF:
            return int(text)
    return 0


def _address(addr):
    """An ipaddress object for packed 4/16-byte or text input; None when not an address."""
    try:
        if isinstance(addr, str):
            return ipaddress.ip_address(addr.strip())
        if isinstance(addr, (bytes, bytearray, memoryview)):
            raw = bytes(addr)
            if len(raw) in (4, 16):
                return ipaddress.ip_address(raw)
    except ValueError:
        pass
    return None


class AsnLookup:
    """ASN by address from a MaxMind-format (GeoLite2-ASN or compatible) .mmdb file."""

    def __init__(self, path, cache_size: int = 65536):
        try:
            self._reader = maxminddb.open_database(str(path))
        except FileNotFoundError:
            raise ConfigError(_KEY, "no such file: %s" % path) from None
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ConfigError(_KEY, "cannot open %s as a MaxMind database: %s" % (path, exc)) from None
        self.path = str(path)
        self._ip_version = getattr(self._reader.metadata(), "ip_version", 6)
        # Bounded C-level LRU: lookups run once per exported flow, up to ~100k/s.
        self._cached = functools.lru_cache(maxsize=max(0, int(cache_size)))(self._lookup)

    def _lookup(self, addr):
        ip = _address(addr)
        if ip is None or (ip.version == 6 and self._ip_version == 4):
            return 0
        try:
            return _as_number(self._reader.get(ip))
        except (ValueError, TypeError, maxminddb.InvalidDatabaseError):
            # Closed reader, or a corrupt data section for this one entry.
            return 0

    def lookup(self, addr: Union[bytes, str]) -> int:
        """autonomous_system_number for a packed (4/16 bytes) or text address, else 0."""
        if isinstance(addr, (bytearray, memoryview)):
            addr = bytes(addr)
        try:
            return self._cached(addr)
        except TypeError:  # unhashable odd input
            return 0

    def annotate(self, src: bytes, dst: bytes) -> tuple:
        """(src_as, dst_as) for a flow."""
        return self.lookup(src), self.lookup(dst)

    def cache_info(self):
        """functools cache statistics (hits, misses, maxsize, currsize)."""
        return self._cached.cache_info()

    def close(self):
        """Close the database; later lookups return 0."""
        self._cached.cache_clear()
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_asn(path) -> Optional[AsnLookup]:
    """An AsnLookup for path, or None when no database is configured (None or empty)."""
    if path is None or not str(path).strip():
        return None
    return AsnLookup(path)
