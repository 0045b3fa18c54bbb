"""The InfluxDB writer: options, tag columns, batches prepared by the processors, exactly-once retries."""
import logging
import socket
import time

from myason.errors import ConfigError
from myason.options import (REQUIRED, check_bool, check_choice, check_float, check_int, check_items, check_optional,
                            check_str, parse_options)
from myason.schema import ENRICHED_ROW_FIELDS, INDEX, indexes
from myason.store.base import Writer, WriterError, encode_prepared, register
from myason.store.influxdb.aggregate import aggregate, aggregate_fast
from myason.store.influxdb.lineproto import PRECISIONS, event_lines, format_lines, point_offset
from myason.store.influxdb.state import SeqState
from myason.store.influxdb.transport import V1Transport, V2Transport
from myason.store.influxdb.retention import RAW_RP, ensure_retention, parse_retention

log = logging.getLogger("myason.store.influxdb")

# Row fields that may become extra tags (option extra_tags): all low-cardinality. Addresses,
# ports, AS numbers and masks are refused on purpose.
TAGGABLE = ("exporter", "vlan", "out_if", "in_if", "if_name", "tos", "end_reason")
# Enrichment columns that may become tags (option enrich_tags, default direction only): each
# has a bounded set of values. Countries are opt-in: ~250 values each, multiplied by the other
# tags and by each other (src x dst), which is too many series for a default.
ENRICH_TAGGABLE = ("direction", "service", "src_country", "dst_country")


def _checked_later(key, value):
    # retention and downsample: validated as a whole by retention.parse_retention.
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
            self.retention_plan = parse_retention(opt, self.measurement, self.events_measurement)
        except ConfigError as exc:
            raise ConfigError("%s.%s" % (self.name, exc.key), str(exc)[len(exc.key) + 2:]) from None
        self.retention_changes = []     # statements the last open() ran (docs/influxdb.md, Retention)
        if self.api == "v1":
            rp = RAW_RP if self.retention_plan.retention is not None else None
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
            self.retention_changes = ensure_retention(self.transport.query, self.transport.database,
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
