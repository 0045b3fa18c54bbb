"""Grafana's query interpolation (PostgreSQL and InfluxQL), reproduced to run dashboard queries without Grafana.

Grafana expands a panel query in two steps, and so does this module:

1. The browser (templateSrv.replace) substitutes dashboard variables and the built-in scoped
   variables ($__interval, $__interval_ms, $__from, $__to, $__range_*), formatting each value
   with the datasource's function: SqlDatasource.interpolateVariable for SQL (strings quoted
   when the variable is multi-value or has "All"), InfluxDatasource.interpolateQueryExpr for
   InfluxQL (regex-escaped, several values as `(a|b)`). An "All" selection stands for every
   option unless the variable has a custom allValue, which is inserted verbatim.
2. The backend expands the remaining macros: for SQL, sqleng.Interpolate ($__interval_ms,
   $__interval, $__unixEpochFrom/To()) then the PostgreSQL macro engine ($__timeFilter,
   $__timeGroup, ...); for InfluxQL, models.Query.Build ($timeFilter, $interval, $__interval_ms,
   $__interval).

Sources this follows (grafana/grafana unless noted):
  pkg/tsdb/grafana-postgresql-datasource/macros.go (evaluateMacro), sqleng/sql_engine.go
  (Interpolate), pkg/tsdb/influxdb/models/query.go (Build, renderTimeFilter),
  packages/grafana-sql/src/datasource/SqlDatasource.ts (interpolateVariable),
  public/app/plugins/datasource/influxdb/datasource.ts (interpolateQueryExpr),
  public/app/features/templating/template_srv.ts (variableRegex, replace, getAllValue),
  packages/grafana-data/src/datetime/rangeutil.ts (calculateInterval, roundInterval,
  secondsToHms), grafana-plugin-sdk-go backend/gtime/gtime.go (ParseInterval, FormatInterval).

Data links (expand_link) follow public/app/features/panel/panellinks/link_srv.ts
(getDataLinkUIModel: the URL is interpolated with the "uriencode" format unless a variable names
its own) and the format registry's uriencode (encodeURI, then ! ' ( ) * percent-encoded) and
date formats (${__from:date:iso} -> toISOString(), milliseconds and "Z").
"""
from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

Value = Union[str, Sequence[str]]
ALL = "$__all"
DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS = 86400000, 3600000, 60000, 1000
YEAR_MS = 365 * DAY_MS

