"""What /events and /events/{id} need besides SQL: the paging cursor, the address filters, and the
flow search (grammar clauses) that finds the flows behind an event.

The cursor is keyset paging: it holds the (detecttime, id) of the last event of a page, so the next
page starts right after it in the index, however deep, and events stored meanwhile neither shift
nor repeat what follows. It also holds the window's start, so that `since` (counted back from
now) does not move while one pages.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import math
import uuid

import orjson

from myason.api.grammar import DEFAULT_LIMIT, PROTOCOLS, GrammarError, parse_query, parse_time, resolve_time

# DetectTime +- this when an event has no window nor EventTime/CeaseTime to bound its flows.
AROUND_DETECT = 300.0
_MAX_CURSOR = 200
_LAST_SECOND = 253402300799.0      # 9999-12-31T23:59:59Z


class CursorError(ValueError):
    """A cursor this API did not make (or made for another store)."""


def encode_cursor(micros: int, event_id: str, start: float) -> str:
    """The opaque cursor of the position after the event (detecttime in µs, id), window from `start`."""
    raw = orjson.dumps({"t": int(micros), "id": str(event_id), "from": float(start)})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, kind: str) -> tuple:
    """(micros, id, start) of a cursor; CursorError when it is not one (or, on PostgreSQL, its id
    is not a UUID, which no stored event could have)."""
    try:
        if len(text) > _MAX_CURSOR:
            raise ValueError("too long")
        obj = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        micros, event_id, start = obj["t"], obj["id"], obj["from"]
        if type(micros) is not int or not isinstance(event_id, str) or type(start) not in (int, float):
            raise ValueError("wrong types")
        if not (0 <= micros <= _LAST_SECOND * 10**6 and math.isfinite(start) and 0 <= start <= _LAST_SECOND):
            raise ValueError("out of range")
        if kind == "postgresql":
            uuid.UUID(event_id)
    except (ValueError, TypeError, KeyError, binascii.Error, orjson.JSONDecodeError):
        raise CursorError("not a cursor of this API (give back `next` of the previous page as it is)") from None
    return micros, event_id, float(start)


def parse_place(text: str) -> str:
    """An address ('10.0.0.1', compressed) or a network ('10.0.0.0/8', host bits cleared); a /32 or
    /128 is its address. GrammarError otherwise."""
    try:
        if "/" not in text:
            return str(ipaddress.ip_address(text))
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise GrammarError("not an address or a network (ADDR/PREFIX): %r" % (text,)) from None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


# -- the flows of an event ------------------------------------------------------------------------

def flow_clauses(event: dict, default_limit: int = DEFAULT_LIMIT, max_limit: int = 10000) -> str:
    """Clauses for /q/{clauses} that cover the flows behind an IDEA event: its sources and targets,
    its port and protocol when it names only one, its time window, and a limit when it counted more
    flows than the API's default_limit shows.

    Every clause must hold (AND), so a side with one address becomes host/ADDR and a side with
    several becomes net/ of the smallest network holding them all (left out when that would be
    everything, or when the side mixes IPv4 and IPv6); host rather than src/dst, since a reply
    flow (a blocklisted peer's answer) counts too. Ports and protocols listed several times are
    left out for the same reason. Time: `after` the earliest of WinStartTime and EventTime,
    `before` a second past the latest of WinEndTime and CeaseTime (IDEA times are truncated to the
    second; `before` is exclusive); DetectTime +- AROUND_DETECT where those are missing.
    Limit: twice the flows it counted (their answers may match too), within max_limit.
    """
    parts = []
    for side in ("Source", "Target"):
        parts += _place_clause(_addresses(event, side))
    ports = {int(p) for item in event.get("Target") or () for p in item.get("Port") or ()}
    if len(ports) == 1:
        parts += ["port", str(ports.pop())]
    protos = {str(item["Proto"][0]).lower() for side in ("Source", "Target") for item in event.get(side) or ()
              if item.get("Proto")}
    known = {PROTOCOLS[p] for p in protos if p in PROTOCOLS}
    if len(known) == 1 and len(protos) == 1:
        parts += ["proto", str(known.pop())]
    lo, hi = _window(event)
    parts += ["after", lo, "before", hi]
    limit = min(max_limit, 2 * _counted(event))
    if limit > default_limit:
        parts += ["limit", str(limit)]
    query = parse_query("/".join(parts), max_limit, default_limit)
    return "/".join("%s/%s" % clause for clause in query.clauses) + (
        "/limit/%d" % query.limit if limit > default_limit else "")


def _counted(event):
    counts = [event.get(k) for k in ("ConnCount", "FlowCount")]
    return max([c for c in counts if type(c) is int] + [0])


def _addresses(event, side):
    out = []
    for item in event.get(side) or ():
        for a in list(item.get("IP4") or ()) + list(item.get("IP6") or ()):
            text = str(a)
            # IDEA also allows networks and ranges (A-B): each end counts.
            for piece in text.split("-") if "-" in text else (text,):
                try:
                    out.append(ipaddress.ip_network(piece.strip(), strict=False))
                except ValueError:
                    continue
    return out


def _place_clause(nets):
    if not nets or len({n.version for n in nets}) != 1:
        return []
    cover = nets[0]
    while not all(n.subnet_of(cover) for n in nets) and cover.prefixlen > 0:
        cover = cover.supernet()
    if cover.prefixlen == 0:
        return []
    if cover.prefixlen == cover.max_prefixlen:
        return ["host", str(cover.network_address)]
    return ["net", str(cover)]


def _seconds(event, key):
    value = event.get(key)
    if not isinstance(value, str):
        return None
    try:
        return resolve_time(parse_time(value), 0.0)
    except (GrammarError, ValueError):
        return None


def _window(event):
    detect = _seconds(event, "DetectTime")
    starts = [t for t in (_seconds(event, "WinStartTime"), _seconds(event, "EventTime")) if t is not None]
    ends = [t for t in (_seconds(event, "WinEndTime"), _seconds(event, "CeaseTime")) if t is not None]
    if detect is None and not (starts and ends):
        raise GrammarError("the event has no readable DetectTime")
    lo = min(starts) if starts else detect - AROUND_DETECT
    hi = max(ends) + 1.0 if ends else detect + AROUND_DETECT
    return _iso(max(lo, 0.0)), _iso(max(hi, lo + 1.0))


def _iso(t):
    # Within the years the grammar takes: an event at the end of 9999 still gets its link.
    return dt.datetime.fromtimestamp(min(t, _LAST_SECOND), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def flows_link(event: dict, default_limit: int = DEFAULT_LIMIT, max_limit: int = 10000) -> dict:
    """{clauses, url, page}: the flow search of an event's flows, as /q and as the page's deep link."""
    from urllib.parse import quote
    clauses = flow_clauses(event, default_limit, max_limit)
    return {"clauses": clauses, "url": "/q/" + clauses, "page": "/#q=" + quote(clauses, safe="")}
