"""Rollups of stored flows per resolution (1m, 15m, 1h, 1d): bucket math, options, constants (maintenance: rollup_maintain).

Every batch a SQL writer stores also inserts, in the same transaction, one `rollup_dirty` row per
1m bucket it touched. `maintain()` reads committed dirty rows, recomputes those 1m buckets from
raw flows (DELETE + INSERT ... SELECT ... GROUP BY), sums them into the enclosing 15m/1h/1d
totals, and deletes exactly the dirty ids it read, in one transaction: a flow committed later
leaves a dirty row for the next run, so nothing is missed or counted twice. Coarse top-N lists
are summed from the next finer resolution's lists once the bucket is closed (`rollup_pending`):
cheap, with a bounded error documented in docs/rollups.md.
"""
from __future__ import annotations

import datetime as dt
import re

from myason.options import check_float, check_int
from myason.services import builtin_table
from myason.errors import ConfigError


RESOLUTIONS = {"1m": 60, "15m": 900, "1h": 3600, "1d": 86400}
COARSE = ("15m", "1h", "1d")
DIMENSIONS = ("src_ip", "dst_ip", "src_port", "dst_port", "src_country", "dst_country", "src_asn", "dst_asn",
              "service_port")
# service_port is the port that names the service of a flow whichever way it went, so a reply's
# ephemeral destination port does not rank (rule in docs/api.md, "Top lists"). Only these
# protocols have ports (the ones the service enrichment names); the others are not ranked.
PORT_PROTOCOLS = (6, 17, 132)
RETENTION_KEYS = ("raw",) + tuple(RESOLUTIONS)
# Seconds after a bucket ends before its top-N is computed: flows arrive late (after the agent's
# idle timeout, up to its active timeout), and each late one would otherwise redo a whole bucket.
# Candidates that still come later are merged into the stored 1m list (docs/rollups.md).
SETTLE = {"1m": 60, "15m": 300, "1h": 900, "1d": 1800}
# Coarse top-N lists are summed from the stored lists of the next finer resolution.
FINER = {"15m": "1m", "1h": "15m", "1d": "1h"}
# Seconds of raw flows per 1m statement in PostgreSQL (bounds the memory of one GROUP BY).
RAW_CHUNK = 900
# PostgreSQL work_mem and hash_mem_multiplier during maintenance (hash tables up to 256 MB).
PG_MEMORY = ("64MB", 4)
HEALTH_KEEP = 7 * 86400
DIRTY_CHUNK = 20000
# Minutes rebuilt from raw flows per transaction (bounds how long one maintenance step runs).
DIRTY_MINUTES = 15
# Serialises maintainers sharing a PostgreSQL database (any constant of our own).
PG_LOCK = 0x6D79726F6C6C
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdwy])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# -- pure bucket math and options -------------------------------------------------------------

def bucket_of(t, res) -> int:
    """Start (Unix seconds) of the `res` bucket holding time t, as SQLite computes it."""
    step = RESOLUTIONS[res]
    return int(t) // step * step


def service_ports() -> tuple:
    """Ports from 1024 up that are services: those of the service enrichment's built-in table.

    The built-in table and not /etc/services, so every writer ranks alike, whatever host it runs on.
    """
    return tuple(sorted({port for _, port in builtin_table() if port >= 1024}))


