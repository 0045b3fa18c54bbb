"""Reading stored IDEA events back (for `myason events` and `myason greylist`)."""
from __future__ import annotations

import csv
import datetime as dt
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
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


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


def events_sql(kind, since, category=None, source=None, until=None, limit=None, newest_first=False,
               target=None, agent=None, before=None):
    """(sql, params) selecting (event, detecttime in Unix microseconds, id) of stored events with
    since <= DetectTime (< until).

    `kind` is "sqlite" or "postgresql". category matches one of the event's categories exactly,
    agent one of its agents (the probes whose flows made it, `_Myason.Agents`) or its IDEA Node
    name (the collector's `node_name`); source and target one of its addresses: an address (compressed, as
    ipaddress prints it) or a network ("10.0.0.0/8", "2001:db8::/32"), see address_condition.
    before: (microseconds, id), keyset paging: only events that sort after that one newest first.
    Ordered by DetectTime, then id (oldest first unless newest_first); at most `limit` rows when
    given: the database reads the (detecttime, id) index in order and stops.
    """
    pg = kind == "postgresql"
    p, t = ("%s", "to_timestamp(%s)") if pg else ("?", "?")
    micros = ("(extract(epoch FROM detecttime) * 1000000)::bigint" if pg
              else "CAST(round(detecttime * 1000000) AS INTEGER)")
    sql = "SELECT event, %s, id FROM events WHERE detecttime >= %s" % (micros, t)
    args = [since]
    if until is not None:
        sql += " AND detecttime < %s" % t
        args.append(until)
    if category:
        sql += " AND " + _has_text(pg, "category")
        args.append(category)
    if agent:
        # A probe (the agents whose flows made the event) or the collector (the IDEA Node name):
        # each side its own GIN index in PostgreSQL (a BitmapOr when the planner leaves the time scan).
        sql += " AND (%s OR %s)" % (_has_text(pg, "agents"), _has_text(pg, "node_name"))
        args += [agent, agent]
    for column, value in (("source_ip", source), ("target_ip", target)):
        if value:
            sql += " AND " + address_condition(kind, column, value)
            args.append(value)
    if before is not None:
        # A row comparison: both databases walk the (detecttime, id) index from the position on.
        sql += " AND (detecttime, id) < (%s, %s)" % ((p, "%s::uuid") if pg else (p, p))
        args += list(keyset_values(kind, *before))
    sql += " ORDER BY detecttime DESC, id DESC" if newest_first else " ORDER BY detecttime, id"
    if limit is not None:
        sql += " LIMIT %s" % p
        args.append(int(limit))
    return sql, args


def _has_text(pg, column) -> str:
    """SQL condition: the text array `column` holds the one parameter."""
    if pg:
        return "%s @> ARRAY[%%s]::text[]" % column
    return "EXISTS (SELECT 1 FROM json_each(events.%s) WHERE value = ?)" % column


def address_condition(kind, column, value) -> str:
    """SQL condition: the address array `column` holds the address `value`, or one inside the network
    `value` ("ADDR/PREFIX"); takes `value` as its one parameter.

    PostgreSQL keeps inet[]: an address is found through the GIN index (@>), a network by <<= on each
    element (in the rows the time order reaches). SQLite keeps a JSON array of compressed address
    texts: an address is a text match, a network needs in_net(address, network), the function the
    API's reader registers on its connections (myason.api.db).
    """
    if kind == "postgresql":
        if "/" in value:
            return "EXISTS (SELECT 1 FROM unnest(%s) AS a WHERE a <<= %%s::inet)" % column
        return "%s @> ARRAY[%%s]::inet[]" % column
    if "/" in value:
        return "EXISTS (SELECT 1 FROM json_each(events.%s) WHERE in_net(value, ?))" % column
    return "EXISTS (SELECT 1 FROM json_each(events.%s) WHERE value = ?)" % column


def keyset_values(kind, micros, event_id) -> tuple:
    """The parameters (detecttime, id) of a keyset position, in the store's own types, exact.

    SQLite stores detecttime as micros / 1e6 computed the same way (parse_time), so the equal
    event compares equal; PostgreSQL gets a datetime, which carries microseconds exactly.
    """
    if kind == "postgresql":
        return _EPOCH + dt.timedelta(microseconds=int(micros)), str(event_id)
    return int(micros) / 1e6, str(event_id)


def event_sql(kind) -> str:
    """SQL selecting the `event` column of the event whose id is its one parameter."""
    return "SELECT event FROM events WHERE id = %s" % ("%s::uuid" if kind == "postgresql" else "?")


def greylist_sql(kind, since, until=None):
    """(sql, params) of the greylist's groups: one row per source address and stored category list,
    (address, categories, events, first_seen, last_seen) with times as Unix seconds.

    The database aggregates, so the answer's size follows the number of addresses, not of events;
    greylist_from_groups merges an address's rows (one per distinct category list).
    """
    if kind == "postgresql":
        first = "coalesce((e.event->>'EventTime')::timestamptz, e.detecttime)"
        sql = ("SELECT host(s.addr), e.category, count(*), extract(epoch FROM min(%s))::float8,"
               " extract(epoch FROM max(e.detecttime))::float8"
               " FROM events e CROSS JOIN LATERAL unnest(e.source_ip) AS s(addr)"
               " WHERE e.detecttime >= to_timestamp(%%s)%s GROUP BY s.addr, e.category"
               % (first, "" if until is None else " AND e.detecttime < to_timestamp(%s)"))
    else:
        # julianday() reads RFC 3339 with a zone or Z; NULL (no EventTime, or unreadable) falls back.
        first = ("coalesce(round((julianday(json_extract(e.event, '$.EventTime')) - 2440587.5) * 86400.0, 3),"
                 " e.detecttime)")
        sql = ("SELECT s.value, e.category, count(*), min(%s), max(e.detecttime)"
               " FROM events e, json_each(e.source_ip) s WHERE e.detecttime >= ?%s GROUP BY s.value, e.category"
               % (first, "" if until is None else " AND e.detecttime < ?"))
    return sql, [since] + ([] if until is None else [until])


def greylist_from_groups(rows) -> list:
    """Greylist rows (as greylist() makes them) from the rows of greylist_sql, busiest address first."""
    out = {}
    for addr, categories, count, first, last in rows:
        if isinstance(categories, str):     # SQLite keeps the list as a JSON array
            categories = orjson.loads(categories)
        e = out.get(addr)
        if e is None:
            e = out[addr] = {"address": addr, "categories": set(), "first_seen": first, "last_seen": last, "events": 0}
        e["categories"].update(categories)
        e["first_seen"] = min(e["first_seen"], first)
        e["last_seen"] = max(e["last_seen"], last)
        e["events"] += int(count)
    return _finish_greylist(out)


def _fetch_sqlite(path, since, category, source, until=None):
    import sqlite3
    sql, args = events_sql("sqlite", since, category, source, until)
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
    sql, args = events_sql("postgresql", since, category, source, until)
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
    return _finish_greylist(out)


def _finish_greylist(out):
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
    w.writerows(greylist_table(rows))
    return buf.getvalue()


def greylist_table(rows) -> list:
    """The greylist's CSV rows (GREYLIST_FIELDS, categories joined by ';')."""
    return [[e["address"], ";".join(e["categories"]), e["first_seen"], e["last_seen"], e["events"]] for e in rows]


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
