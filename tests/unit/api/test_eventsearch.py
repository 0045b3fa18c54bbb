"""The /events cursor, the source/target filters, the clauses of an event's flows, and the events SQL."""
import base64
import ipaddress
import sqlite3

import pytest

from myason.api.eventsearch import (AROUND_DETECT, CursorError, decode_cursor, encode_cursor, flow_clauses,
                                    flows_link, parse_place)
from myason.api.grammar import GrammarError, parse_query, resolve_time
from myason.store.events import parse_time
from myason.store.query import events_sql, keyset_values

UUID = "6f1c2a9e-3b7d-4c55-9a0e-2f4b8d1e7c30"


def test_cursor_round_trip():
    for micros, event_id, start in ((1700049600123456, UUID, 1700046000.0), (0, "x", 0.5)):
        text = encode_cursor(micros, event_id, start)
        assert "=" not in text and "/" not in text and "+" not in text      # safe in a query string
        assert decode_cursor(text, "sqlite") == (micros, event_id, start)
    assert decode_cursor(encode_cursor(5, UUID, 7), "postgresql") == (5, UUID, 7.0)


def _b64(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("text", [
    "", "!!!", "a" * 300, _b64(b"[1, 2]"), _b64(b"{}"), _b64(b'{"t": "1", "id": "x", "from": 0}'),
    _b64(b'{"t": 1.5, "id": "x", "from": 0}'), _b64(b'{"t": true, "id": "x", "from": 0}'),
    _b64(b'{"t": 1, "id": 5, "from": 0}'), _b64(b'{"t": -1, "id": "x", "from": 0}'),
    _b64(b'{"t": 1, "id": "x", "from": 1e300}'), _b64(b'{"t": 1, "id": "x", "from": "0"}'), _b64(b"\xff\xfe"),
])
def test_foreign_cursors_are_refused(text):
    with pytest.raises(CursorError, match="not a cursor"):
        decode_cursor(text, "sqlite")


def test_postgresql_cursor_needs_a_uuid():
    text = encode_cursor(1, "not-a-uuid", 0)
    assert decode_cursor(text, "sqlite")[1] == "not-a-uuid"
    with pytest.raises(CursorError):
        decode_cursor(text, "postgresql")


def test_keyset_values_equal_what_the_writers_store():
    # SQLite keeps parse_time's float: the cursor's micros must give back exactly that float.
    for text in ("2023-11-15T12:07:00Z", "2023-11-15T12:07:00.123456Z", "2026-01-02T03:04:05.999999Z"):
        stored = parse_time(text)
        micros = round(stored * 1e6)
        assert keyset_values("sqlite", micros, "x") == (stored, "x")
        assert keyset_values("postgresql", micros, UUID)[0].timestamp() == stored


@pytest.mark.parametrize("text, out", [
    ("10.0.0.1", "10.0.0.1"), ("10.1.2.3/8", "10.0.0.0/8"), ("10.0.0.7/32", "10.0.0.7"),
    ("2001:DB8:0:0::1", "2001:db8::1"), ("2001:db8::1/32", "2001:db8::/32"), ("2001:db8::5/128", "2001:db8::5"),
    ("0.0.0.0/0", "0.0.0.0/0"),
])
def test_place(text, out):
    assert parse_place(text) == out


@pytest.mark.parametrize("text", ["nope", "10.0.0.0/33", "10.0.0.1/x", "2001:db8::/129", "/8", "10.0.0.256"])
def test_bad_place(text):
    with pytest.raises(GrammarError, match="not an address or a network"):
        parse_place(text)


# -- the flows of an event ----------------------------------------------------------------------------

def event(**kw):
    ev = {"ID": UUID, "DetectTime": "2026-12-07T00:10:00Z", "Category": ["Recon.Scanning"],
          "EventTime": "2026-12-07T00:05:03Z", "CeaseTime": "2026-12-07T00:06:10Z",
          "WinStartTime": "2026-12-07T00:05:03Z", "WinEndTime": "2026-12-07T00:10:00Z",
          "Source": [{"IP4": ["203.0.113.66"], "Proto": ["tcp"]}],
          "Target": [{"IP4": ["10.0.1.%d" % i for i in range(1, 61)], "Port": [22], "Proto": ["tcp", "ssh"]}]}
    ev.update(kw)
    return {k: v for k, v in ev.items() if v is not None}


def test_horizontal_scan_clauses():
    # 60 targets 10.0.1.1-60: the smallest network holding them is 10.0.1.0/26.
    assert flow_clauses(event()) == ("host/203.0.113.66/net/10.0.1.0/26/port/22/proto/6"
                                     "/after/2026-12-07T00:05:03Z/before/2026-12-07T00:10:01Z")


def test_clauses_parse_and_cover_every_listed_address():
    ev = event()
    q = parse_query(flow_clauses(ev))
    net = ipaddress.ip_network(q.values("net")[0])
    assert all(ipaddress.ip_address(a) in net for a in ev["Target"][0]["IP4"])
    assert q.values("host") == ["203.0.113.66"]


def test_several_ports_or_protocols_are_left_out():
    ev = event(Source=[{"IP4": ["203.0.113.77"], "Proto": ["tcp"]}],
               Target=[{"IP4": ["10.0.0.80"], "Port": list(range(1000, 1070)), "Proto": ["tcp"]}])
    assert flow_clauses(ev).startswith("host/10.0.0.80/host/203.0.113.77/proto/6/after/")
    ev = event(Source=[{"IP4": ["203.0.113.77"], "Proto": ["tcp"]}],
               Target=[{"IP4": ["10.0.0.80"], "Port": [53], "Proto": ["udp"]}])
    assert "/proto/" not in flow_clauses(ev) and "/port/53/" in flow_clauses(ev)


def test_many_sources_one_target_ipv6():
    ev = event(Source=[{"IP6": ["2001:db8::%x" % i for i in range(1, 6)]}],
               Target=[{"IP6": ["2001:DB8:ffff::1"], "Port": [80], "Proto": ["tcp"]}])
    assert flow_clauses(ev).startswith("host/2001:db8:ffff::1/net/2001:db8::/125/port/80/proto/6/")


def test_a_side_that_would_be_everything_or_mixes_families_is_left_out():
    ev = event(Source=[{"IP4": ["1.2.3.4", "200.0.0.1"]}], Target=[{"IP4": ["10.0.0.1"], "IP6": ["2001:db8::1"]}])
    assert flow_clauses(ev).startswith("after/")
    ev = event(Source=[{"IP4": ["192.0.2.0/24", "192.0.3.1-192.0.3.9"]}], Target=None)
    assert flow_clauses(ev).startswith("net/192.0.2.0/23/after/")


def test_window_falls_back_to_event_times_then_detect_time():
    # No window: EventTime .. CeaseTime + 1 s.
    ev = event(WinStartTime=None, WinEndTime=None)
    assert flow_clauses(ev).endswith("/after/2026-12-07T00:05:03Z/before/2026-12-07T00:06:11Z")
    # An EventTime before the window start widens it.
    ev = event(EventTime="2026-12-07T00:04:00Z")
    assert flow_clauses(ev).endswith("/after/2026-12-07T00:04:00Z/before/2026-12-07T00:10:01Z")
    # Nothing but DetectTime: +- AROUND_DETECT.
    ev = event(WinStartTime=None, WinEndTime=None, EventTime=None, CeaseTime=None)
    q = parse_query(flow_clauses(ev))
    detect = parse_time(ev["DetectTime"])
    assert resolve_time(q.values("after")[0], 0) == detect - AROUND_DETECT
    assert resolve_time(q.values("before")[0], 0) == detect + AROUND_DETECT
    with pytest.raises(GrammarError):
        flow_clauses(event(WinStartTime=None, WinEndTime=None, EventTime=None, CeaseTime=None, DetectTime="x"))
    # At the end of the years the grammar takes, the window stops there.
    ev = event(WinStartTime=None, WinEndTime=None, EventTime=None, CeaseTime=None, DetectTime="9999-12-31T23:59:00Z")
    assert flow_clauses(ev).endswith("/after/9999-12-31T23:54:00Z/before/9999-12-31T23:59:59Z")


def test_a_limit_when_the_event_counted_more_flows_than_a_page():
    assert "/limit/" not in flow_clauses(event(ConnCount=50))
    assert flow_clauses(event(ConnCount=600, FlowCount=600)).endswith("/before/2026-12-07T00:10:01Z/limit/1200")
    assert flow_clauses(event(ConnCount=600), max_limit=1000).endswith("/limit/1000")
    assert flow_clauses(event(ConnCount=60), default_limit=10).endswith("/limit/120")
    assert "/limit/" not in flow_clauses(event(ConnCount="600"))
    parse_query(flow_clauses(event(ConnCount=600)))


def test_flows_link_shapes():
    link = flows_link(event())
    assert link["url"] == "/q/" + link["clauses"]
    assert link["page"] == "/#q=" + link["clauses"].replace("/", "%2F").replace(":", "%3A")


# -- the SQL, run on SQLite ---------------------------------------------------------------------------

def test_events_sql_filters_and_keyset_on_sqlite():
    conn = sqlite3.connect(":memory:")
    conn.create_function("in_net", 2, lambda a, n: ipaddress.ip_address(a) in ipaddress.ip_network(n))
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, detecttime REAL, category TEXT, source_ip TEXT,"
                 " target_ip TEXT, node_name TEXT, agents TEXT, event TEXT)")
    rows = [("a", 10.0, '["X"]', '["10.0.0.1"]', '["2001:db8::1"]', '["n1"]', '["edge-1", "edge-2"]', "{}"),
            ("b", 10.0, '["Y"]', '["10.0.0.2"]', '["192.0.2.1"]', '["n2"]', '["edge-2"]', "{}"),
            ("c", 20.0, '["X"]', '["192.0.2.9"]', '["10.0.0.3"]', '["n1"]', '[]', "{}")]
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def ids(**kw):
        sql, args = events_sql("sqlite", 0, newest_first=True, **kw)
        return [r[2] for r in conn.execute(sql, args)]
    assert ids() == ["c", "b", "a"]
    assert ids(category="X") == ["c", "a"] and ids(agent="n2") == ["b"]
    assert ids(source="10.0.0.0/8") == ["b", "a"] and ids(source="10.0.0.2") == ["b"]
    assert ids(target="2001:db8::/32") == ["a"] and ids(target="10.0.0.3", category="X", agent="n1") == ["c"]
    assert ids(before=(10_000_000, "b")) == ["a"] and ids(before=(20_000_000, "c")) == ["b", "a"]
    assert ids(limit=1) == ["c"]
    # agent: a probe among the event's agents, or the collector's Node name; never a part of one.
    assert ids(agent="edge-1") == ["a"] and ids(agent="edge-2") == ["b", "a"] and ids(agent="edge") == []
    assert ids(agent="n1") == ["c", "a"] and ids(agent="edge-2", category="Y") == ["b"]
