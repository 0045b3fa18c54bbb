"""Batch format v2, event columns, SQLite events, greylist and the collector's enrich/detect config."""
import sqlite3

import pytest

from myason.collector.config import load_collector_config
from myason.errors import ConfigError
from myason.store.base import WriterError, decode_batch, decode_batch_events, encode_batch
from myason.store.events import EVENT_COLUMNS, detector_of, event_columns, parse_time
from myason.store.query import fetch_events, format_greylist, greylist, parse_duration
from myason.store.sqlite import SqliteWriter
from myason.store.sqlite import event_params as sqlite_params
from tests.support.rows import numbered_rows


def ev(i, cat="Recon.Scanning", src="203.0.113.66", t="2026-01-02T03:04:05Z"):
    return {"Format": "IDEA0", "ID": "00000000-0000-4000-8000-%012d" % i, "DetectTime": t,
            "EventTime": "2026-01-02T03:00:00Z", "Category": [cat],
            "Source": [{"IP4": [src], "Proto": ["tcp"]}],
            "Target": [{"IP4": ["10.0.0.2", "10.0.0.1"], "IP6": ["2001:db8::1"], "Port": [22, 22],
                        "Proto": ["tcp", "ssh"]}],
            "Node": [{"Name": "org.example.test"}], "Description": "Horizontal scan: x"}


def test_batch_v1_and_v2_round_trip():
    rows = [[1, 2], [3, 4]]
    assert decode_batch(encode_batch(rows)) == rows
    assert decode_batch_events(encode_batch(rows)) == (rows, [])
    assert decode_batch_events(encode_batch(rows, [ev(1)])) == (rows, [ev(1)])
    assert decode_batch(encode_batch(rows, [ev(1)])) == rows
    for bad in (b'{"v": 3, "rows": []}', b'{"v": 2, "rows": [], "events": 5}', b"[]", b"x"):
        with pytest.raises(WriterError) as exc:
            decode_batch_events(bad)
        assert exc.value.permanent


def test_event_columns_are_sorted_unique_lists():
    cols = event_columns(ev(1))
    assert cols["target_ip"] == ["10.0.0.1", "10.0.0.2", "2001:db8::1"]
    assert cols["target_port"] == [22] and cols["protocol"] == ["ssh", "tcp"]
    assert cols["detecttime"] == parse_time("2026-01-02T03:04:05Z") == 1767323045.0
    assert detector_of(ev(1)) == "scan_horizontal" and detector_of({}) == "other"
    with pytest.raises(KeyError):
        event_columns({"ID": "x"})


def test_event_columns_agents_from_the_extension_key():
    assert event_columns(ev(1))["agents"] == []
    cols = event_columns(dict(ev(1), _Myason={"Agents": ["edge-2", "edge-1", "edge-2"]}))
    assert cols["agents"] == ["edge-1", "edge-2"] and list(cols) == list(EVENT_COLUMNS)
    for odd in ({}, {"Agents": None}, ["edge-1"], "edge-1"):
        assert event_columns(dict(ev(1), _Myason=odd))["agents"] == []


def test_sqlite_stores_agents_and_migrates_an_older_database(tmp_path):
    db = str(tmp_path / "f.db")
    w = SqliteWriter(path=db)
    w.open()
    # A database of the version before: no agents column, an event stored then.
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE events DROP COLUMN agents")
    conn.execute("DELETE FROM schema_migrations WHERE name = 'event_agents'")
    conn.execute("INSERT INTO events (%s, event) VALUES (%s)" % (
        ", ".join(EVENT_COLUMNS[:-1]), ", ".join("?" * len(EVENT_COLUMNS))),
        sqlite_params(ev(1))[:-2] + sqlite_params(ev(1))[-1:])
    conn.commit()
    conn.close()
    w.close()
    w.open()                                    # applies 006_event_agents
    later = dict(ev(2), _Myason={"Agents": ["edge-1"]})
    assert w.write("b1", [], events=[later]) is True
    w.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT id, agents FROM events ORDER BY id").fetchall() == [
        (ev(1)["ID"], "[]"), (ev(2)["ID"], '["edge-1"]')]
    conn.close()