# template_srv.ts variableRegex: $var, [[var]] / [[var:fmt]], ${var}, ${var.field}, ${var:fmt}.
_VARIABLE_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}", re.ASCII)
_MACRO_RE = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")      # macros.go sExpr
_REGEX_CHARS = re.compile(r"[\\^$*+?.()|\[\]{}/]")               # grafana-data escapeRegex
_JS_FLOAT = re.compile(r"^\s*[+-]?(Infinity|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
# datasource.ts: a regex literal after =~ or !~ (used to decide whether a single value is escaped).
_INFLUX_REGEX_LITERAL = re.compile(r"(\s*(=|!)~\s*)/((?![*+?])(?:[^\r\n\[/\\]|\\.|\[(?:[^\r\n\]\\]|\\.)*\])+)/")
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# rangeutil.ts roundInterval: (upper bound exclusive, rounded interval), milliseconds.
_ROUND_STEPS = (
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
    (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
    (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
    (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
    (16200000, 10800000), (32400000, 21600000), (86400000, 43200000), (604800000, 86400000),
    (1814400000, 604800000), (3628800000, 2592000000))
_HMS_UNITS = {"y": 31536000, "M": 2592000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


class GrafanaError(ValueError):
    """A macro or interval Grafana itself would refuse."""


@dataclass
class Variable:
    """A dashboard variable with its current selection (a value, a list of values, or ALL)."""

    name: str
    current: Value
    multi: bool = False
    include_all: bool = False
    all_value: Optional[str] = None
    options: Sequence[str] = field(default_factory=tuple)

    def resolved(self) -> Value:
        """The value Grafana formats: ALL becomes every option (template_srv getAllValue)."""
        if self.current == ALL or (isinstance(self.current, (list, tuple)) and ALL in self.current):
            return list(self.options)
        return self.current


# --- time and intervals -------------------------------------------------------------------

def round_interval(ms: float) -> int:
    """rangeutil.roundInterval: the "nice" interval (ms) Grafana picks for a raw interval."""
    for bound, value in _ROUND_STEPS:
        if ms < bound:
            return value
    return YEAR_MS


def interval_to_ms(text: str) -> float:
    """rangeutil.intervalToMs: "10s", "1m", "1h", "500ms" (a bare non-zero number is seconds)."""
    text = str(text).strip()
    try:
        if float(text):
            return int(float(text)) * 1000.0
    except ValueError:
        pass
    m = re.match(r"^(-?\d+(?:\.\d+)?)(ms|[Mwdhmsy])", text)
    if not m:
        raise GrafanaError("invalid interval %r" % text)
    return _HMS_UNITS[m.group(2)] * 1000 * int(float(m.group(1)))


def seconds_to_hms(seconds: float) -> str:
    """rangeutil.secondsToHms: the largest whole unit only, as in "1m", "2h", "7d"."""
    rest = seconds % 31536000
    for n, unit in ((seconds // 31536000, "y"), (rest // 86400, "d"), (rest % 86400 // 3600, "h"),
                    (rest % 86400 % 3600 // 60, "m"), (rest % 86400 % 3600 % 60 // 1, "s")):
        if n:
            return "%d%s" % (n, unit)
    ms = int(seconds * 1000)
    return "%dms" % ms if ms else "less than a millisecond"


def calculate_interval(start: dt.datetime, end: dt.datetime, max_data_points: int = 1000,
                       min_interval: Optional[str] = None) -> Tuple[str, int]:
    """rangeutil.calculateInterval: ($__interval text, $__interval_ms) for a panel's range."""
    low = interval_to_ms(min_interval) if min_interval else 1
    ms = round_interval((end - start).total_seconds() * 1000 / max_data_points)
    ms = max(ms, int(low))
    return seconds_to_hms(ms / 1000), ms


def format_interval(ms: int) -> str:
    """gtime.FormatInterval: the backend's text for an interval (1y, 7d, 2h, 1m, 10s, 500ms)."""
    for unit, size in (("y", YEAR_MS), ("d", DAY_MS), ("h", HOUR_MS), ("m", MINUTE_MS), ("s", SECOND_MS)):
        if ms >= size:
            return "%d%s" % (ms // size, unit)
    return "%dms" % ms if ms >= 1 else "1ms"


def parse_interval(text: str, now: Optional[dt.datetime] = None) -> float:
    """gtime.ParseInterval in seconds: Go durations ("1h30m", "90s") or N d/w/M/y from now (UTC)."""
    text = text.strip()
    m = re.fullmatch(r"(\d+)([dwMy])", text)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        now = (now or dt.datetime.now(dt.timezone.utc)).replace(tzinfo=None)
        if unit in "dw":
            return n * (7 if unit == "w" else 1) * 86400.0
        months = n if unit == "M" else 12 * n
        y, mo = divmod(now.month - 1 + months, 12)
        try:
            later = now.replace(year=now.year + y, month=mo + 1)
        except ValueError:      # Go's AddDate normalises Feb 30 to Mar 2; close enough for a day
            later = now.replace(year=now.year + y, month=mo + 2, day=1)
        return (later - now).total_seconds()
    pos, total = 0, 0.0
    for part in _GO_DURATION.finditer(text):
        if part.start() != pos:
            break
        total += float(part.group(1)) * _GO_UNITS[part.group(2)]
        pos = part.end()
    if pos != len(text) or not text:
        raise GrafanaError("error parsing interval %s" % text)
    return total


def go_float(x: float) -> str:
    """Go's %v of a float64 (shortest digits; exponent form from 1e+06 or below 1e-04)."""
    if x == 0:
        return "0"
    d = Decimal(repr(float(x))).normalize()
    sign, digits, exp = d.as_tuple()
    point = len(digits) + exp - 1
    text = "".join(map(str, digits))
    if point < -4 or point >= 6:
        mant = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return "%s%se%s%02d" % ("-" if sign else "", mant, "-" if point < 0 else "+", abs(point))
    return ("-" if sign else "") + format(abs(d), "f")


def rfc3339nano(t: dt.datetime) -> str:
    """Go's time.RFC3339Nano of t in UTC: trailing zeros of the fraction dropped, "Z" suffix."""
    t = t.astimezone(dt.timezone.utc)
    frac = ("%06d" % t.microsecond).rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ("." + frac if frac else "") + "Z"


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


# --- variable formatting ------------------------------------------------------------------

def escape_regex(value: str) -> str:
    """grafana-data escapeRegex: backslash before \\ ^ $ * + ? . ( ) | [ ] { } /."""
    return _REGEX_CHARS.sub(lambda m: "\\" + m.group(0), value)


def _listify(value: Value) -> List[str]:
    return [value] if isinstance(value, str) else list(value)


def format_value(value: Value, fmt: str) -> str:
    """An explicit ${var:fmt} format from Grafana's format registry (raw, regex, pipe, csv, ...)."""
    values = _listify(value)
    if fmt == "regex":
        if isinstance(value, str):
            return escape_regex(value)
        escaped = [escape_regex(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(%s)" % "|".join(escaped)
    if fmt == "pipe":
        return "|".join(values)
    if fmt in ("csv", "raw", "text"):
        return ",".join(values)
    if fmt == "singlequote":
        return ",".join("'%s'" % v.replace("'", "\\'") for v in values)
    if fmt == "doublequote":
        return ",".join('"%s"' % v.replace('"', '\\"') for v in values)
    if fmt == "sqlstring":
        return ",".join("'%s'" % v.replace("'", "''") for v in values)
    if fmt == "glob":
        return "{%s}" % ",".join(values) if len(values) > 1 else ",".join(values)
    if fmt == "uriencode":
        return uri_encode("{%s}" % ",".join(values) if not isinstance(value, str) else value)
    raise GrafanaError("unknown variable format %r" % fmt)


def uri_encode(text: str) -> str:
    """encodeURIStrict of the format registry: encodeURI, plus ! ' ( ) * percent-encoded."""
    return urllib.parse.quote(text, safe=";,/?:@&=+$-_.~#")


def format_date(ms: int, arg: str) -> str:
    """The "date" format of ${__from:date:...} / ${__to:date:...}: iso, seconds, or (default) ms."""
    if arg == "iso":
        t = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ms % 1000)
    if arg == "seconds":
        return str(ms // 1000)
    if arg in ("", "ms"):
        return str(ms)
    raise GrafanaError("date format %r is not reproduced here" % arg)


def sql_value(value: Value, variable: Variable) -> str:
    """SqlDatasource.interpolateVariable (PostgreSQL quoteLiteral = single quotes doubled)."""
    if isinstance(value, str):
        if variable.multi or variable.include_all:
            return "'%s'" % value.replace("'", "''")
        return value.replace("'", "''")
    return ",".join("'%s'" % v.replace("'", "''") for v in value)


def _js_number(value: str) -> bool:
    return bool(_JS_FLOAT.match(value))


def influx_value(value: Value, variable: Variable, query: str) -> str:
    """InfluxDatasource.interpolateQueryExpr (InfluxQL): regex-escape where a regex needs it."""
    if isinstance(value, str) and _js_number(value):
        return value
    if variable.multi:
        if isinstance(value, str):
            return escape_regex(value)
        return "(%s)" % "|".join(escape_regex(v) for v in value)
    inside = re.compile(r"/(?:\^)?(.*)(\$%s)(.*)(?:\$)?/" % re.escape(variable.name))
    if any(inside.search(m.group(0)) for m in _INFLUX_REGEX_LITERAL.finditer(query)):
        if isinstance(value, str):
            return escape_regex(value)
        return "(%s)" % "|".join(escape_regex(v) for v in value)
    return value if isinstance(value, str) else ",".join(value)


def replace_variables(text: str, variables: Dict[str, Variable], scoped: Dict[str, str], formatter) -> str:
    """templateSrv.replace: substitute variables; unknown names stay as written (macros pass through).

    formatter(value, variable) formats dashboard variables; scoped (built-in) values are inserted
    as they are, since the datasources' formatters return a plain single value unchanged.
    """
    def one(m):
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name in scoped:
            return str(scoped[name])
        var = variables.get(name)
        if var is None:
            return m.group(0)
        if var.current == ALL and var.all_value is not None and fmt not in ("text", "percentencode"):
            # A custom "All" value is inserted verbatim (template_srv skips formatting).
            return replace_variables(var.all_value, variables, scoped, formatter)
        value = var.resolved()
        if fmt:
            return format_value(value, fmt)
        return formatter(value, var)
    return _VARIABLE_RE.sub(one, text)


def _scoped(start, end, interval_text, interval_ms) -> Dict[str, str]:
    span = end - start
    return {"__interval": interval_text, "__interval_ms": str(interval_ms), "__from": str(_ms(start)),
            "__to": str(_ms(end)), "__range_ms": str(int(span.total_seconds() * 1000)),
            "__range_s": str(int(span.total_seconds())), "__range": seconds_to_hms(span.total_seconds())}


# --- PostgreSQL ---------------------------------------------------------------------------

def postgres_macro(name: str, args: List[str], start: dt.datetime, end: dt.datetime) -> str:
    """One macro of macros.go evaluateMacro (without TimescaleDB)."""
    frm, to = rfc3339nano(start), rfc3339nano(end)
    if name in ("__time", "__timeEpoch", "__timeFilter", "__unixEpochFilter", "__unixEpochNanoFilter") \
            and (not args or args == [""]):
        raise GrafanaError("missing time column argument for macro %s" % name)
    if name == "__time":
        return '%s AS "time"' % args[0]
    if name == "__timeEpoch":
        return 'extract(epoch from %s) as "time"' % args[0]
    if name == "__timeFilter":
        return "%s BETWEEN '%s' AND '%s'" % (args[0], frm, to)
    if name == "__timeFrom":
        return "'%s'" % frm
    if name == "__timeTo":
        return "'%s'" % to
    if name in ("__timeGroup", "__timeGroupAlias", "__unixEpochGroup", "__unixEpochGroupAlias"):
        if len(args) < 2:
            raise GrafanaError("macro %s needs time column and interval and optional fill value" % name)
        secs = go_float(parse_interval(args[1].strip("'")))
        expr = ("floor(extract(epoch from %s)/%s)*%s" if "time" in name else "floor((%s)/%s)*%s") % (
            args[0], secs, secs)
        return expr + (' AS "time"' if name.endswith("Alias") else "")
    if name == "__unixEpochFilter":
        return "%s >= %d AND %s <= %d" % (args[0], int(start.timestamp()), args[0], int(end.timestamp()))
    if name == "__unixEpochNanoFilter":
        return "%s >= %d AND %s <= %d" % (args[0], _ms(start) * 1000000, args[0], _ms(end) * 1000000)
    if name == "__unixEpochNanoFrom":
        return str(_ms(start) * 1000000)
    if name == "__unixEpochNanoTo":
        return str(_ms(end) * 1000000)
    raise GrafanaError("unknown macro %r" % name)


def expand_sql(sql: str, start: dt.datetime, end: dt.datetime, variables: Optional[Dict[str, Variable]] = None,
               max_data_points: int = 1000, min_interval: str = "1m") -> str:
    """A PostgreSQL panel or variable query as Grafana sends it to the server."""
    text, ms = calculate_interval(start, end, max_data_points, min_interval)
    sql = replace_variables(sql, variables or {}, _scoped(start, end, text, ms), sql_value)
    # sqleng.Interpolate (what the browser left), then the macro engine.
    sql = sql.replace("$__interval_ms", str(ms)).replace("$__interval", format_interval(ms))
    sql = sql.replace("$__unixEpochFrom()", str(int(start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(end.timestamp())))

    def one(m):
        name, args = m.group(1), [a.strip(" ") for a in m.group(2).split(",")]
        # macros.go: "$__timeGroup(...)," followed by a comma is the pre-5.3 aliasing form.
        if name == "__timeGroup" and sql[m.end():m.end() + 1] == ",":
            name = "__timeGroupAlias"
        return postgres_macro(name, args, start, end)
    return _MACRO_RE.sub(one, sql)


# --- InfluxQL -----------------------------------------------------------------------------

def expand_influxql(query: str, start: dt.datetime, end: dt.datetime,
                    variables: Optional[Dict[str, Variable]] = None, max_data_points: int = 1000,
                    min_interval: str = "10s") -> str:
    """An InfluxQL (raw mode) panel or variable query as Grafana sends it to InfluxDB 1.x."""
    text, ms = calculate_interval(start, end, max_data_points, min_interval)
    query = replace_variables(query, variables or {}, _scoped(start, end, text, ms),
                              lambda value, var, q=query: influx_value(value, var, q))
    interval = format_interval(ms)
    # models/query.go Build: $timeFilter, then $interval, $__interval_ms, $__interval.
    query = query.replace("$timeFilter", "time >= %dms and time <= %dms" % (_ms(start), _ms(end)))
    query = query.replace("$interval", interval)
    return query.replace("$__interval_ms", str(ms)).replace("$__interval", interval)


# --- data links ---------------------------------------------------------------------------

def expand_link(url: str, variables: Dict[str, Variable], fields: Dict[str, str], start: dt.datetime,
                end: dt.datetime) -> str:
    """A data link's URL as Grafana opens it for a clicked row (`fields`: the row's formatted values)."""
    def one(m):
        name = m.group(1) or m.group(2) or m.group(4)
        path, fmt = m.group(5), m.group(3) or m.group(6)
        if name in ("__from", "__to"):
            ms = _ms(start if name == "__from" else end)
            if fmt and fmt.startswith("date"):
                return format_date(ms, fmt[5:])
            return format_value(str(ms), fmt) if fmt else uri_encode(str(ms))
        if name == "__data":
            key = re.fullmatch(r'fields(?:\.(.+)|\["(.+)"\])', path or "")
            if not key:
                raise GrafanaError("unsupported data reference %r" % m.group(0))
            value: Value = str(fields[key.group(1) or key.group(2)])
        elif name in variables:
            var = variables[name]
            if var.current == ALL and var.all_value is not None:
                return var.all_value
            value = var.resolved()
        else:
            return m.group(0)
        return format_value(value, fmt or "uriencode")
    return _VARIABLE_RE.sub(one, url.replace("\n", ""))


# --- dashboards ---------------------------------------------------------------------------

def iter_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel of a dashboard, including panels nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        for inner in panel.get("panels", []) or []:
            yield inner


def variable_from_model(model: dict, options: Iterable[str], current: Optional[Value] = None) -> Variable:
    """A Variable from a dashboard's templating entry and its option values.

    Without `current`: "All" when the variable offers it, else the first option.
    """
    opts = [str(o) for o in options]
    include_all = bool(model.get("includeAll"))
    if current is None:
        current = ALL if include_all else (opts[0] if opts else "")
    return Variable(name=model["name"], current=current, multi=bool(model.get("multi")), include_all=include_all,
                    all_value=model.get("allValue") or None, options=opts)
