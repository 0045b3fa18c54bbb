"""InfluxDB writer: per-interval traffic totals (bytes, packets, flows) as line protocol.

Raw flows belong in PostgreSQL; InfluxDB gets time series for Grafana with bounded cardinality
(no tag ever holds an address or a port). Schema and the no-overwrite design: docs/influxdb.md.
In short, every batch is aggregated on its own and its points carry a timestamp offset inside
the interval that is unique per batch (`seq`, allocated and persisted by the writer), so two
batches never produce the same measurement+tags+timestamp, while a retried batch reproduces its
own points exactly and InfluxDB's overwrite makes the retry harmless.
"""
import base64
import fcntl
import http.client
import json
import logging
import os
import socket
import time
import urllib.parse
from collections import OrderedDict
from itertools import count, repeat

from myason import fsmode, kernels
from myason.errors import ConfigError
from myason.options import (REQUIRED, check_bool, check_choice, check_float, check_int, check_items, check_optional,
                            check_str, parse_options)
from myason.redact import redact_text
from myason.store import influx_retention
from myason.schema import ENRICHED_ROW_FIELDS, INDEX, ROW_FIELDS, indexes
from myason.store.base import Writer, WriterError, encode_prepared, register
from myason.store.events import detector_of, parse_time

log = logging.getLogger("myason.store.influxdb")
_I = INDEX
I_FIRST, I_LAST, I_BYTES, I_PACKETS = _I["first"], _I["last"], _I["bytes"], _I["packets"]
I_AGENT, I_IF_NAME, I_IN_IF, I_PROTO, I_IPV = (
    _I["agent"], _I["if_name"], _I["in_if"], _I["proto"], _I["ip_version"])

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
# Row fields that may become extra tags (option extra_tags): all low-cardinality. Addresses,
# ports, AS numbers and masks are refused on purpose.
TAGGABLE = ("exporter", "vlan", "out_if", "in_if", "if_name", "tos", "end_reason")
# Enrichment columns that may become tags (option enrich_tags, default direction only): each
# has a bounded set of values. Countries are opt-in: ~250 values each, multiplied by the other
# tags and by each other (src x dst), which is too many series for a default.
ENRICH_TAGGABLE = ("direction", "service", "src_country", "dst_country")
EMPTY_TAG = "-"             # line protocol forbids empty tag values
MAX_SPREAD = 1000           # a flow spanning more intervals than this is attributed to its first
PRECISIONS = {"ns": 1, "us": 1000, "ms": 1000000}
RECENT = 256                # batch ids whose seq is remembered for retries (spool claims are ~8)
_ESCAPE_TAG = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "/"})


def escape_tag(value):
    """A tag key or value in line protocol form; never empty, no control characters."""
    text = str(value)
    if not text:
        return EMPTY_TAG
    if not text.isprintable():
        # Newlines would end the line; other controls are replaced too so every server agrees.
        text = "".join(ch if ch.isprintable() else "_" for ch in text)
    # Backslashes become "/": InfluxDB 1.x rejects a trailing one and VictoriaMetrics
    # unescapes "\\" while InfluxDB keeps it, so no spelling reads back the same everywhere.
    return text.translate(_ESCAPE_TAG)


def escape_measurement(name):
    """A measurement name in line protocol form."""
    text = escape_tag(name)
    return text.replace("\\=", "=")   # '=' needs no escape in a measurement


def proto_name(proto):
    """Tag value for an IP protocol number: tcp, udp, icmp, icmpv6, else the number."""
    return PROTO_NAMES.get(proto) or str(proto)


