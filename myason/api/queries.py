"""The API's SQL: flow search from grammar clauses, traffic series and top lists from the rollups,
events and greylist (through myason.store.query), and store health from the health tables.

Every value reaches the database as a parameter; only fixed names (rollup tables of a known
resolution, window sizes from periods.py) are formatted into the SQL text.
"""
from __future__ import annotations

import math
import os
import shutil
import time

import orjson

from myason.api.db import MissingTable
from myason.api.grammar import PROTOCOL_NAMES, resolve_time

FLOW_COLUMNS = ("first", "last", "agent", "if_name", "src_ip", "src_port", "dst_ip", "dst_port", "proto",
                "packets", "bytes", "tcp_flags", "direction", "service", "src_country", "dst_country",
                "src_asn", "dst_asn")
_TIME_COLUMNS = ("first", "last")
_IP_COLUMNS = ("src_ip", "dst_ip")
# /top/<dimension> -> rollup_top dimensions summed together (None: protocol totals of rollup_<res>).
# `ports` ranks service ports (myason.store.rollup_sql.service_port): a reply flow's destination is
# the client's ephemeral port, which would otherwise fill the list; dst_port keeps the raw view.
TOP_DIMENSIONS = {
    "talkers": ("src_ip", "dst_ip"), "src_ip": ("src_ip",), "dst_ip": ("dst_ip",),
    "ports": ("service_port",), "service_port": ("service_port",), "src_port": ("src_port",),
    "dst_port": ("dst_port",), "protocols": None, "countries": ("src_country", "dst_country"),
    "as": ("src_asn", "dst_asn"),
}
TRAFFIC_BY = ("none", "proto", "direction")


