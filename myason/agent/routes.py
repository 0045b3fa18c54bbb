"""Host routing table: parse /proc/net/route and /proc/net/ipv6_route, longest-prefix match.

Policy (kept simple on purpose):
- only routes with RTF_UP are kept, and RTF_REJECT (unreachable/prohibit/blackhole) ones
  are dropped, because no packet leaves through them;
- RTF_CACHE clones (per-destination PMTU/redirect entries of old kernels) are dropped,
  otherwise they would report /128 masks for busy destinations;
- local routes (the host's own addresses, ::1 on lo, multicast ff00::/8) are kept: they are
  what the kernel would use, so masks and out_if say what the table says;
- /proc/net/route shows only the main table, so IPv4 local addresses (127.0.0.0/8, the
  host's own addresses) are not there and resolve to None unless a main-table route covers them.
The default route is reported like any other route (mask 0).
"""
from __future__ import annotations

import functools
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass
from typing import Iterable, Optional, Union

# Flag bits from <linux/route.h> / <linux/ipv6_route.h>.
RTF_UP = 0x0001
RTF_GATEWAY = 0x0002
RTF_REJECT = 0x0200
RTF_CACHE = 0x01000000

_NetworkT = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class Route:
    """One usable route: destination network, outgoing interface, gateway and metric."""

    network: _NetworkT
    prefixlen: int
    ifindex: int
    ifname: str
    gateway: str  # '' when directly connected
    metric: int


def _ifindex_resolver():
    """A memoised if_nametoindex returning 0 for unknown names."""
    seen = {}

    def resolve(name):
        if name not in seen:
            try:
                seen[name] = socket.if_nametoindex(name) if name and name != "*" else 0
            except (OSError, ValueError):
                seen[name] = 0
        return seen[name]

    return resolve


def _usable(flags):
    return bool(flags & RTF_UP) and not flags & (RTF_REJECT | RTF_CACHE)


