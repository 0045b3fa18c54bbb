"""Reading stored IDEA events back (for `myason events` and `myason greylist`)."""
from __future__ import annotations

import csv
import io
import ipaddress
import re
import time

import orjson

from myason.errors import ConfigError
from myason.store.events import parse_time

SQL_WRITERS = ("sqlite", "postgresql")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
GREYLIST_FIELDS = ("address", "categories", "first_seen", "last_seen", "events")


def parse_duration(key, text) -> float:
    """Seconds of "90s", "30m", "1h", "7d", "2w"; ConfigError(key) otherwise."""
    m = _DURATION_RE.match(str(text).strip())
    if not m:
        raise ConfigError(key, "must be a number and a unit s, m, h, d or w (e.g. 1h, 7d), got %r" % (text,))
    return float(m.group(1)) * _UNITS[m.group(2)]


def first_sql_writer(writers) -> dict:
    """The first sqlite or postgresql writer of a collector config; ConfigError when there is none."""
    for w in writers:
        if w.get("type") in SQL_WRITERS:
            return dict(w)
    raise ConfigError("writers", "no sqlite or postgresql writer configured: events are not stored")


def fetch_events(writer: dict, since: float, category=None, source=None, until=None) -> list:
    """IDEA dicts stored by `writer` (a writer config) with since <= DetectTime (< until), oldest first.

    `category` matches one of the event's categories exactly; `source` one of its source addresses.
    """
    if source is not None:
        try:
            source = str(ipaddress.ip_address(source))
        except ValueError:
            raise ConfigError("--source", "not an IP address: %r" % (source,)) from None
    if writer["type"] == "sqlite":
        return _fetch_sqlite(writer["path"], since, category, source, until)
    return _fetch_postgresql(writer["dsn"], since, category, source, until)


def _fetch_sqlite(path, since, category, source, until=None):
    import sqlite3
    sql = "SELECT event FROM events WHERE detecttime >= ?"
    args = [since]
    if until is not None:
        sql += " AND detecttime < ?"
        args.append(until)
    if category:
        sql += " AND EXISTS (SELECT 1 FROM json_each(events.category) WHERE value = ?)"
        args.append(category)
    if source:
        sql += " AND EXISTS (SELECT 1 FROM json_each(events.source_ip) WHERE value = ?)"
        args.append(source)
    sql += " ORDER BY detecttime, id"
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    except sqlite3.Error as exc:
        raise OSError("cannot open %s: %s" % (path, exc)) from None
    try:
        return [orjson.loads(r[0]) for r in conn.execute(sql, args)]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise OSError("cannot read events from %s: %s" % (path, exc)) from None
    finally:
        conn.close()


def _fetch_postgresql(dsn, since, category, source, until=None):
    import psycopg
    sql = "SELECT event FROM events WHERE detecttime >= to_timestamp(%s)"
    args = [since]
    if until is not None:
        sql += " AND detecttime < to_timestamp(%s)"
        args.append(until)
    if category:
        sql += " AND category @> ARRAY[%s]::text[]"
        args.append(category)
    if source:
        sql += " AND source_ip @> ARRAY[%s]::inet[]"
        args.append(source)
    sql += " ORDER BY detecttime, id"
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return [r[0] for r in conn.execute(sql, args)]
    except psycopg.errors.UndefinedTable:
        return []
    except psycopg.Error as exc:
        raise OSError("cannot read events: %s" % " ".join(str(exc).split())[:300]) from None


def greylist(events) -> list:
    """[{address, categories, first_seen, last_seen, events}] of every Source address, busiest first."""
    out = {}
    for ev in events:
        t = parse_time(ev["DetectTime"])
        first = parse_time(ev.get("EventTime", ev["DetectTime"]))
        for src in ev.get("Source") or ():
            for addr in list(src.get("IP4") or ()) + list(src.get("IP6") or ()):
                e = out.get(addr)
                if e is None:
                    e = out[addr] = {"address": addr, "categories": set(), "first_seen": first,
                                     "last_seen": t, "events": 0}
                e["categories"].update(ev.get("Category") or ())
                e["first_seen"] = min(e["first_seen"], first)
                e["last_seen"] = max(e["last_seen"], t)
                e["events"] += 1
    rows = sorted(out.values(), key=lambda e: (-e["events"], e["address"]))
    for e in rows:
        e["categories"] = sorted(e["categories"])
        e["first_seen"] = _rfc3339(e["first_seen"])
        e["last_seen"] = _rfc3339(e["last_seen"])
    return rows


def _rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def format_greylist(rows, fmt="csv") -> str:
    """The greylist as CSV (categories joined by ';') or as a JSON array."""
    if fmt == "json":
        return orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(GREYLIST_FIELDS)
    for e in rows:
        w.writerow([e["address"], ";".join(e["categories"]), e["first_seen"], e["last_seen"], e["events"]])
    return buf.getvalue()


def format_event_line(ev) -> str:
    """One line per event: time, categories, sources -> targets, description."""
    def addrs(part):
        out = []
        for item in ev.get(part) or ():
            out.extend(item.get("IP4") or ())
            out.extend(item.get("IP6") or ())
        return ",".join(out[:5]) + ("...(%d)" % len(out) if len(out) > 5 else "")
    return "%s %s %s -> %s %s" % (ev.get("DetectTime"), ",".join(ev.get("Category") or ()), addrs("Source") or "-",
                                  addrs("Target") or "-", ev.get("Description", ""))
