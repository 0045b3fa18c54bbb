"""The Docket path grammar: `/q/host/10.0.0.1/port/443/after/1h` -> a normalised, hashable query.

Clauses are NAME/VALUE pairs (net takes two segments, ADDR/PREFIX); every clause must hold (AND).
Values are normalised (addresses compressed, protocols as numbers, durations in their largest
whole unit, absolute times as UTC ISO 8601) and the clauses sorted, so the same question asked in
any order or spelling has the same canonical path and the same query id.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from dataclasses import dataclass

DEFAULT_LIMIT = 100
# More clauses than a real question needs only make the SQL longer (1,000 clauses reached the
# databases' limits, a 503): refused with 400 instead.
MAX_CLAUSES = 64
# A duration back from now must stay a time the databases can hold (999999999w is 19 million years).
MAX_AGO = 100 * 366 * 86400
# Canonical clause order; also the list of known clauses.
CLAUSES = ("agent", "host", "src", "dst", "net", "port", "proto", "after", "before", "limit")
PROTOCOLS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "icmp6": 58, "icmpv6": 58, "sctp": 132}
PROTOCOL_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}
_AGENT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_DURATION_RE = re.compile(r"^([0-9]{1,9})([smhdw])$")
_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_UNIT_SECONDS = dict(_UNITS)
_EPOCH_RE = re.compile(r"^[0-9]{9,11}(\.[0-9]{1,6})?$")


class GrammarError(ValueError):
    """A query path that does not follow the grammar; the message says what is wrong."""


@dataclass(frozen=True)
class Query:
    """A parsed, normalised query: sorted (name, value) clauses and the row limit."""

    clauses: tuple
    limit: int

    @property
    def canonical(self) -> str:
        """The canonical path, e.g. 'host/10.0.0.1/port/443/limit/100'."""
        parts = []
        for name, value in self.clauses:
            parts += [name, value]
        parts += ["limit", str(self.limit)]
        return "/".join(parts)

    @property
    def id(self) -> str:
        """First 16 hex digits of the SHA-1 of the canonical path."""
        return query_id(self.canonical)

    def values(self, name) -> list:
        """Values of every clause called `name`."""
        return [v for n, v in self.clauses if n == name]


def query_id(canonical: str) -> str:
    """The id of a canonical query path."""
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


def parse_address(text: str) -> str:
    """A compressed IPv4 or IPv6 address; GrammarError otherwise."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise GrammarError("not an IP address: %r" % (text,)) from None


def parse_net(addr: str, prefix: str) -> str:
    """A network 'ADDR/PREFIX' (host bits cleared); GrammarError otherwise."""
    if not re.fullmatch(r"[0-9]{1,3}", prefix or ""):
        raise GrammarError("net needs ADDR/PREFIX, e.g. net/10.0.0.0/8, got prefix %r" % (prefix,))
    try:
        return str(ipaddress.ip_network("%s/%s" % (addr, prefix), strict=False))
    except ValueError as exc:
        raise GrammarError("not a network: %r (%s)" % ("%s/%s" % (addr, prefix), exc)) from None


def parse_port(text: str) -> str:
    """A port number 0-65535 as a string."""
    if not re.fullmatch(r"[0-9]{1,5}", text) or int(text) > 65535:
        raise GrammarError("not a port (0-65535): %r" % (text,))
    return str(int(text))


def parse_proto(text: str) -> str:
    """An IP protocol number 0-255 (or a name in PROTOCOLS) as a string."""
    low = text.lower()
    if low in PROTOCOLS:
        return str(PROTOCOLS[low])
    if re.fullmatch(r"[0-9]{1,3}", text) and int(text) <= 255:
        return str(int(text))
    raise GrammarError("not a protocol (tcp, udp, icmp, icmp6, ... or 0-255): %r" % (text,))


