"""Enriched rows (direction tag) and event counts by category and detector in a real InfluxDB 1.x."""

from myason.schema import ENRICH_DEFAULTS
from myason.store.influxdb import event_lines
from tests.support.services import influx_query, influx_rows
from tests.support.rows import random_rows, totals
from tests.support.stores import v1_writer

EVENTS = [{"ID": "a", "DetectTime": "2023-11-14T22:13:25Z", "Category": ["Recon.Scanning"],
           "Description": "Horizontal scan: 203.0.113.66 probed 60 hosts on tcp/22"},
          {"ID": "b", "DetectTime": "2023-11-14T22:13:27Z", "Category": ["Recon.Scanning"],
           "Description": "Horizontal scan: 203.0.113.67 probed 70 hosts on tcp/22"},
          {"ID": "c", "DetectTime": "2023-11-14T22:13:28Z", "Category": ["Attempt.Login"],
           "Description": "Login brute force: 203.0.113.9 made 25 short ssh connections to 1 host"}]


def test_event_lines_count_by_category_and_detector():
    lines = event_lines(EVENTS + [{"broken": True}], 10, 7, static_tags=(("collector", "c1"),))
    assert lines == [
        "events,category=Attempt.Login,collector=c1,detector=bruteforce count=1i 1700000000000000007",
        "events,category=Recon.Scanning,collector=c1,detector=scan_horizontal count=2i 1700000000000000007"]


def test_direction_tag_and_event_counts_once(servers, influx_db, tmp_path):
    rows = random_rows(200, seed=4)
    for i, r in enumerate(rows):
        r.extend(ENRICH_DEFAULTS)
        r[len(r) - len(ENRICH_DEFAULTS)] = "inbound" if i % 2 else "outbound"
    w = v1_writer(servers, influx_db, tmp_path)
    w.open()
    w.write("b1", rows, events=EVENTS)
    w.write("b1", rows, events=EVENTS)       # a retry rewrites the same points
    w.close()
    by_dir = influx_rows(influx_query(servers.influx_url, "SELECT sum(flows) FROM flows GROUP BY direction",
                                      db=influx_db))
    assert sum(r["sum"] for r in by_dir) == totals(rows)[2]
    got = influx_rows(influx_query(servers.influx_url, "SELECT sum(count) FROM events GROUP BY category, detector",
                                   db=influx_db))
    assert sorted(r["sum"] for r in got) == [1, 2]
    tags = influx_query(servers.influx_url, "SHOW TAG VALUES FROM flows WITH KEY = direction", db=influx_db)
    assert "inbound" in str(tags) and "outbound" in str(tags)
