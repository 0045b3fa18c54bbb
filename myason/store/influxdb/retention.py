"""InfluxDB 1.x retention policies and downsampling continuous queries for the influxdb writer.

Options (writer `influxdb`, api v1; docs/influxdb.md):
  retention: 30d                  the raw points' retention policy `rp_raw`, made the database's
                                  DEFAULT so Grafana's `FROM "flows"` reads it (0: keep forever)
  downsample: [{every: 1h, retention: 1y, for: 2h}, ...]
                                  per entry a policy `rp_<every>` and, per measurement, a continuous
                                  query `cq_<measurement>_<every>` summing the fields per interval
                                  and tag set (GROUP BY time(every), *) from the raw policy.
`ensure_retention()` runs at the writer's open(): it reads SHOW RETENTION POLICIES / SHOW CONTINUOUS
QUERIES and issues only the statements that change something, so a second open() is a no-op.
VictoriaMetrics (api v2) has neither: retention is its -retentionPeriod flag and downsampling
an Enterprise feature, so the writer logs one line and skips this.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from myason.errors import ConfigError
from myason.store.rollup import parse_duration

RAW_RP = "rp_raw"
MIN_RP = 3600              # InfluxDB refuses retention policies shorter than one hour
# Fields summed by the continuous queries, per measurement kind (docs/influxdb.md).
FLOW_FIELDS = ("bytes", "packets", "flows")
EVENT_FIELDS = ("count",)
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns)")
_GO_UNIT = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class Downsample:
    """One downsampling level: interval, how long its points are kept, how far back it resamples."""

    every: int
    retention: int          # seconds, 0 = forever
    resample_for: int

    @property
    def rp(self) -> str:
        """Name of the level's retention policy, e.g. rp_1h."""
        return "rp_" + influx_duration(self.every)


@dataclass(frozen=True)
class Plan:
    """What the writer maintains: the raw policy (None: the server's default) and the levels."""

    retention: Optional[int]
    levels: Tuple[Downsample, ...]
    measurements: Tuple[Tuple[str, Tuple[str, ...]], ...]

    def __bool__(self):
        return self.retention is not None or bool(self.levels)