def parse_time(text: str) -> str:
    """A relative time ('5m', '2h', '7d': that long ago) or an absolute one (ISO 8601, Unix seconds).

    Relative times stay relative in the canonical form (so a repeated question keeps its id) and
    are written in their largest whole unit ('300s' -> '5m'); absolute times become UTC ISO 8601.
    """
    if not text.isascii():
        raise GrammarError("not a time (ASCII digits only): %r" % (text,))
    m = _DURATION_RE.match(text)
    if m:
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        if seconds > MAX_AGO:
            raise GrammarError("out of range (at most %d days ago): %r" % (MAX_AGO // 86400, text))
        for unit, size in _UNITS:
            if seconds % size == 0:
                return "%d%s" % (seconds // size, unit)
    if _EPOCH_RE.match(text):
        t = dt.datetime.fromtimestamp(float(text), dt.timezone.utc)
    else:
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            raise GrammarError("not a time (e.g. 30m, 2h, 7d, 2024-05-01T12:00:00Z): %r" % (text,)) from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        try:
            t = t.astimezone(dt.timezone.utc)
        except OverflowError:       # 9999-12-31T23:59:59-23:59 is in year 10000 in UTC
            raise GrammarError("time out of range: %r" % (text,)) from None
    if not 1970 <= t.year <= 9999:
        raise GrammarError("time out of range: %r" % (text,))
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (".%06d" % t.microsecond if t.microsecond else "") + "Z"


def resolve_time(value: str, now: float) -> float:
    """Unix seconds of a canonical time value (relative ones counted back from `now`)."""
    m = _DURATION_RE.match(value)
    if m:
        return now - int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def parse_limit(text: str, max_limit: int) -> int:
    """A row limit between 1 and max_limit."""
    if not re.fullmatch(r"[0-9]{1,9}", text) or not 1 <= int(text) <= max_limit:
        raise GrammarError("limit must be between 1 and %d, got %r" % (max_limit, text))
    return int(text)


def parse_agent(text: str) -> str:
    """An agent id (1-64 characters of [A-Za-z0-9._:-])."""
    if not _AGENT_RE.match(text):
        raise GrammarError("not an agent id (1-64 characters of A-Z a-z 0-9 . _ : -): %r" % (text,))
    return text


_PARSERS = {"host": parse_address, "src": parse_address, "dst": parse_address, "port": parse_port,
            "proto": parse_proto, "agent": parse_agent, "after": parse_time, "before": parse_time}


def parse_query(path: str, max_limit: int = 10000, default_limit: int = DEFAULT_LIMIT) -> Query:
    """Parse a clause path ('host/1.2.3.4/net/10.0.0.0/8/limit/50'); GrammarError when it is wrong."""
    if not path.isascii():
        # Only ASCII is meaningful here; other scripts' digits must not pass for numbers.
        raise GrammarError("only ASCII characters are allowed in a query, got %r" % (path[:100],))
    segments = [s for s in path.strip().split("/") if s]
    if not segments:
        raise GrammarError("empty query: give at least one clause, e.g. host/10.0.0.1")
    clauses, limit, i, count = set(), None, 0, 0
    while i < len(segments):
        name = segments[i].lower()
        if name not in CLAUSES:
            raise GrammarError("unknown clause %r (known: %s)" % (segments[i], ", ".join(CLAUSES)))
        need = 2 if name == "net" else 1
        values = segments[i + 1:i + 1 + need]
        if len(values) < need:
            if name == "net":
                raise GrammarError("net needs ADDR/PREFIX, e.g. net/10.0.0.0/8")
            raise GrammarError("clause %r needs a value" % name)
        i += 1 + need
        count += 1
        if count > MAX_CLAUSES:
            raise GrammarError("too many clauses: at most %d" % MAX_CLAUSES)
        if name == "limit":
            if limit is not None:
                raise GrammarError("limit given twice")
            limit = parse_limit(values[0], max_limit)
        elif name == "net":
            clauses.add((name, parse_net(*values)))
        else:
            clauses.add((name, _PARSERS[name](values[0])))
    for name in ("after", "before"):
        if len([1 for n, _ in clauses if n == name]) > 1:
            raise GrammarError("%s given twice" % name)
    order = {n: k for k, n in enumerate(CLAUSES)}
    ordered = tuple(sorted(clauses, key=lambda c: (order[c[0]], c[1])))
    if not ordered:
        raise GrammarError("give at least one clause besides limit, e.g. host/10.0.0.1 or after/1h")
    return Query(ordered, limit if limit is not None else min(default_limit, max_limit))