def spread(first, last, nbytes, npackets, interval):
    """[(bucket, bytes, packets)]: a flow split over the intervals it overlaps, by time.

    Shares are taken from cumulative floors so the parts always sum exactly to the totals;
    buckets that receive nothing are left out. bucket = int(time // interval).
    """
    b0 = int(first // interval)
    b1 = int(last // interval)
    duration = last - first
    if b1 <= b0 or duration <= 0 or b1 - b0 > MAX_SPREAD:
        return [(b0, nbytes, npackets)]
    out = []
    done_b = done_p = 0
    for b in range(b0, b1 + 1):
        if b == b1:
            cum_b, cum_p = nbytes, npackets
        else:
            frac = min(1.0, ((b + 1) * interval - first) / duration)
            cum_b, cum_p = int(nbytes * frac), int(npackets * frac)
        if cum_b != done_b or cum_p != done_p:
            out.append((b, cum_b - done_b, cum_p - done_p))
        done_b, done_p = cum_b, cum_p
    return out


def aggregate(rows, interval, extra=()):
    """(totals, skipped): {(bucket, agent, iface, proto, ip_version, extras): [bytes, packets, flows]}.

    `extra` is a sequence of functions row -> tag value. Bytes and packets are split over the
    intervals a flow overlaps (spread); the flow itself counts once, in the interval of `first`.
    Rows that cannot be read are skipped and counted, never raised.
    """
    totals = {}
    skipped = 0
    no_extra = ()
    for row in rows:
        try:
            first, last = row[I_FIRST], row[I_LAST]
            nbytes, npackets = int(row[I_BYTES]), int(row[I_PACKETS])
            b0 = int(first // interval)
            single = int(last // interval) <= b0
            parts = None if single else spread(first, last, nbytes, npackets, interval)
            ex = tuple(f(row) for f in extra) if extra else no_extra
            ident = (row[I_AGENT], row[I_IF_NAME] or row[I_IN_IF], row[I_PROTO], row[I_IPV], ex)
        except (TypeError, ValueError, IndexError, OverflowError, KeyError):
            skipped += 1
            continue
        if single:
            key = (b0,) + ident
            cell = totals.get(key)
            if cell is None:
                totals[key] = [nbytes, npackets, 1]
            else:
                cell[0] += nbytes
                cell[1] += npackets
                cell[2] += 1
            continue
        for b, pb, pp in parts:
            key = (b,) + ident
            cell = totals.get(key)
            if cell is None:
                cell = totals[key] = [0, 0, 0]
            cell[0] += pb
            cell[1] += pp
        cell = totals.get((b0,) + ident)
        if cell is None:
            totals[(b0,) + ident] = [0, 0, 1]
        else:
            cell[2] += 1
    return totals, skipped


def aggregate_fast(rows, interval, extra_cols, columns=None):
    """aggregate() with the compiled kernel, for extra tags that are plain columns (row indexes).

    The same totals (tested); None when the kernels are missing or a value does not fit the
    arrays (odd types, huge counters), and the caller then uses aggregate().
    """
    k = kernels.load_or_none()
    if k is None or not rows:
        return None
    import numpy as np
    n = len(rows)
    try:
        cols = columns if columns is not None else list(zip(*rows))
        iface = [a or b for a, b in zip(cols[I_IF_NAME], cols[I_IN_IF])]
        extras = zip(*(cols[i] for i in extra_cols)) if extra_cols else repeat(())
        series = {}         # ident -> index of its first row
        ident = np.fromiter(map(series.setdefault, zip(cols[I_AGENT], iface, cols[I_PROTO], cols[I_IPV], extras),
                                count()), dtype=np.int64, count=n)
        first = np.array(cols[I_FIRST], dtype=np.float64)
        last = np.array(cols[I_LAST], dtype=np.float64)
        nbytes = np.array(cols[I_BYTES])
        npackets = np.array(cols[I_PACKETS])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if (nbytes.dtype.kind != "i" or npackets.dtype.kind != "i" or not np.isfinite(first).all()
            or not np.isfinite(last).all() or (first < 0).any() or (last < 0).any()
            or max(int(nbytes.max()), int(npackets.max())) > (1 << 62) // n or min(nbytes.min(), npackets.min()) < 0):
        return None
    b0 = first // interval
    span = np.clip(last // interval - b0, 0, MAX_SPREAD + 1)
    cap = 2 * n + int(span.sum()) + 16
    out = [np.empty(cap, dtype=np.int64) for _ in range(5)]
    m = k.spread_rows(ident, first, last, nbytes.astype(np.int64, copy=False),
                      npackets.astype(np.int64, copy=False), interval, MAX_SPREAD, *out)
    if m < 0:
        return None
    o_ident, o_bucket, o_bytes, o_packets, o_flows = (a[:m] for a in out)
    # One int64 key per (bucket, series): buckets of one batch are close together.
    lo = int(o_bucket.min())
    uniq, inv = np.unique((o_bucket - lo) * (n + 1) + o_ident, return_inverse=True)
    sums = np.zeros((3, len(uniq)), dtype=np.int64)
    for j, col in enumerate((o_bytes, o_packets, o_flows)):
        np.add.at(sums[j], inv, col)
    by_row = {i: key for key, i in series.items()}
    buckets, idents = divmod(uniq, n + 1)
    totals = {(b + lo,) + by_row[i]: [nb, npk, nf] for b, i, nb, npk, nf in zip(
        buckets.tolist(), idents.tolist(), *(x.tolist() for x in sums))}
    return totals, 0


def tag_set(ident, static_tags=(), extra_names=()):
    """',k=v,...' for one aggregation key (without its bucket), tags sorted by key."""
    agent, iface, proto, ipv, ex = ident
    tags = [("agent", agent), ("interface", iface if iface not in ("", 0, None) else ""),
            ("protocol", proto_name(proto)), ("ip_version", ipv)]
    tags.extend(static_tags)
    tags.extend(zip(extra_names, ex))
    tags.sort()
    return "".join(",%s=%s" % (escape_tag(k), escape_tag(v)) for k, v in tags)


def point_offset(seq, interval, precision="ns"):
    """Nanoseconds added to an interval's start for the batch numbered `seq` (unique per batch)."""
    unit = PRECISIONS[precision]
    return (seq % (interval * 1000000000 // unit)) * unit


def format_lines(totals, interval, offset_ns, measurement="flows", static_tags=(), extra_names=()):
    """Line protocol lines for aggregated totals; timestamp = interval start + offset_ns (ns)."""
    meas = escape_measurement(measurement)
    interval_ns = interval * 1000000000
    cache = {}
    lines = []
    for key, (nbytes, npackets, nflows) in totals.items():
        ident = key[1:]
        tags = cache.get(ident)
        if tags is None:
            tags = cache[ident] = meas + tag_set(ident, static_tags, extra_names)
        lines.append("%s bytes=%di,packets=%di,flows=%di %d" % (
            tags, nbytes, npackets, nflows, key[0] * interval_ns + offset_ns))
    return lines


def event_lines(events, interval, offset_ns, measurement="events", static_tags=()):
    """Line protocol: count of events per interval (of DetectTime), category and detector.

    An event with several categories counts once under each. Malformed events are skipped.
    """
    counts = {}
    for ev in events:
        try:
            bucket = int(parse_time(ev["DetectTime"]) // interval)
            det = detector_of(ev)
            for cat in ev["Category"]:
                key = (bucket, str(cat), det)
                counts[key] = counts.get(key, 0) + 1
        except (KeyError, TypeError, ValueError):
            continue
    meas = escape_measurement(measurement)
    interval_ns = interval * 1000000000
    lines = []
    for (bucket, cat, det), n in sorted(counts.items()):
        tags = sorted((("category", cat), ("detector", det)) + tuple(static_tags))
        lines.append("%s%s count=%di %d" % (meas, "".join(",%s=%s" % (escape_tag(k), escape_tag(v)) for k, v in tags),
                                            n, bucket * interval_ns + offset_ns))
    return lines


class SeqState:
    """Allocates each batch a number, persisted so restarts and retries never reuse or change one."""

    def __init__(self, path=None, fsync=True):
        self.path = path
        self.fsync = fsync
        self.recent = OrderedDict()
        self.next = 0
        self._lock = None

    def load(self, clock_us):
        """Read the state file (or start at clock_us without one) and lock it against sharing."""
        if self.path is None:
            # Without a file the microsecond clock keeps numbers of successive runs apart.
            self.next = max(self.next, clock_us)
            return
        if self._lock is None:
            try:
                fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise ConfigError("influxdb.state_file", str(exc)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ConfigError("influxdb.state_file", "%s is in use by another writer" % self.path) from None
            self._lock = fd
        try:
            with open(self.path, "rb") as fh:
                obj = json.loads(fh.read())
            self.next = max(self.next, int(obj["next"]))
            self.recent = OrderedDict((str(b), int(s)) for b, s in obj["recent"])
        except FileNotFoundError:
            self.next = max(self.next, clock_us)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError("influxdb.state_file", "%s is damaged: %s" % (self.path, exc)) from None

    def seq_for(self, batch_id):
        """The batch's number: the same on every retry, a new one (saved first) otherwise."""
        seq = self.recent.get(batch_id)
        if seq is not None:
            return seq
        seq = self.next
        self.next += 1
        self.recent[batch_id] = seq
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        try:
            self._save()
        except OSError as exc:
            # Nothing was sent yet; a retry reuses this number from memory.
            raise WriterError("cannot save %s: %s" % (self.path, exc)) from None
        return seq

    def _save(self):
        if self.path is None:
            return
        tmp = self.path + ".tmp"
        data = json.dumps({"next": self.next, "recent": list(self.recent.items())}).encode()
        with fsmode.open_file(tmp, "wb", fsmode.PRIVATE_FILE) as fh:
            fh.write(data)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def close(self):
        """Release the lock on the state file."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _status_error(status, text):
    # A 400 (unparsable line, field type conflict, partial write) or 413 comes back the same
    # however often the batch is retried; anything else (5xx, auth, missing database) can
    # heal while the batch waits in the spool.
    permanent = status in (400, 413, 422)
    return WriterError("InfluxDB answered HTTP %d: %s" % (status, text[:300].strip()), permanent=permanent)


def endpoint(url):
    """host:port of a URL, for messages: never the user and password a URL may carry."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        return "(unparsable URL)"
    host = "[%s]" % host if ":" in host else host
    return "%s:%d" % (host, port) if port else host


def basic_auth(username, password):
    """The Authorization header value of HTTP Basic authentication (RFC 7617, UTF-8)."""
    pair = "%s:%s" % (username, password or "")
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


class V1Transport:
    """InfluxDB 1.x HTTP API: POST /write?db=...&precision=ns, one kept-alive connection.

    Credentials travel in the Authorization header only, never in a URL (which servers and
    proxies log): username/password (also from the URL's user:password@) as HTTP Basic, which
    InfluxDB accepts since 1.0, or a token as `Token ...` (InfluxDB 1.8+ and 2.x compatibility).
    """

    def __init__(self, url, database, token=None, username=None, password=None, timeout=10.0,
                 create_database=True, rp=None):
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("influxdb.url", "must be http://host:port or https://host:port, got %r" % endpoint(url))
        if parts.username is not None and username is None:
            username = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "") if password is None else password
        if token and username:
            raise ConfigError("influxdb.token", "give either a token (token, token_file) or username and password, not both")
        self.parts = parts
        self.where = endpoint(url)
        self.database = database
        self.timeout = timeout
        self.create_database = create_database
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if token:
            self.headers["Authorization"] = "Token " + token
        elif username:
            self.headers["Authorization"] = basic_auth(username, password)
        query = {"db": database, "precision": "ns"}
        if rp:
            query["rp"] = rp
        base = parts.path.rstrip("/")
        self.write_path = base + "/write?" + urllib.parse.urlencode(query)
        self.query_path = base + "/query"
        self.conn = None

    def _request(self, method, path, body=None, headers=None):
        if self.conn is None:
            cls = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
            self.conn = cls(self.parts.hostname, self.parts.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or self.headers)
            resp = self.conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise WriterError("InfluxDB at %s unreachable: %s" % (self.where, exc)) from None
        return resp.status, text

    def open(self):
        """Check the server answers; create the database (idempotent) when asked to."""
        status, text = self._request("GET", self.parts.path.rstrip("/") + "/ping")
        if status >= 300:
            raise _status_error(status, text)
        if self.create_database:
            query = {"q": 'CREATE DATABASE "%s"' % self.database.replace('"', '\\"')}
            headers = dict(self.headers, **{"Content-Type": "application/x-www-form-urlencoded"})
            status, text = self._request("POST", self.query_path, urllib.parse.urlencode(query), headers)
            if status >= 300:
                raise _status_error(status, text)

    def send(self, lines):
        """Write line protocol lines; WriterError on failure."""
        status, text = self._request("POST", self.write_path, "\n".join(lines).encode())
        if status >= 300:
            raise _status_error(status, text)

    def query(self, q):
        """Run one InfluxQL statement (POST /query) and return the parsed answer; WriterError on error."""
        body = urllib.parse.urlencode({"q": q, "db": self.database})
        headers = dict(self.headers, **{"Content-Type": "application/x-www-form-urlencoded"})
        status, text = self._request("POST", self.query_path, body, headers)
        if status >= 300:
            raise _status_error(status, text)
        try:
            answer = json.loads(text)
        except ValueError:
            raise WriterError("InfluxDB answered %r to %s" % (text[:200], q)) from None
        errors = [r["error"] for r in answer.get("results", []) if r.get("error")] + (
            [answer["error"]] if answer.get("error") else [])
        if errors:
            # Refused statements (bad duration, no permission) do not heal by retrying.
            raise WriterError("InfluxDB refused %s: %s" % (q, errors[0]), permanent=True)
        return answer

    def close(self):
        """Drop the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class V2Transport:
    """influxdb-client's synchronous write API (InfluxDB 2.x/3.x, 1.8+, VictoriaMetrics)."""

    def __init__(self, url, bucket, org="", token=None, timeout=10.0):
        self.url, self.bucket, self.org, self.token = url, bucket, org, token
        self.where = endpoint(url)
        self.timeout = timeout
        self.client = self.api = None

    def open(self):
        """Create the client and check that the server answers /ping."""
        try:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS
        except ModuleNotFoundError:
            raise ConfigError("influxdb.api", "api 'v2' needs the influxdb-client package") from None
        if self.client is None:
            self.client = InfluxDBClient(url=self.url, token=self.token or "", org=self.org,
                                         timeout=int(self.timeout * 1000))
            self.api = self.client.write_api(write_options=SYNCHRONOUS)
        if not self.client.ping():
            raise WriterError("InfluxDB at %s does not answer /ping" % self.where)

    def send(self, lines):
        """Write line protocol lines; WriterError on failure."""
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError
        try:
            self.api.write(bucket=self.bucket, org=self.org, record="\n".join(lines), write_precision="ns")
        except ApiException as exc:
            raise _status_error(exc.status or 0, str(exc.body or exc.reason)) from None
        except (HTTPError, OSError) as exc:
            raise WriterError("InfluxDB at %s unreachable: %s" % (self.where, redact_text(str(exc)))) from None

    def close(self):
        """Close the client."""
        if self.client is not None:
            self.client.close()
            self.client = self.api = None


def _checked_later(key, value):
    # retention and downsample: validated as a whole by influx_retention.parse_options.
    return value


_NAME = check_str(allow_empty=False, expected="a non-empty string")
_PATH = check_optional(check_str(allow_empty=False, expected="a file path"))


@register
class InfluxDBWriter(Writer):
    """Writes per-interval totals by agent, interface, protocol and IP version (docs/influxdb.md)."""

    name = "influxdb"
    stores_events = True
    # Hook for computed low-cardinality tags (e.g. direction from enrichment): (tag, row -> str).
    tag_functions = ()

    SPEC = {
        "url": (REQUIRED, check_str(allow_empty=False, expected="an http(s) URL")),
        "api": ("v1", check_choice("v1", "v2")),
        "database": ("myason", _NAME),
        "create_database": (True, check_bool()),
        "username": (None, check_optional(check_str())),
        "password": (None, check_optional(check_str())),
        "bucket": ("myason", _NAME),
        "org": ("", check_str()),
        "token": (None, check_optional(check_str(allow_empty=False))),
        "token_file": (None, _PATH),
        "interval": (10, check_int(1, 86400)),
        "timeout": (10.0, check_float(lo=0, lo_open=True)),
        "precision": ("ns", check_choice(*PRECISIONS)),
        "measurement": ("flows", _NAME),
        "events_measurement": ("events", _NAME),
        "instance": (None, check_optional(_NAME)),
        "batch_lines": (5000, check_int(lo=1)),
        "extra_tags": ([], check_items(check_choice(*TAGGABLE))),
        "enrich_tags": (["direction"], check_items(check_choice(*ENRICH_TAGGABLE))),
        "state_file": (None, _PATH),
        "fsync": (True, check_bool()),
        "retention": (None, _checked_later),
        "downsample": ([], _checked_later),
    }

    def __init__(self, **options):
        super().__init__(**options)
        opt = parse_options(self.name, options, self.SPEC)
        url, timeout, instance = opt["url"], opt["timeout"], opt["instance"]
        self.api, self.interval, self.precision = opt["api"], opt["interval"], opt["precision"]
        self.measurement, self.events_measurement = opt["measurement"], opt["events_measurement"]
        self.batch_lines = opt["batch_lines"]
        extra, enrich_tags = opt["extra_tags"], opt["enrich_tags"]
        token = opt["token"]
        if opt["token_file"]:
            try:
                with open(opt["token_file"], encoding="utf-8") as fh:
                    token = fh.read().strip()
            except OSError as exc:
                raise ConfigError("%s.token_file" % self.name, str(exc)) from None
        self.static_tags = (("collector", instance or socket.gethostname()),)
        (self.extra_names, self.extra_fns, self.enriched_names,
         self.enriched_fns) = self._tag_columns(extra, enrich_tags)
        # The same tags as row indexes, for aggregate_fast (None: a tag_functions hook is set).
        self.extra_cols = self.enriched_cols = None
        if not self.tag_functions:
            self.extra_cols = indexes(*extra)
            self.enriched_cols = self.extra_cols + indexes(*enrich_tags)
        try:
            self.retention_plan = influx_retention.parse_options(opt, self.measurement, self.events_measurement)
        except ConfigError as exc:
            raise ConfigError("%s.%s" % (self.name, exc.key), str(exc)[len(exc.key) + 2:]) from None
        self.retention_changes = []     # statements the last open() ran (docs/influxdb.md, Retention)
        if self.api == "v1":
            rp = influx_retention.RAW_RP if self.retention_plan.retention is not None else None
            self.transport = V1Transport(url, opt["database"], token, opt["username"], opt["password"], timeout,
                                         opt["create_database"], rp)
        else:
            self.transport = V2Transport(url, opt["bucket"], opt["org"], token, timeout)
        self.state = SeqState(opt["state_file"], opt["fsync"])
        self.opened = False
        self._told_v2 = False
        self.skipped = 0        # rows that could not be read, over the writer's life
        self.points = 0

    def open(self):
        """Load the batch-number state and check the server; WriterError when it cannot be reached."""
        self.state.load(time.time_ns() // 1000)
        self.transport.open()
        if self.retention_plan and self.api == "v1":
            self.retention_changes = influx_retention.ensure(self.transport.query, self.transport.database,
                                                             self.retention_plan)
            for stmt in self.retention_changes:
                log.info("influxdb: %s", stmt)
        elif self.retention_plan and not self._told_v2:
            self._told_v2 = True
            log.warning("influxdb: retention/downsample are not applied with api v2: on VictoriaMetrics "
                        "retention is the server's -retentionPeriod and downsampling is Enterprise-only; "
                        "on InfluxDB 2.x set the bucket's retention (docs/influxdb.md)")
        self.opened = True

    @classmethod
    def _tag_columns(cls, extra, enrich_tags):
        # (plain names, plain functions, enriched names, enriched functions) of the extra tags;
        # enriched rows (batch format v2) add the enrich_tags.
        names = tuple(extra) + tuple(name for name, _ in cls.tag_functions)
        fns = tuple((lambda row, i=INDEX[f]: row[i]) for f in extra) + tuple(
            fn for _, fn in cls.tag_functions)
        enriched_fns = fns + tuple((lambda row, i=INDEX[f]: row[i]) for f in enrich_tags)
        return names, fns, names + tuple(enrich_tags), enriched_fns

    @classmethod
    def spool_encoder(cls, options):
        """Aggregation in the processors: the spool batch holds this batch's totals, not its rows.

        The totals are what write() would compute (same interval and tags); the writer then only
        numbers the batch, formats the lines and sends them (write_prepared).
        """
        w = cls(**dict(options, fsync=False, state_file=None))     # parses and checks the options
        interval = w.interval

        def prepare(rows, events=(), columns=None):
            is_enriched, totals, skipped = w.totals(rows, columns)
            header = {"rows": len(rows), "enriched": is_enriched, "skipped": skipped, "interval": interval,
                      "totals": [[*k[:5], list(k[5]), *v] for k, v in totals.items()], "events": list(events)}
            return encode_prepared(header, b"")
        return prepare

    def write(self, batch_id, rows, events=()):
        """Aggregate the batch (flows, and events by category and detector) and write its points.

        A retry writes the very same points again.
        """
        is_enriched, totals, skipped = self.totals(rows)
        self._send(batch_id, totals, self.enriched_names if is_enriched else self.extra_names, events, skipped)

    def totals(self, rows, columns=None):
        """(enriched?, totals, skipped) of a batch: aggregate_fast when it can, else aggregate.

        columns: the rows already transposed, when the caller has them.
        """
        is_enriched = bool(rows) and len(rows[0]) == len(ENRICHED_ROW_FIELDS)
        cols = self.enriched_cols if is_enriched else self.extra_cols
        got = aggregate_fast(rows, self.interval, cols, columns) if cols is not None else None
        if got is None:
            got = aggregate(rows, self.interval, self.enriched_fns if is_enriched else self.extra_fns)
        return (is_enriched,) + got

    def write_prepared(self, batch_id, header, payload):
        """Store a batch aggregated by spool_encoder's function: only numbering, lines and sending."""
        try:
            if header["interval"] != self.interval:
                raise ValueError("aggregated over %r s, the writer's interval is %r s" % (
                    header["interval"], self.interval))
            totals = {(t[0], t[1], t[2], t[3], t[4], tuple(t[5])): t[6:9] for t in header["totals"]}
            names = self.enriched_names if header["enriched"] else self.extra_names
            events, skipped = header.get("events", ()), int(header["skipped"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise WriterError("influxdb: prepared batch %s is damaged: %s" % (batch_id, exc),
                              permanent=True) from None
        self._send(batch_id, totals, names, events, skipped)

    def _send(self, batch_id, totals, names, events, skipped):
        if not self.opened:
            self.open()
        seq = self.state.seq_for(batch_id)
        offset = point_offset(seq, self.interval, self.precision)
        lines = format_lines(totals, self.interval, offset, self.measurement, self.static_tags, names)
        lines += event_lines(events, self.interval, offset, self.events_measurement, self.static_tags)
        for i in range(0, len(lines), self.batch_lines):
            self.transport.send(lines[i:i + self.batch_lines])
        self.skipped += skipped
        self.points += len(lines)

    def close(self):
        """Drop the connection and release the state file."""
        self.transport.close()
        self.state.close()
        self.opened = False