def enclosing(buckets, res) -> list:
    """Sorted distinct `res` buckets holding the given bucket starts."""
    step = RESOLUTIONS[res]
    return sorted({b // step * step for b in buckets})


def ranges(buckets, step) -> list:
    """[(lo, hi)] half-open ranges covering the sorted distinct bucket starts, adjacent ones merged."""
    out = []
    for b in sorted(set(buckets)):
        if out and out[-1][1] == b:
            out[-1][1] = b + step
        else:
            out.append([b, b + step])
    return [tuple(r) for r in out]


def parse_duration(key, text) -> float:
    """Seconds of "90s", "30m", "1h", "7d", "2w", "1y" (365 d); 0 (or "0") is 0; ConfigError(key) otherwise."""
    if text == 0 or (isinstance(text, str) and text.strip() == "0"):
        return 0.0
    m = _DURATION_RE.match(str(text).strip()) if not isinstance(text, bool) else None
    if not m:
        raise ConfigError(key, "must be 0 or a number and a unit s, m, h, d, w or y (e.g. 7d, 1y), got %r" % (text,))
    return float(m.group(1)) * _UNITS[m.group(2)]


def check_retention(key, value) -> dict:
    """Validator for a writer's `retention` mapping {raw, 1m, 15m, 1h, 1d: duration or 0}; seconds out.

    raw is kept in whole UTC days (partitions are days), so it must be whole days, at least 1d:
    the 1d rollup of yesterday is computed from raw after yesterday ends.
    """
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping of %s to a duration (e.g. {raw: 7d, 1m: 30d})"
                          % ", ".join(RETENTION_KEYS))
    out = {}
    for k, v in value.items():
        if str(k) not in RETENTION_KEYS:
            raise ConfigError("%s.%s" % (key, k), "unknown resolution (known: %s)" % ", ".join(RETENTION_KEYS))
        out[str(k)] = parse_duration("%s.%s" % (key, k), v)
    raw = out.get("raw", 0.0)
    if raw and (raw < 86400 or raw % 86400):
        raise ConfigError("%s.raw" % key, "raw flows are kept in whole UTC days: must be 0 or at least 1d, "
                          "whole days (the 1d rollups are computed from raw after the day ends)")
    return out


def option_spec():
    """The rollup options every SQL writer takes (parse_options spec entries)."""
    return {"retention": ({}, check_retention), "rollup_top": (25, check_int(lo=1, hi=1000)),
            "maintain_interval": (60.0, check_float(lo=0))}


def apply_options(writer, opts):
    """Set a SQL writer's retention, retention_days, rollup_top and maintain_interval from opts."""
    ro = rollup_options(writer.name, opts)
    writer.retention = ro["retention"]
    writer.retention_days = raw_days(writer.retention)
    writer.rollup_top = ro["top"]
    writer.maintain_interval = ro["interval"]


def rollup_options(writer, opts) -> dict:
    """{retention: {key: seconds}, top, interval} from a SQL writer's parsed options.

    `retention_days` stays the raw retention; giving it together with retention.raw is an error.
    """
    retention = {k: 0.0 for k in RETENTION_KEYS}
    retention.update(opts.get("retention") or {})
    if opts.get("retention_days"):
        if (opts.get("retention") or {}).get("raw"):
            raise ConfigError("%s.retention_days" % writer, "set either retention_days or retention.raw, not both")
        retention["raw"] = opts["retention_days"] * 86400.0
    return {"retention": retention, "top": opts.get("rollup_top", 25),
            "interval": opts.get("maintain_interval", 60.0)}


def raw_days(retention) -> int:
    """Raw retention in whole days (0 = keep)."""
    return int(retention.get("raw", 0) // 86400)


def day_floor(t) -> int:
    """Start of the UTC day of t."""
    return int(t) // 86400 * 86400


def horizon(retention, now) -> int:
    """Earliest time whose raw flows and 1m, 15m and 1h rollups are all still kept (0 = everything).

    A bucket before it can no longer be recomputed: doing so would replace good rollups with
    the few flows that happen to be left.
    """
    h = 0
    if retention.get("raw"):
        h = day_floor(now) - raw_days(retention) * 86400
    # 15m and 1h too: the 1h and 1d top-N lists are summed from them.
    for res in ("1m", "15m", "1h"):
        if retention.get(res):
            h = max(h, day_floor(now - retention[res]) + 86400)
    return h


def partition_of(res, t, top=False):
    """(name, lo, hi) of the PostgreSQL partition of rollup[_top]_<res> holding bucket t.

    1m by UTC day, 15m and 1h by month, 1d by year.
    """
    d = dt.datetime.fromtimestamp(int(t), dt.timezone.utc)
    if res == "1m":
        lo = dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc)
        hi, suffix = lo + dt.timedelta(days=1), lo.strftime("%Y%m%d")
    elif res in ("15m", "1h"):
        lo = dt.datetime(d.year, d.month, 1, tzinfo=dt.timezone.utc)
        hi = dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=dt.timezone.utc)
        suffix = lo.strftime("%Y%m")
    else:
        lo = dt.datetime(d.year, 1, 1, tzinfo=dt.timezone.utc)
        hi, suffix = dt.datetime(d.year + 1, 1, 1, tzinfo=dt.timezone.utc), lo.strftime("%Y")
    name = "rollup_%s%s_p%s" % ("top_" if top else "", res, suffix)
    return name, int((lo - _EPOCH).total_seconds()), int((hi - _EPOCH).total_seconds())


def period_of_partition(name):
    """(table, lo, hi) of a rollup partition name made by partition_of, or None."""
    m = re.match(r"^(rollup_(?:top_)?(1m|15m|1h|1d))_p(\d{4,8})$", name)
    if not m:
        return None
    digits, res = m.group(3), m.group(2)
    fmt = {8: "%Y%m%d", 6: "%Y%m", 4: "%Y"}.get(len(digits))
    if fmt is None:
        return None
    start = dt.datetime.strptime(digits, fmt).replace(tzinfo=dt.timezone.utc)
    pname, lo, hi = partition_of(res, (start - _EPOCH).total_seconds(), top="_top_" in name)
    return (m.group(1), lo, hi) if pname == name else None


def new_summary() -> dict:
    """An empty maintenance summary (what maintain() and apply_retention() report).

    more: work was left for the next call (a deadline ended this one); lag: seconds the rollups
    are behind what they could already show (0 when caught up, see rollup_lag()).
    """
    return {"dirty": 0, "skipped": 0, "buckets": {r: 0 for r in RESOLUTIONS},
            "tops": {r: 0 for r in RESOLUTIONS}, "busy": False, "dropped": [], "deleted": {},
            "more": False, "lag": 0.0}


def format_summary(s) -> str:
    """One human line of a summary."""
    parts = ["dirty marks %d" % s["dirty"], "buckets " + " ".join("%s=%d" % kv for kv in s["buckets"].items()),
             "tops " + " ".join("%s=%d" % kv for kv in s["tops"].items())]
    if s["skipped"]:
        parts.append("skipped %d marks before the retention horizon" % s["skipped"])
    if s["busy"]:
        parts.append("another maintainer was running")
    if s["more"]:
        parts.append("more to do, %.0f s behind" % s["lag"])
    if s["dropped"]:
        parts.append("dropped partitions " + " ".join(s["dropped"]))
    deleted = {k: v for k, v in s["deleted"].items() if v}
    if deleted:
        parts.append("deleted rows " + " ".join("%s=%d" % kv for kv in deleted.items()))
    return "; ".join(parts)
