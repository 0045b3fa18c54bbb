"""The writer interface, the registry of writers by name, and the spool batch format.

A writer stores batches of validated flow rows. Every batch carries a unique id (the spool file
name); a writer must make `write(batch_id, rows)` idempotent per id (e.g. record the id in the
same transaction as the rows), so a batch retried after a crash or a lost connection is stored
exactly once.
"""
import importlib

import orjson

from myason.errors import MyasonError

# Rows are in myason.schema.ROW_FIELDS or ENRICHED_ROW_FIELDS order: writers accept both
# lengths, since a spool may still hold batches of plain rows (format v1).
BATCH_VERSION = 2

# The built-in writers (goflow2 style): type name -> module, imported when first used. A module
# registers its class with @register; a NetFlow/IPFIX or ClickHouse writer is one more line here.
_BUILTIN = {
    "sqlite": "myason.store.sqlite",
    "postgresql": "myason.store.postgresql",
    "influxdb": "myason.store.influxdb",
    "jsonl": "myason.store.jsonl",
    "mentat": "myason.store.mentat",
    "notify": "myason.store.notify.writer",
}
_REGISTRY = {}


class WriterError(MyasonError):
    """A batch could not be stored now; `permanent` means retrying can never succeed."""

    def __init__(self, message, permanent=False):
        self.permanent = permanent
        super().__init__(message)


class Writer:
    """Base class: open() once, write(batch_id, rows) per batch, close() at shutdown."""

    name = ""
    # True for writers whose write() takes `events` (IDEA dicts) and stores them with the rows.
    stores_events = False

    def __init__(self, **options):
        self.options = options

    def open(self):
        """Connect and create or migrate the schema; raise WriterError when it cannot."""

    def write(self, batch_id, rows):
        """Store the rows (lists in myason.schema.ROW_FIELDS order) once, whatever the number of calls."""
        raise NotImplementedError

    @classmethod
    def spool_encoder(cls, options):
        """A function (rows, events, columns=None) -> prepared batch bytes for this writer's spool, or None.

        Writers that return one also implement write_prepared(); processors then encode their
        batches for this writer (in parallel, in processor processes) instead of as JSON.
        columns: the rows transposed once (list(zip(*rows))) for all the encoders of a batch.
        """
        return None

    def write_prepared(self, batch_id, header, payload):
        """Store a batch made by spool_encoder (header dict, payload bytes) once."""
        raise NotImplementedError

    def close(self):
        """Flush and disconnect."""


def register(cls):
    """Class decorator: make a writer available by its `name` in the collector's config."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError("writer name %r missing or taken" % cls.name)
    _REGISTRY[cls.name] = cls
    return cls


def writer_class(name):
    """The writer class registered under `name`; KeyError lists the known names."""
    if name not in _REGISTRY and name in _BUILTIN:
        # Imported on demand so that `import myason.store.base` has no side effects and a
        # writer's driver (psycopg, influxdb-client) is only needed when that writer is used.
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError("unknown writer %r (known: %s)" % (name, ", ".join(writer_names()))) from None


def writer_names():
    """Names of the built-in and registered writers: what a collector's `writers[].type` may be."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


# A spool batch already encoded for one writer by the processor (writer.spool_encoder): the magic,
# a 4-byte header length, an orjson header ({"rows": n, "events": [...], writer-specific keys}),
# then the writer's payload (e.g. PostgreSQL binary COPY data). Moving the encoding to the
# processors takes the spool's JSON round trip and the encoding off the writer's process.
PREPARED_MAGIC = b"MYPB1\n"


def encode_prepared(header, payload):
    """Spool file content for a batch prepared for one writer."""
    head = orjson.dumps(header)
    return b"".join((PREPARED_MAGIC, len(head).to_bytes(4, "big"), head, payload))


def decode_prepared(data):
    """(header, payload) of a prepared batch, or None for a plain (v1/v2) batch."""
    if not data.startswith(PREPARED_MAGIC):
        return None
    try:
        start = len(PREPARED_MAGIC) + 4
        n = int.from_bytes(data[len(PREPARED_MAGIC):start], "big")
        header = orjson.loads(data[start:start + n])
        if not isinstance(header, dict) or not isinstance(header.get("rows"), int):
            raise ValueError("bad header")
    except ValueError as exc:
        raise WriterError("damaged prepared spool batch: %s" % exc, permanent=True) from None
    return header, memoryview(data)[start + n:]


def encode_batch(rows, events=None):
    """Spool file content for a batch of rows (v1), or of rows and IDEA events (v2)."""
    if events is None:
        return orjson.dumps({"v": 1, "rows": rows})
    return orjson.dumps({"v": BATCH_VERSION, "rows": rows, "events": events})


def decode_batch(data):
    """Rows from spool file content; WriterError(permanent) when the file is damaged."""
    return decode_batch_events(data)[0]


def decode_batch_events(data):
    """(rows, events) from spool file content of any version; WriterError(permanent) if damaged.

    v1 holds plain rows (ROW_FIELDS) and no events; v2 holds enriched rows (ENRICHED_ROW_FIELDS)
    and a list of IDEA events.
    """
    try:
        obj = orjson.loads(data)
        rows = obj["rows"]
        version = obj.get("v")
        events = obj.get("events", []) if version == BATCH_VERSION else []
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise WriterError("damaged spool batch: %s" % exc, permanent=True) from None
    if version not in (1, BATCH_VERSION) or not isinstance(rows, list) or not isinstance(events, list):
        raise WriterError("unknown spool batch version", permanent=True)
    return rows, events