def parse_proc_route(text: str, byteorder: str = "little") -> list:
    """Routes from /proc/net/route text (IPv4); malformed lines are skipped.

    Linux prints the network-order addresses as native integers in hex, so the bytes
    are reversed on little-endian hosts; `byteorder` lets from_system pass sys.byteorder.
    """
    resolve = _ifindex_resolver()
    routes = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 8 or cols[0] == "Iface":
            continue
        try:
            ifname = cols[0]
            dest = int(cols[1], 16).to_bytes(4, byteorder)
            gw = int(cols[2], 16).to_bytes(4, byteorder)
            flags = int(cols[3], 16)
            metric = int(cols[6])
            mask = int.from_bytes(int(cols[7], 16).to_bytes(4, byteorder), "big")
        except (ValueError, OverflowError):
            continue
        if not _usable(flags):
            continue
        prefixlen = bin(mask).count("1")
        if mask != ((0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF):
            continue  # non-contiguous netmask: not something LPM can represent
        network = ipaddress.IPv4Network((dest, prefixlen), strict=False)
        gateway = str(ipaddress.IPv4Address(gw)) if flags & RTF_GATEWAY and any(gw) else ""
        if ifname == "*":
            ifname = ""
        routes.append(Route(network, prefixlen, resolve(ifname), ifname, gateway, metric))
    return routes


def parse_proc_ipv6_route(text: str) -> list:
    """Routes from /proc/net/ipv6_route text; malformed lines are skipped."""
    resolve = _ifindex_resolver()
    routes = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 10:
            continue
        try:
            dest = bytes.fromhex(cols[0])
            prefixlen = int(cols[1], 16)
            nexthop = bytes.fromhex(cols[4])
            metric = int(cols[5], 16)
            flags = int(cols[8], 16)
        except ValueError:
            continue
        if len(dest) != 16 or len(nexthop) != 16 or not 0 <= prefixlen <= 128:
            continue
        if not _usable(flags):
            continue
        ifname = cols[9]
        network = ipaddress.IPv6Network((dest, prefixlen), strict=False)
        gateway = str(ipaddress.IPv6Address(nexthop)) if any(nexthop) else ""
        routes.append(Route(network, prefixlen, resolve(ifname), ifname, gateway, metric))
    return routes


def _address_key(addr):
    """(bits, integer) for packed 4/16-byte or text addresses; None when not an address."""
    if isinstance(addr, str):
        try:
            ip = ipaddress.ip_address(addr.strip())
        except ValueError:
            return None
        return ip.max_prefixlen, int(ip)
    if isinstance(addr, (bytes, bytearray, memoryview)):
        raw = bytes(addr)
        if len(raw) == 4:
            return 32, int.from_bytes(raw, "big")
        if len(raw) == 16:
            return 128, int.from_bytes(raw, "big")
    return None


class _FamilyTable:
    """Routes of one address family: prefix length -> {network int >> host bits: Route}."""

    def __init__(self, bits):
        self.bits = bits
        self.by_len = {}
        self.lengths = ()

    def add(self, route):
        table = self.by_len.get(route.prefixlen)
        if table is None:
            table = self.by_len[route.prefixlen] = {}
            self.lengths = tuple(sorted(self.by_len, reverse=True))
        key = int(route.network.network_address) >> (self.bits - route.prefixlen)
        best = table.get(key)
        # Strictly lower metric wins; on an equal metric the first route listed stays, so
        # multipath/duplicate entries give a stable answer rather than the last one parsed.
        if best is None or route.metric < best.metric:
            table[key] = route

    def match(self, value):
        bits = self.bits
        for length in self.lengths:
            route = self.by_len[length].get(value >> (bits - length))
            if route is not None:
                return route
        return None


class RouteTable:
    """Longest-prefix-match over routes, with a per-address cache."""

    def __init__(self, routes: Iterable[Route] = (), cache_size: int = 65536):
        self._families = {32: _FamilyTable(32), 128: _FamilyTable(128)}
        self._routes = []
        for route in routes:
            self._families[route.network.max_prefixlen].add(route)
            self._routes.append(route)
        # lru_cache is implemented in C, cheaper per call than a hand-made dict+eviction.
        self._cached = functools.lru_cache(maxsize=max(0, int(cache_size)))(self._lookup)

    @classmethod
    def from_system(cls, proc_root: str = "/proc/self", cache_size: int = 65536) -> "RouteTable":
        """Table from the running host's /proc; missing or unreadable files give fewer routes.

        /proc/self/net is what /proc/net links to (this process's network namespace), and it
        stays visible under the agent unit's ProcSubset=pid, which hides /proc/net.
        """
        routes = []
        for name, parse in (("route", lambda t: parse_proc_route(t, sys.byteorder)),
                            ("ipv6_route", parse_proc_ipv6_route)):
            try:
                with open(os.path.join(proc_root, "net", name), encoding="ascii",
                          errors="replace") as handle:
                    text = handle.read()
            except OSError:
                continue
            routes.extend(parse(text))
        return cls(routes, cache_size=cache_size)

    @property
    def routes(self) -> list:
        """The routes the table was built from (after parsing filters), in input order."""
        return list(self._routes)

    def __len__(self):
        return len(self._routes)

    def _lookup(self, addr):
        key = _address_key(addr)
        if key is None:
            return None
        return self._families[key[0]].match(key[1])

    def lookup(self, addr: Union[bytes, str]) -> Optional[Route]:
        """Route for a packed (4/16 bytes) or text address: longest prefix, then lowest metric."""
        if isinstance(addr, (bytearray, memoryview)):
            addr = bytes(addr)  # unhashable, and the cache key must be immutable
        try:
            return self._cached(addr)
        except TypeError:  # unhashable odd input
            return None

    def annotate(self, src: bytes, dst: bytes) -> tuple:
        """(out_if, next_hop, src_mask, dst_mask) for a flow; zeros/'' where no route matches."""
        src_route = self.lookup(src)
        dst_route = self.lookup(dst)
        if dst_route is None:
            return 0, "", src_route.prefixlen if src_route else 0, 0
        return (dst_route.ifindex, dst_route.gateway,
                src_route.prefixlen if src_route else 0, dst_route.prefixlen)

    def cache_info(self):
        """functools cache statistics (hits, misses, maxsize, currsize)."""
        return self._cached.cache_info()

    def clear_cache(self):
        """Forget cached answers."""
        self._cached.cache_clear()
