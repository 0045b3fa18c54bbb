"""Address sets built from CIDR lists: sorted integer ranges, bisect lookups, a bounded cache."""
from __future__ import annotations

import bisect
import ipaddress
import socket

from myason.errors import ConfigError


_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def parse_cidrs(key, values):
    """(v4 networks, v6 networks) from CIDR strings; ConfigError(key) on a bad entry."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple, set, frozenset)):
        raise ConfigError(key, "must be a list of CIDRs, got %r" % (values,))
    v4, v6 = [], []
    for value in values:
        try:
            net = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            raise ConfigError(key, "not an IPv4/IPv6 network: %r" % (value,)) from None
        (v4 if net.version == 4 else v6).append(net)
    return v4, v6


def read_cidr_file(key, path):
    """CIDR strings from a file, one a line, '#' comments; ConfigError(key) when unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ConfigError(key, "cannot read %s: %s" % (path, exc.strerror or exc)) from None
    out = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(text)
    return out


def _ranges(nets):
    """Merged, sorted (starts, ends) inclusive integer ranges of the networks."""
    spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in nets)
    merged = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    return [m[0] for m in merged], [m[1] for m in merged]


class NetSet:
    """Membership test of text addresses against CIDRs; answers cached per address (bounded)."""

    __slots__ = ("_v4", "_v6", "_cache", "_cache_size", "networks")

    def __init__(self, cidrs=(), key="networks", cache_size=65536):
        v4, v6 = parse_cidrs(key, list(cidrs))
        self.networks = tuple(str(n) for n in v4 + v6)
        self._v4 = _ranges(v4)
        self._v6 = _ranges(v6)
        self._cache = {}
        self._cache_size = max(0, int(cache_size))

    def __len__(self):
        return len(self.networks)

    def __bool__(self):
        return bool(self.networks)

    def _lookup(self, addr):
        # inet_pton is several times faster than ipaddress on this miss path.
        try:
            if ":" in addr:
                value = int.from_bytes(_pton(_AF_INET6, addr.partition("%")[0]), "big")
                if value >> 32 == 0xFFFF:          # IPv4-mapped: match the IPv4 networks
                    starts, ends = self._v4
                    value &= 0xFFFFFFFF
                else:
                    starts, ends = self._v6
            else:
                value = int.from_bytes(_pton(_AF_INET, addr), "big")
                starts, ends = self._v4
        except (OSError, ValueError):
            return False
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]

    def contains(self, addr) -> bool:
        """True when the text address lies in one of the networks; False for anything else."""
        cache = self._cache
        hit = cache.get(addr)
        if hit is not None:
            return hit
        if not isinstance(addr, str):
            return False
        found = self._lookup(addr)
        if self._cache_size:
            # Clearing is cheaper than LRU bookkeeping on this hot path, and the working set
            # refills in a few batches.
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[addr] = found
        return found

    __contains__ = contains
