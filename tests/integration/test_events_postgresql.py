"""Enriched flows and IDEA events in a real PostgreSQL: columns, events table, indexes, exactly once."""
import pytest

from myason.schema import ENRICHED_ROW_FIELDS, ENRICH_FIELDS
from myason.store.postgresql import PostgresWriter
from myason.store.query import fetch_events, greylist
from tests.support.rows import MIDNIGHT as T0, spread_rows
from tests.support.stores import pg_query
from tests.support.flows import check_idea

psycopg = pytest.importorskip("psycopg")


def event(category, sources, targets, t="2023-11-15T00:10:00Z", ports=(22,)):
    """A small valid IDEA event."""
    import uuid
    ev = {"Format": "IDEA0", "ID": str(uuid.uuid4()), "DetectTime": t, "Category": [category],
          "EventTime": "2023-11-15T00:05:00Z", "CeaseTime": "2023-11-15T00:09:00Z",
          "WinStartTime": "2023-11-15T00:05:00Z", "WinEndTime": "2023-11-15T00:10:00Z",
          "ConnCount": 3, "Source": [{"IP4": sorted(sources), "Proto": ["tcp"]}],
          "Target": [{"IP4": sorted(targets), "Port": list(ports), "Proto": ["tcp", "ssh"]}],
          "Node": [{"Name": "org.example.test", "SW": ["myason"], "Type": ["Flow", "Statistical"]}],
          "Description": "test event"}
    return check_idea(ev)


def enriched_rows(n):
    rows = spread_rows(n)
    for i, r in enumerate(rows):
        r.extend(["inbound", "ssh", "CZ", "", 2852 + i, 0, "CESNET z.s.p.o.", "", "host-%d.example" % i, ""])
    return rows


@pytest.mark.parametrize("copy", ["binary", "text"])
def test_enriched_rows_and_events_stored_once(pg, copy):
    w = PostgresWriter(dsn=pg, copy=copy)
    w.open()
    rows = enriched_rows(30)
    events = [event("Recon.Scanning", ["203.0.113.66"], ["10.0.0.1", "10.0.0.2"]),
              event("Attempt.Login", ["203.0.113.9"], ["10.0.0.22"], t="2023-11-15T00:20:00Z")]
    assert w.write("b1", rows, events=events) is True
    assert w.write("b1", rows, events=events) is False          # a retried batch is skipped
    assert w.write("b2", spread_rows(5, start=1000)) is True       # plain (v1) rows still fit
    w.close()
    cols = ", ".join('"%s"' % f for f in ENRICH_FIELDS)
    got = pg_query(pg, "SELECT %s FROM flows WHERE src_port < 1000 ORDER BY src_port" % cols)
    assert [list(r) for r in got] == [r[len(ENRICHED_ROW_FIELDS) - len(ENRICH_FIELDS):] for r in rows]
    assert pg_query(pg, "SELECT DISTINCT direction, src_asn FROM flows WHERE src_port >= 1000") == [("", 0)]
    stored = pg_query(pg, "SELECT id::text, category, array(SELECT host(a) FROM unnest(target_ip) a), "
                          "target_port, protocol, node_name, event FROM events ORDER BY detecttime")
    assert [r[0] for r in stored] == [e["ID"] for e in events]
    assert stored[0][1:6] == (["Recon.Scanning"], ["10.0.0.1", "10.0.0.2"], [22], ["ssh", "tcp"],
                              ["org.example.test"])
    assert stored[0][6] == events[0]
    indexes = {r[0] for r in pg_query(pg, "SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
    assert {"events_detecttime_idx", "events_category_idx", "events_source_ip_idx",
            "events_target_ip_idx"} <= indexes
    # Reading back, as `myason events` / `myason greylist` do.
    writer = {"type": "postgresql", "dsn": pg}
    assert [e["ID"] for e in fetch_events(writer, T0)] == [e["ID"] for e in events]
    assert [e["ID"] for e in fetch_events(writer, T0, category="Attempt.Login")] == [events[1]["ID"]]
    assert [e["ID"] for e in fetch_events(writer, T0, source="203.0.113.66")] == [events[0]["ID"]]
    assert fetch_events(writer, T0 + 86400) == []
    assert [(g["address"], g["categories"], g["events"]) for g in greylist(fetch_events(writer, T0))] == [
        ("203.0.113.66", ["Recon.Scanning"], 1), ("203.0.113.9", ["Attempt.Login"], 1)]
