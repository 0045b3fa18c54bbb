"""Stores of IDEA events for the greylist push tests, and the config files that point at them."""
import itertools

import yaml

from myason.detect.idea import build_event
from myason.store.sqlite import SqliteWriter

_batches = itertools.count()


def idea_event(source, detect_time, category="Recon.Scanning"):
    """An IDEA event with one source address (IPv4 or IPv6), detected at detect_time (Unix)."""
    return build_event(category, detect_time, (detect_time - 60, detect_time), [source], ["10.0.0.1"],
                       {"conns": 1, "flows": 1}, "test event from %s" % source, "org.example.test")


def store_events(db, events):
    """Store events in the SQLite store at db through the real writer, as one batch."""
    writer = SqliteWriter(path=str(db))
    writer.open()
    try:
        writer.write("greylist-test-%d" % next(_batches), [], list(events))
    finally:
        writer.close()


def write_collector_conf(path, db):
    """A collector config whose first SQL writer is the SQLite store at db; returns its path."""
    path.write_text(yaml.safe_dump({"writers": [{"type": "sqlite", "path": str(db)}],
                                    "spool_dir": str(path.parent / "spool")}))
    return str(path)


def write_push_conf(path, **options):
    """A greylist push config (the greylist_push section holds options); returns its path."""
    path.write_text(yaml.safe_dump({"greylist_push": options}))
    return str(path)