def test_sqlite_stores_enriched_rows_and_events_once(tmp_path):
    db = tmp_path / "f.db"
    w = SqliteWriter(path=str(db))
    w.open()
    rows = [r + ["inbound", "ssh", "CZ", "", 2852, 0, "CESNET", "", "", ""] for r in numbered_rows(3)]
    assert w.write("b1", rows, events=[ev(1), ev(2, "Attempt.Login", "203.0.113.9")]) is True
    assert w.write("b1", rows, events=[ev(1)]) is False
    assert w.write("b2", numbered_rows(2, start=100)) is True
    with pytest.raises(WriterError) as exc:
        w.write("b3", [], events=[{"ID": "no time"}])
    assert exc.value.permanent
    w.close()
    conn = sqlite3.connect(str(db))
    assert conn.execute("SELECT count(*), sum(direction = 'inbound'), sum(src_asn) FROM flows").fetchone() == (5, 3, 3 * 2852)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (2,)
    conn.close()
    writer = {"type": "sqlite", "path": str(db)}
    assert len(fetch_events(writer, 0)) == 2
    assert [e["ID"] for e in fetch_events(writer, 0, category="Attempt.Login")] == [ev(2)["ID"]]
    assert [e["ID"] for e in fetch_events(writer, 0, source="203.0.113.66")] == [ev(1)["ID"]]
    assert fetch_events(writer, 2e9) == []
    with pytest.raises(ConfigError, match="--source"):
        fetch_events(writer, 0, source="nope")


def test_greylist_aggregates_sources():
    events = [ev(1), ev(2, t="2026-01-02T05:00:00Z"), ev(3, "Attempt.Login", "203.0.113.9")]
    rows = greylist(events)
    assert [(r["address"], r["categories"], r["events"]) for r in rows] == [
        ("203.0.113.66", ["Recon.Scanning"], 2), ("203.0.113.9", ["Attempt.Login"], 1)]
    assert rows[0]["first_seen"] == "2026-01-02T03:00:00Z" and rows[0]["last_seen"] == "2026-01-02T05:00:00Z"
    csv_text = format_greylist(rows)
    assert csv_text.splitlines()[0] == "address,categories,first_seen,last_seen,events"
    assert csv_text.splitlines()[1] == "203.0.113.66,Recon.Scanning,2026-01-02T03:00:00Z,2026-01-02T05:00:00Z,2"
    assert '"address": "203.0.113.9"' in format_greylist(rows, "json")


def test_parse_duration():
    assert parse_duration("k", "1h") == 3600 and parse_duration("k", "7d") == 7 * 86400
    assert parse_duration("k", "90s") == 90
    with pytest.raises(ConfigError, match="--since"):
        parse_duration("--since", "1 hour")


def test_collector_config_enrich_and_detect():
    cfg = load_collector_config(None, {"node_name": "org.example.x", "detect": {"allowlist": ["10.0.0.0/8"]}})
    assert cfg.detect_config() == {"allowlist": ["10.0.0.0/8"], "node_name": "org.example.x"}
    assert load_collector_config(None, {"detect": {"node_name": "org.y"}}).detect_config()["node_name"] == "org.y"
    for over, key in (({"enrich": {"local_networks": ["x"]}}, "enrich.local_networks"),
                      ({"enrich": {"colour": 1}}, "enrich.colour"),
                      ({"enrich": 5}, "enrich"),
                      ({"detect": {"detectors": {"nope": {}}}}, "detect.detectors.nope"),
                      ({"node_name": "Org-Example"}, "node_name"),
                      ({"detect_clock": "sun"}, "detect_clock")):
        with pytest.raises(ConfigError) as exc:
            load_collector_config(None, over)
        assert exc.value.key == key