def influx_duration(seconds: int) -> str:
    """An InfluxQL duration literal: INF for 0, else the largest whole unit (w, d, h, m, s)."""
    if not seconds:
        return "INF"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return "%d%s" % (seconds // size, unit)
    return "%ds" % seconds


def go_seconds(text: str) -> float:
    """Seconds of a Go duration as SHOW RETENTION POLICIES prints it ("720h0m0s"; "0s" = forever)."""
    return sum(float(n) * _GO_UNIT[u] for n, u in _GO_PART.findall(text))


def _seconds(key, value, allow_zero=True) -> int:
    if value in (0, "0") and allow_zero:
        return 0
    secs = parse_duration(key, value)
    if secs != int(secs) or secs < 1:
        raise ConfigError(key, "must be whole seconds, got %r" % (value,))
    return int(secs)


def parse_retention(options: dict, measurement="flows", events_measurement="events") -> Plan:
    """The Plan for the writer options `retention` and `downsample`; ConfigError naming a bad key."""
    retention = None
    if options.get("retention") is not None:
        retention = _seconds("retention", options["retention"])
        if retention and retention < MIN_RP:
            raise ConfigError("retention", "InfluxDB keeps data at least 1h, got %r" % options["retention"])
    raw = options.get("downsample") or []
    if not isinstance(raw, (list, tuple)):
        raise ConfigError("downsample", "must be a list of {every, retention[, for]}")
    levels = []
    for i, item in enumerate(raw):
        key = "downsample[%d]" % i
        if not isinstance(item, dict) or "every" not in item or set(item) - {"every", "retention", "for"}:
            raise ConfigError(key, "must be {every: 1h, retention: 1y[, for: 2h]}, got %r" % (item,))
        every = _seconds(key + ".every", item["every"], allow_zero=False)
        keep = _seconds(key + ".retention", item.get("retention", 0))
        if keep and keep < max(MIN_RP, every):
            raise ConfigError(key + ".retention", "must be at least 1h and at least `every`")
        again = 2 * every if item.get("for") is None else _seconds(key + ".for", item["for"], allow_zero=False)
        if again < every:
            raise ConfigError(key + ".for", "must be at least `every` (%ds)" % every)
        if retention and retention < again:
            # The continuous query re-reads `for` of raw points; they must still be there.
            raise ConfigError(key + ".for", "exceeds the raw retention (%ds)" % retention)
        levels.append(Downsample(every, keep, again))
    if len({lv.rp for lv in levels}) != len(levels):
        raise ConfigError("downsample", "two levels with the same `every`")
    return Plan(retention, tuple(levels), ((measurement, FLOW_FIELDS), (events_measurement, EVENT_FIELDS)))


def ident(name: str) -> str:
    """A double-quoted InfluxQL identifier."""
    return '"%s"' % name.replace("\\", "\\\\").replace('"', '\\"')


def cq_name(measurement: str, level: Downsample) -> str:
    """Name of the continuous query downsampling `measurement` into `level`."""
    return "cq_%s_%s" % (re.sub(r"\W", "_", measurement), influx_duration(level.every))


def cq_statement(db: str, measurement: str, fields: Sequence[str], level: Downsample, source_rp=None) -> str:
    """CREATE CONTINUOUS QUERY summing `fields` of raw points per level interval and tag set."""
    source = "%s.%s.%s" % (ident(db), ident(source_rp), ident(measurement)) if source_rp else \
        "%s..%s" % (ident(db), ident(measurement))
    sums = ", ".join("sum(%s) AS %s" % (ident(f), ident(f)) for f in fields)
    every = influx_duration(level.every)
    return ("CREATE CONTINUOUS QUERY %s ON %s RESAMPLE EVERY %s FOR %s BEGIN SELECT %s INTO %s.%s.%s FROM %s "
            "GROUP BY time(%s), * END" % (
                ident(cq_name(measurement, level)), ident(db), every, influx_duration(level.resample_for), sums,
                ident(db), ident(level.rp), ident(measurement), source, every))


def _normal(statement: str) -> str:
    # InfluxDB stores a continuous query re-printed, quoting identifiers only where needed.
    return " ".join(statement.replace('"', "").split()).lower()


def statements(db: str, plan: Plan, policies: dict, queries: dict) -> List[str]:
    """The statements that bring the server to `plan`, given what SHOW ... returned.

    policies: {name: (duration seconds, default?)}; queries: {name: stored CREATE statement}.
    """
    out = []
    wanted = []
    if plan.retention is not None:
        wanted.append((RAW_RP, plan.retention, True))
    wanted += [(lv.rp, lv.retention, False) for lv in plan.levels]
    for name, secs, default in wanted:
        have = policies.get(name)
        spec = "DURATION %s REPLICATION 1%s" % (influx_duration(secs), " DEFAULT" if default else "")
        if have is None:
            out.append("CREATE RETENTION POLICY %s ON %s %s" % (ident(name), ident(db), spec))
        elif have[0] != secs or (default and not have[1]):
            out.append("ALTER RETENTION POLICY %s ON %s %s" % (ident(name), ident(db), spec))
    source = RAW_RP if plan.retention is not None else None
    for lv in plan.levels:
        for meas, fields in plan.measurements:
            name, create = cq_name(meas, lv), cq_statement(db, meas, fields, lv, source)
            if name in queries and _normal(queries[name]) == _normal(create):
                continue
            if name in queries:     # a continuous query cannot be altered: replace it
                out.append("DROP CONTINUOUS QUERY %s ON %s" % (ident(name), ident(db)))
            out.append(create)
    return out


def read_state(query, db: str) -> Tuple[dict, dict]:
    """({policy: (seconds, default)}, {cq name: statement}) of `db`, via query(q) -> /query JSON."""
    policies, queries = {}, {}
    for series in _series(query("SHOW RETENTION POLICIES ON %s" % ident(db))):
        cols = series["columns"]
        for row in series.get("values") or []:
            r = dict(zip(cols, row))
            policies[r["name"]] = (int(go_seconds(r["duration"])), bool(r["default"]))
    for series in _series(query("SHOW CONTINUOUS QUERIES")):
        if series.get("name") == db:
            for name, text in series.get("values") or []:
                queries[name] = text
    return policies, queries


def _series(answer) -> list:
    return [s for r in answer.get("results", []) for s in r.get("series", []) or []]


def ensure_retention(query, db: str, plan: Plan, attempts: int = 3) -> List[str]:
    """Create or alter what `plan` needs on the server; returns the statements it ran ([]: nothing to do).

    Several writer threads or collectors may do this at once: a statement refused with "already
    exists" means another one got there first, so the state is read again and the rest redone.
    """
    done = []
    for attempt in range(attempts):
        todo = statements(db, plan, *read_state(query, db)) if plan else []
        try:
            for stmt in todo:
                query(stmt)
                done.append(stmt)
            return done
        except Exception as exc:
            if "already exists" not in str(exc) or attempt == attempts - 1:
                raise
    return done
