"""IDEA events as stored by the SQL writers: the indexable columns of one event (Mentat style)."""
from __future__ import annotations

import datetime as dt
import ipaddress

import orjson

# Columns of the `events` table besides the full event JSON, in insert order.
EVENT_COLUMNS = ("id", "detecttime", "category", "source_ip", "target_ip", "source_port", "target_port",
                 "protocol", "node_name", "description", "agents")
# The private IDEA key myason's detectors write (myason.detect.idea.EXTENSION; the store cannot
# import detect): `Agents` lists the agents (probes) whose flows made the event.
EXTENSION = "_Myason"


def parse_time(text) -> float:
    """Unix seconds of an RFC 3339 timestamp ("2026-01-02T03:04:05Z"); ValueError if malformed."""
    if not isinstance(text, str):
        raise ValueError("timestamp is not a string: %r" % (text,))
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def _sorted_unique(values):
    return sorted(set(values), key=lambda v: (type(v).__name__, v))


def event_columns(event: dict) -> dict:
    """{column: value} of EVENT_COLUMNS for an IDEA dict; ValueError/TypeError/KeyError if malformed.

    Lists (category, addresses, ports, protocols, node names, agents) are sorted and de-duplicated,
    so they can be stored as arrays and searched through an index (GIN in PostgreSQL). `agents`
    comes from `_Myason.Agents`, empty for an event without it (another producer's, an older one).
    """
    def addresses(part):
        out = []
        for item in event.get(part) or ():
            out.extend(item.get("IP4") or ())
            out.extend(item.get("IP6") or ())
        return _sorted_unique(_address_text(a) for a in out)

    def ports(part):
        out = []
        for item in event.get(part) or ():
            out.extend(int(p) for p in item.get("Port") or ())
        return _sorted_unique(out)

    protos = []
    for part in ("Source", "Target"):
        for item in event.get(part) or ():
            protos.extend(str(p) for p in item.get("Proto") or ())
    return {
        "id": str(event["ID"]),
        "detecttime": parse_time(event["DetectTime"]),
        "category": _sorted_unique(str(c) for c in event["Category"]),
        "source_ip": addresses("Source"),
        "target_ip": addresses("Target"),
        "source_port": ports("Source"),
        "target_port": ports("Target"),
        "protocol": _sorted_unique(protos),
        "node_name": _sorted_unique(str(n["Name"]) for n in event.get("Node") or () if "Name" in n),
        "description": str(event.get("Description", "")),
        "agents": event_agents(event),
    }


def event_agents(event: dict) -> list:
    """The agents (probes) whose flows made the event: its `_Myason.Agents`, sorted, unique; [] when
    it has none (another producer's event, or one stored before myason recorded them)."""
    ext = event.get(EXTENSION)
    return _sorted_unique(str(a) for a in (ext.get("Agents") or () if isinstance(ext, dict) else ()))


def _address_text(value) -> str:
    # Compressed, as the API's filters write an address, so SQLite's text match finds it
    # (PostgreSQL's inet does not care); a network or range IDEA allows stays as written.
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return str(value)


def dumps(event: dict) -> bytes:
    """The event as compact JSON bytes."""
    return orjson.dumps(event)


# Description prefixes of the built-in detectors (myason/detect/*.py) -> detector name.
_DETECTOR_PREFIXES = (("Horizontal scan:", "scan_horizontal"), ("Vertical scan:", "scan_vertical"),
                      ("Login brute force:", "bruteforce"), ("Traffic between ", "blocklist"),
                      ("SYN flood against ", "dos"), ("Packet flood against ", "dos"))


def detector_of(event: dict) -> str:
    """Name of the built-in detector that wrote this event (from its Description), else 'other'."""
    text = str(event.get("Description", ""))
    for prefix, name in _DETECTOR_PREFIXES:
        if text.startswith(prefix):
            return name
    return "other"


# -- retention ------------------------------------------------------------------------------------

RETENTION_CHUNK = 10000


def check_events_retention(key, value) -> float:
    """Validator of a SQL writer's `events_retention`: a duration (90d, 1y) or 0 (keep); seconds out."""
    from myason.store.rollup import parse_duration
    return parse_duration(key, value)


def delete_events_before(kind, conn, cutoff, chunk=RETENTION_CHUNK) -> int:
    """Delete the events detected before `cutoff` (Unix seconds); returns how many.

    `kind` is "sqlite" or "postgresql", `conn` the writer's (maintenance) connection. In chunks
    found through the detecttime index, each committed on its own, so a writer inserting events
    waits for one chunk at most.
    """
    if kind == "postgresql":
        # The oldest first, in index order, deleted by their row addresses: with `id IN (...)` the
        # planner hashes the chunk and scans the whole table to join it (EXPLAIN, docs/events.md).
        sql = ("DELETE FROM events WHERE ctid = ANY (ARRAY(SELECT ctid FROM events"
               " WHERE detecttime < to_timestamp(%s) ORDER BY detecttime LIMIT %s))")
    else:
        sql = "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE detecttime < ? LIMIT ?)"
    total = 0
    while True:
        n = conn.execute(sql, (float(cutoff), int(chunk))).rowcount
        conn.commit()
        total += n
        if n < chunk:
            return total