def iso(t) -> str | None:
    """Unix seconds -> 'YYYY-MM-DDTHH:MM:SS.mmmZ' (UTC); None stays None."""
    if t is None:
        return None
    # The whole time is rounded before it is split, so 48.9996 s carries into 49.000 (rounding
    # only the fraction would print 48.000, a second early, and break newest-first order).
    # Microseconds first: the stores keep no more, and whole numbers make the half-way case
    # exact (half a millisecond rounds up, also before 1970).
    seconds, ms = divmod((round(float(t) * 1e6) + 500) // 1000, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % ms


def proto_name(n) -> str:
    """'tcp' for 6, ..., the number as text for the others."""
    return PROTOCOL_NAMES.get(int(n), str(int(n)))


def _empty_on_missing(fn):
    def wrapped(*args, **kw):
        try:
            return fn(*args, **kw)
        except MissingTable:
            return [], []
    return wrapped


@_empty_on_missing
def _fetch(db, sql, params):
    return db.fetch(sql, params)


# -- flow search ----------------------------------------------------------------------------------

def flow_sql(dialect, query, now):
    """(sql, params) of the flow search for a grammar Query; newest flows first, limit + 1 rows."""
    d = dialect
    cols = []
    for c in FLOW_COLUMNS:
        if c in _TIME_COLUMNS:
            cols.append('%s AS "%s"' % (d.epoch('"%s"' % c), c))
        elif c in _IP_COLUMNS:
            cols.append("%s AS %s" % (d.ip_text(c), c))
        else:
            cols.append(c)
    where, params = [], []
    for name, value in query.clauses:
        if name == "host":
            where.append("(src_ip = %s OR dst_ip = %s)" % (d.ip_param(), d.ip_param()))
            params += [value, value]
        elif name in ("src", "dst"):
            where.append("%s_ip = %s" % (name, d.ip_param()))
            params.append(value)
        elif name == "net":
            where.append("(%s OR %s)" % (d.in_net("src_ip"), d.in_net("dst_ip")))
            params += [value, value]
        elif name == "port":
            where.append("(src_port = %s OR dst_port = %s)" % (d.p, d.p))
            params += [int(value), int(value)]
        elif name == "proto":
            where.append("proto = %s" % d.p)
            params.append(int(value))
        elif name == "agent":
            where.append("agent = %s" % d.p)
            params.append(value)
        elif name == "after":
            where.append('"first" >= %s' % d.time_param())
            params.append(resolve_time(value, now))
        elif name == "before":
            where.append('"first" < %s' % d.time_param())
            params.append(resolve_time(value, now))
    sql = "SELECT %s FROM flows%s ORDER BY \"first\" DESC LIMIT %s" % (
        ", ".join(cols), (" WHERE " + " AND ".join(where)) if where else "", d.p)
    return sql, params + [query.limit + 1]


def flow_search(db, query, now=None) -> dict:
    """{columns, rows, count, truncated} of the flows matching a grammar Query, newest first."""
    now = time.time() if now is None else now
    sql, params = flow_sql(db.dialect, query, now)
    _, rows = _fetch(db, sql, params)
    truncated = len(rows) > query.limit
    out = []
    for r in rows[:query.limit]:
        r = list(r)
        r[0], r[1] = iso(r[0]), iso(r[1])
        out.append(r)
    return {"columns": list(FLOW_COLUMNS), "rows": out, "count": len(out), "truncated": truncated}


# -- traffic and top ------------------------------------------------------------------------------

def span(period, now, until=None) -> tuple:
    """(start, end) of `period`: its windows up to now, or up to `until` (Unix seconds) when given."""
    return period.windows(now) if until is None else period.windows_until(until)


def traffic(db, period, now=None, agent=None, if_name=None, by="none", until=None) -> dict:
    """Bytes, packets and flows per window of `period` from rollup_<resolution>, zeros filled in.

    The period ends now, or at `until` (Unix seconds) when given (Period.windows_until).
    """
    if by not in TRAFFIC_BY:
        raise ValueError("by must be one of %s, got %r" % (", ".join(TRAFFIC_BY), by))
    now = time.time() if now is None else now
    d = db.dialect
    start, end = span(period, now, until)
    key = {"none": "''", "proto": "proto", "direction": "direction"}[by]
    where, params = ["bucket >= %s" % d.time_param(), "bucket < %s" % d.time_param()], [float(start), float(end)]
    if agent:
        where.append("agent = %s" % d.p)
        params.append(agent)
    if if_name is not None and if_name != "":
        where.append("if_name = %s" % d.p)
        params.append(if_name)
    sql = ("SELECT %s AS w, %s AS k, sum(bytes), sum(packets), sum(flows) FROM rollup_%s WHERE %s"
           " GROUP BY 1, 2 ORDER BY 1" % (d.window("bucket", period.window), key, period.resolution,
                                          " AND ".join(where)))
    _, rows = _fetch(db, sql, params)
    series, totals = {}, {}
    for w, k, b, p, f in rows:
        k = _traffic_key(by, k)
        series.setdefault(k, {})[int(w)] = (int(b or 0), int(p or 0), int(f or 0))
        totals[k] = totals.get(k, 0) + int(b or 0)
    if by == "none":
        series.setdefault("", {})
        totals.setdefault("", 0)
    points = []
    for k in sorted(series, key=lambda k: (-totals[k], k)):
        values = series[k]
        for w in range(int(start), int(end), period.window):
            b, p, f = values.get(w, (0, 0, 0))
            point = {"t": iso(w), "bytes": b, "packets": p, "flows": f}
            if by != "none":
                point["key"] = k
            points.append(point)
    return {"period": period.name, "resolution": period.resolution, "window": period.window,
            "start": iso(start), "end": iso(end), "points": points}


def _traffic_key(by, k):
    if by == "proto":
        return proto_name(k)
    if by == "direction":
        return k or "unknown"
    return ""


def top(db, dimension, period, now=None, limit=10, agent=None, until=None) -> dict:
    """The `limit` keys of `dimension` with most bytes over `period` (ending now, or at `until`), from the rollups."""
    if dimension not in TOP_DIMENSIONS:
        raise ValueError("unknown dimension %r (known: %s)" % (dimension, ", ".join(TOP_DIMENSIONS)))
    now = time.time() if now is None else now
    d = db.dialect
    start, end = span(period, now, until)
    dims = TOP_DIMENSIONS[dimension]
    if dims is None:
        params = [float(start), float(end)]
        where = ["bucket >= %s" % d.time_param(), "bucket < %s" % d.time_param()]
        if agent:
            where.append("agent = %s" % d.p)
            params.append(agent)
        sql = ("SELECT proto AS key, sum(bytes) AS b, sum(packets), sum(flows) FROM rollup_%s WHERE %s"
               " GROUP BY proto ORDER BY b DESC, proto LIMIT %s" % (period.resolution, " AND ".join(where), d.p))
    else:
        parts, params = [], []
        for table, lo, hi in _top_sources(period, start, end, now):
            parts.append("SELECT key, bytes, packets, flows FROM %s WHERE bucket >= %s AND bucket < %s"
                         " AND agent = %s AND dimension IN (%s)" % (table, d.time_param(), d.time_param(), d.p,
                                                                    ", ".join([d.p] * len(dims))))
            params += [lo, hi, agent or "*"] + list(dims)
        sql = ("SELECT key, sum(bytes) AS b, sum(packets), sum(flows) FROM (%s) t"
               " GROUP BY key ORDER BY b DESC, key LIMIT %s" % (" UNION ALL ".join(parts), d.p))
    params.append(limit)
    _, rows = _fetch(db, sql, params)
    out = [{"key": proto_name(k) if dims is None else str(k), "bytes": int(b or 0), "packets": int(p or 0),
            "flows": int(f or 0)} for k, b, p, f in rows]
    return {"dimension": dimension, "period": period.name, "resolution": period.resolution,
            "start": iso(start), "end": iso(end), "rows": out}


def _top_sources(period, start, end, now):
    # A coarse bucket's top-N is computed only once the bucket is closed and settled
    # (myason.store.rollup.SETTLE); the recent tail comes from the 1m tops meanwhile.
    from myason.store.rollup import RESOLUTIONS, SETTLE
    res = period.resolution
    if res == "1m":
        return [("rollup_top_1m", float(start), float(end))]
    step = RESOLUTIONS[res]
    cutoff = min(max(math.floor((now - SETTLE[res]) / step) * step, start), end)
    return [("rollup_top_%s" % res, float(start), float(cutoff)), ("rollup_top_1m", float(cutoff), float(end))]


def data_range(db) -> dict:
    """{first, last}: where stored flows are, from the start of the earliest rollup bucket holding
    some to the end of the latest one (None, None when there is none).

    Each resolution's min and max bucket is one index lookup. The finest resolution that still
    holds the data gives the edge (a minute); a coarser table only moves it when it holds a bucket
    wholly outside that, i.e. data whose finer rollups have expired.
    """
    from myason.store.rollup import RESOLUTIONS
    d = db.dialect
    # One scalar subquery per aggregate: min() or max() alone is what both databases answer from the index.
    sel = ", ".join("(SELECT %s FROM rollup_%s)" % (d.epoch("%s(bucket)" % agg), res)
                    for res in RESOLUTIONS for agg in ("min", "max"))
    _, rows = _fetch(db, "SELECT " + sel, ())
    first = last = None
    if rows:
        values = iter(rows[0])
        for _res, step in RESOLUTIONS.items():
            lo, hi = next(values), next(values)
            if lo is None:
                continue
            if first is None or lo + step <= first:
                first = float(lo)
            if last is None or hi >= last:
                last = float(hi) + step
    return {"first": iso(first), "last": iso(last)}


# -- agents ---------------------------------------------------------------------------------------

AGENTS_FINE = 2 * 86400     # the last two days come from the 1m rollups: last_seen to the minute


def agents(db, since, now=None, until=None) -> list:
    """[{agent, interfaces, last_seen}] of the agents with flows in the `since` seconds before `until`
    (default now), most recently seen first, from the rollup totals (current with every stored batch).

    The last two days are read from rollup_1m, older parts of the window from rollup_1h (rollup_1d
    beyond a year): last_seen is the end of the latest bucket holding the agent's flows (capped at
    the window's end), to the minute when that is recent, else to the hour or day. A few small
    grouped scans whatever the store holds.
    """
    from myason.store.rollup import RESOLUTIONS
    end = (time.time() if now is None else now) if until is None else until
    start = end - since
    d = db.dialect
    split = max(start, end - AGENTS_FINE)
    slices = [("1m", split, end)]
    if start < split:
        slices.append(("1h" if since <= 366 * 86400 else "1d", start, split))
    seen = {}
    for res, lo, hi in slices:
        step = RESOLUTIONS[res]
        # A bucket overlapping the slice counts: it may hold flows inside it.
        sql = ("SELECT agent, if_name, %s FROM rollup_%s WHERE bucket > %s AND bucket < %s GROUP BY agent, if_name"
               % (d.epoch("max(bucket)"), res, d.time_param(), d.time_param()))
        _, rows = _fetch(db, sql, [float(lo - step), float(hi)])
        for agent, if_name, bucket in rows:
            a = seen.setdefault(agent, {"interfaces": set(), "last": {}})
            a["interfaces"].add(if_name)
            a["last"][res] = max(a["last"].get(res, 0.0), min(float(bucket) + step, end))
    # The finer 1m slice wins: a coarse bucket reaching into it would overstate the end.
    last = {name: a["last"].get("1m", max(a["last"].values())) for name, a in seen.items()}
    return [{"agent": name, "interfaces": sorted(seen[name]["interfaces"]), "last_seen": iso(last[name])}
            for name in sorted(seen, key=lambda n: (-last[n], n))]


# -- events ---------------------------------------------------------------------------------------

def events(db, start, until=None, limit=100, after=None, **filters) -> dict:
    """{events, next}: IDEA events detected from `start` (Unix seconds) to before `until`, newest
    first, at most `limit`; each with "id" (its IDEA ID) and "agents" (the probes whose flows made it,
    from `_Myason.Agents`; [] when unknown) added. `after`: (micros, id, start) of a
    decoded cursor, the page then begins after that event. filters: category, source, target, agent
    (myason.store.query.events_sql). `next` is the cursor of the following page, None on the last.

    Through `db` (the pool, the read-only session and the query timeout, as every other route),
    sorted and limited by the database: one more row than asked tells whether a page follows.
    """
    from myason.api.eventsearch import encode_cursor
    from myason.store.events import event_agents
    from myason.store.query import events_sql
    sql, params = events_sql(db.kind, start, until=until, limit=limit + 1, newest_first=True,
                             before=None if after is None else after[:2], **filters)
    _, rows = _fetch(db, sql, params)
    out = []
    for doc, _micros, _id in rows[:limit]:
        ev = _idea(doc)
        ev["id"] = ev.get("ID")
        ev["agents"] = event_agents(ev)
        out.append(ev)
    nxt = None
    if len(rows) > limit:
        _doc, micros, last_id = rows[limit - 1]
        nxt = encode_cursor(micros, str(last_id), start)
    return {"events": out, "next": nxt}


def event(db, event_id) -> dict | None:
    """The stored IDEA document of the event `event_id`, or None (PostgreSQL stores only UUIDs)."""
    import uuid
    from myason.store.query import event_sql
    if db.kind == "postgresql":
        try:
            uuid.UUID(event_id)
        except ValueError:
            return None
    _, rows = _fetch(db, event_sql(db.kind), [event_id])
    return _idea(rows[0][0]) if rows else None


def _idea(doc):
    # PostgreSQL gives jsonb as dicts, SQLite the JSON text.
    return orjson.loads(doc) if isinstance(doc, (str, bytes)) else doc


def greylist(db, since, now=None) -> list:
    """Greylist rows (myason.store.query.greylist) of the events of the last `since` seconds, aggregated in SQL."""
    from myason.store.query import greylist_from_groups, greylist_sql
    now = time.time() if now is None else now
    _, rows = _fetch(db, *greylist_sql(db.kind, now - since))
    return greylist_from_groups(rows)


# -- health ---------------------------------------------------------------------------------------

_COLLECTOR_COLS = ("node", "updated", "started", "datagrams", "flows", "rejects", "queue_dropped",
                   "kernel_drops", "spool_files", "spool_bytes", "writer_lag", "disk_free")
_AGENT_COLS = ("node", "agent", "updated", "last_datagram", "datagrams", "flows", "gaps", "restarts", "rejects")
_TIMES = ("updated", "started", "last_datagram")


def _rows_as_dicts(db, table, cols):
    d = db.dialect
    sel = ", ".join(d.epoch(c) if c in _TIMES else c for c in cols)
    _, rows = _fetch(db, "SELECT %s FROM %s ORDER BY 1, 2" % (sel, table), ())
    return [dict(zip(cols, r)) for r in rows]


def stats(db, now=None) -> dict:
    """Ingest and storage health: collectors, agents, totals, rejects by reason, database size, disk."""
    now = time.time() if now is None else now
    d = db.dialect
    collectors = _rows_as_dicts(db, "health_collectors", _COLLECTOR_COLS)
    agents = _rows_as_dicts(db, "health_agents", _AGENT_COLS)
    for row in collectors + agents:
        row["age"] = round(now - row["updated"], 3) if row.get("updated") is not None else None
        for c in _TIMES:
            if c in row:
                row[c] = iso(row[c])
    _, reasons = _fetch(db, (
        "SELECT s.metric, sum(s.value) FROM health_samples s JOIN (SELECT node, agent, metric, max(ts) AS ts"
        " FROM health_samples WHERE metric LIKE {p} AND ts >= {t} GROUP BY node, agent, metric) m"
        " ON s.node = m.node AND s.agent = m.agent AND s.metric = m.metric AND s.ts = m.ts"
        " GROUP BY s.metric ORDER BY 1").format(p=d.p, t=d.time_param()), ("reject:%", now - 86400.0))
    last = [a["last_datagram"] for a in agents if a["last_datagram"]]
    totals = {
        "agents_seen": len({a["agent"] for a in agents}),
        "last_datagram": max(last) if last else None,
        "datagrams": sum(c["datagrams"] or 0 for c in collectors),
        "flows": sum(c["flows"] or 0 for c in collectors),
        "gaps": sum(a["gaps"] or 0 for a in agents),
        "rejects": sum(c["rejects"] or 0 for c in collectors),
        "queue_dropped": sum(c["queue_dropped"] or 0 for c in collectors),
        "kernel_drops": sum(c["kernel_drops"] or 0 for c in collectors),
        "spool_files": sum(c["spool_files"] or 0 for c in collectors),
        "spool_bytes": sum(c["spool_bytes"] or 0 for c in collectors),
        "writer_lag": max((c["writer_lag"] for c in collectors if c["writer_lag"] is not None), default=None),
        "disk_free": min((c["disk_free"] for c in collectors if c["disk_free"] is not None), default=None),
    }
    return {"time": iso(now), "totals": totals, "collectors": collectors, "agents": agents,
            "rejects_by_reason": {m.split(":", 1)[1]: int(v) for m, v in reasons},
            "database": _database_stats(db)}


def _database_stats(db):
    out = {"type": db.kind, "size_bytes": db.size(), "flows_estimate": None, "disk_free": None}
    if db.kind == "sqlite":
        _, rows = _fetch(db, "SELECT max(rowid) FROM flows", ())
        try:
            out["disk_free"] = shutil.disk_usage(os.path.dirname(os.path.abspath(db.path))).free
        except OSError:
            pass
    else:
        _, rows = _fetch(db, "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits i"
                             " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'flows'::regclass", ())
    if rows and rows[0][0] is not None:
        out["flows_estimate"] = int(rows[0][0])
    return out
