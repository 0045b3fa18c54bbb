"""InfluxDB writer: per-interval traffic totals (bytes, packets, flows) as line protocol.

Raw flows belong in PostgreSQL; InfluxDB gets time series for Grafana with bounded cardinality
(no tag ever holds an address or a port). Schema and the no-overwrite design: docs/influxdb.md.
In short, every batch is aggregated on its own and its points carry a timestamp offset inside
the interval that is unique per batch (`seq`, allocated and persisted by the writer), so two
batches never produce the same measurement+tags+timestamp, while a retried batch reproduces its
own points exactly and InfluxDB's overwrite makes the retry harmless.

The package's public face; its modules, one job each: lineproto (escaping, tag sets, lines),
aggregate (per-interval totals, Python and compiled), state (batch numbers on disk), transport
(HTTP v1 and v2), retention (retention policies and downsampling), writer (InfluxDBWriter).
"""
from myason.store.influxdb.aggregate import MAX_SPREAD, aggregate, aggregate_fast, spread
from myason.store.influxdb.lineproto import (EMPTY_TAG, PRECISIONS, PROTO_NAMES, escape_measurement, escape_tag,
                                             event_lines, format_lines, point_offset, proto_name, tag_set)
from myason.store.influxdb.state import RECENT, SeqState
from myason.store.influxdb.transport import V1Transport, V2Transport, basic_auth, endpoint, status_error
from myason.store.influxdb.writer import ENRICH_TAGGABLE, TAGGABLE, InfluxDBWriter

__all__ = ["ENRICH_TAGGABLE", "EMPTY_TAG", "InfluxDBWriter", "MAX_SPREAD", "PRECISIONS", "PROTO_NAMES", "RECENT",
           "SeqState", "TAGGABLE", "V1Transport", "V2Transport", "aggregate", "aggregate_fast", "basic_auth",
           "endpoint", "escape_measurement", "escape_tag", "event_lines", "format_lines", "point_offset",
           "proto_name", "spread", "status_error", "tag_set"]
