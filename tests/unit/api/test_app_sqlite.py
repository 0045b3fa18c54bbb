"""The API over a SQLite store filled through the real SqliteWriter and rollup maintenance."""
import csv
import io
import sqlite3
import threading
import time

import pytest
from fastapi.testclient import TestClient

from myason import cli
from myason.api import queries
from myason.api.app import create_app
from myason.api.config import ApiConfig
from myason.api.grammar import parse_query
from myason.collector.health import _write_sqlite, health_rows
from myason.store.sqlite import SqliteWriter
from tests.support.api import A, AUTH, B, C, D, NOW, REPLIES, TOKEN, idea, row


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("api") / "flows.db")
    w = SqliteWriter(path=path)
    w.clock = lambda: NOW
    w.open()
    assert w.write("a", A, [idea(1, NOW - 600), dict(idea(2, NOW - 300, "Attempt.Login", "198.51.100.1"),
                                                      _Myason={"Agents": ["edge-1", "edge-2"]})])
    assert w.write("b", B + C)
    assert w.write("d", D)
    w.maintain(now=NOW)
    w.close()
    stats = {"datagrams": 40, "flows_spooled": 36, "rejects": {"bad_token": 2, "replay": 1}, "spool": {},
             "agents": {"edge-1": {"last_seen": NOW - 5, "datagrams": 30, "flows": 26, "gaps": 1, "restarts": 0,
                                   "replays": 1},
                        "edge-2": {"last_seen": NOW - 50, "datagrams": 10, "flows": 10, "gaps": 2, "restarts": 1}}}
    _write_sqlite(path, "collector-1", NOW - 3600, NOW - 2, *health_rows(stats, [], str(tmp_path_factory.getbasetemp()),
                                                                         NOW - 2))
    return path


def make_client(path, **cfg):
    cfg = ApiConfig(database={"type": "sqlite", "path": path}, token=TOKEN, **cfg)
    app = create_app(cfg, clock=lambda: NOW)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(store):
    return make_client(store)


def get(client, url, **kw):
    r = client.get(url, headers={**AUTH, **kw.pop("headers", {})}, **kw)
    return r


# -- auth -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/q/host/10.1.0.1", "/ids", "/status/0123456789abcdef", "/traffic", "/top/talkers",
                                 "/events", "/greylist", "/greylist.csv", "/stats", "/metrics", "/traffic.csv"])
def test_every_data_route_needs_the_token(client, url):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic eDp5"}):
        r = client.get(url, headers=headers)
        assert r.status_code == 401, (url, headers)
        assert "bearer token" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_open_routes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert client.get("/openapi.json").status_code == 200


def test_auth_off(store):
    c = make_client(store, auth=False)
    c.base_url = "http://127.0.0.1:8080"    # without auth only loopback Host names are answered
    assert c.get("/q/host/10.1.0.1").status_code == 200


def test_no_auth_refused_off_loopback(tmp_path, capsys):
    conf = tmp_path / "api.yaml"
    conf.write_text("database: {type: sqlite, path: %s}\n" % (tmp_path / "x.db"))
    assert cli.main(["api", "-ac", str(conf), "--no-auth", "--bind", "0.0.0.0:8080", "--check-config"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert cli.main(["api", "-ac", str(conf), "--no-auth", "--bind", "127.0.0.1:0", "--check-config"]) == 0
    conf.write_text("bogus: 1\n")
    assert cli.main(["api", "-ac", str(conf), "--check-config"]) == 2
    assert "bogus" in capsys.readouterr().err


# -- flow search ------------------------------------------------------------------------------------

def test_host_query(client):
    r = get(client, "/q/host/10.1.0.1")
    assert r.status_code == 200
    body = r.json()
    q = parse_query("host/10.1.0.1/after/1d")      # the default bound is part of the query
    assert body["id"] == q.id and body["query"] == "host/10.1.0.1/after/1d/limit/100"
    assert body["bound"] == "after/24h (default)"
    assert body["columns"] == list(queries.FLOW_COLUMNS)
    assert body["count"] == 20 and not body["truncated"] and not body["cached"]
    firsts = [r[0] for r in body["rows"]]
    assert firsts == sorted(firsts, reverse=True)
    assert firsts[0] == queries.iso(A[-1][8])
    row0 = dict(zip(body["columns"], body["rows"][0]))
    assert row0["src_ip"] == "10.1.0.1" and row0["dst_port"] == 443 and row0["bytes"] == 1000
    assert row0["direction"] == "outbound" and row0["src_country"] == "CZ" and row0["dst_asn"] == 15169
    again = get(client, "/q/limit/100/HOST/10.1.0.1/").json()
    assert again["id"] == body["id"] and again["cached"] and again["rows"] == body["rows"]


@pytest.mark.parametrize("path, count", [
    ("host/192.0.2.10", 20), ("src/10.1.0.1", 20), ("dst/10.1.0.1", 0), ("net/10.0.0.0/8", 31),
    ("net/192.0.2.0/24", 21), ("net/2001:db8::/32", 5), ("host/2001:db8::2", 5), ("port/53", 10),
    ("port/5353", 10), ("proto/udp", 10), ("proto/icmpv6", 5), ("agent/edge-2", 10), ("agent/edge-1", 26),
    ("after/10m", 1), ("after/1h", 16), ("before/1h", 20), ("after/2023-11-15T11:00:00Z/proto/6", 1),
    ("proto/tcp/before/2023-11-15T09:15:00Z/after/2023-11-15T09:10:00Z", 5), ("agent/edge-2/port/443", 0),
])
def test_clauses(client, path, count):
    body = get(client, "/q/" + path).json()
    assert body["count"] == count, body


def test_limit_and_truncation(client):
    body = get(client, "/q/host/10.1.0.1/limit/5").json()
    assert body["count"] == 5 and body["truncated"]
    assert get(client, "/q/host/10.1.0.1/limit/20").json()["truncated"] is False


def test_max_limit_from_config(store):
    c = make_client(store, max_limit=50, default_limit=10)
    assert get(c, "/q/net/0.0.0.0/0").json()["count"] == 10
    r = get(c, "/q/host/10.1.0.1/limit/51")
    assert r.status_code == 400 and "between 1 and 50" in r.json()["error"]


def test_csv(client):
    for kw in ({"url": "/q/host/10.1.0.1.csv"}, {"url": "/q/host/10.1.0.1", "headers": {"Accept": "text/csv"}}):
        r = get(client, kw.pop("url"), **kw)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(r.text)))
        assert rows[0] == list(queries.FLOW_COLUMNS) and len(rows) == 21
        assert rows[1][4] == "10.1.0.1"
    r = get(client, "/top/ports.csv?period=1d")
    assert r.text.splitlines()[:2] == ["key,bytes,packets,flows", "443,20000,200,20"]
    r = get(client, "/traffic.csv?period=1h&by=proto")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sum(int(x["bytes"]) for x in rows) == 6320 and {x["key"] for x in rows} == {"tcp", "udp", "icmpv6"}
    assert get(client, "/greylist.csv").text.startswith("address,categories,first_seen,last_seen,events\n")
    assert get(client, "/greylist", headers={"Accept": "text/csv"}).text == get(client, "/greylist.csv").text


def test_status_and_ids(client):
    a = get(client, "/q/host/10.1.0.2").json()
    b = get(client, "/q/host/10.1.0.1/limit/3").json()
    st = get(client, "/status/" + a["id"]).json()
    assert st["state"] == "done" and st["rows"] == 10 and st["query"] == "host/10.1.0.2/after/1d/limit/100"
    assert [h["state"] for h in st["history"]] == ["queued", "running", "done"] and st["seconds"] >= 0
    assert get(client, "/ids").json()["ids"][:2] == [b["id"], a["id"]]
    get(client, "/q/host/10.1.0.2")     # asked again (cached): newest again
    assert get(client, "/ids").json()["ids"][0] == a["id"]


def test_inflight_queries_run_once(store, monkeypatch):
    client = make_client(store)
    memo, searches = client.app.state.memo, client.app.state.searches
    q = parse_query("net/10.1.0.0/16/after/1d/limit/7")
    n = 4
    calls = []
    real = queries.flow_search

    def slow(db, query, now=None):
        calls.append(query.canonical)
        deadline = time.monotonic() + 10
        # Hold the execution until every other request is waiting for it.
        while searches.get(q.id).shared < n - 1:
            assert time.monotonic() < deadline, "the other requests never joined"
            time.sleep(0.01)
        return real(db, query, now)

    monkeypatch.setattr(queries, "flow_search", slow)
    results = [None] * n

    def ask(i):
        results[i] = get(client, "/q/net/10.1.0.0/16/limit/7")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert calls == [q.canonical]
    assert all(r is not None and r.status_code == 200 for r in results)
    assert len({r.text for r in results}) == 1 and results[0].json()["count"] == 7
    assert memo.stats()["shared"] == n - 1 and memo.stats()["executions"] == 1


def test_query_errors_are_not_cached(store, monkeypatch):
    client = make_client(store)
    real, fail = queries.flow_search, [True]

    def flaky(db, query, now=None):
        if fail.pop():
            from myason.api.db import DatabaseError
            raise DatabaseError("database is locked")
        return real(db, query, now)

    fail.insert(0, False)
    monkeypatch.setattr(queries, "flow_search", flaky)
    r = get(client, "/q/host/10.1.0.1")
    assert r.status_code == 503 and r.json() == {"error": "database is locked"}
    qid = parse_query("host/10.1.0.1/after/1d").id
    assert get(client, "/status/" + qid).json()["state"] == "failed"
    assert get(client, "/q/host/10.1.0.1").json()["count"] == 20
    assert get(client, "/status/" + qid).json()["state"] == "done"


# -- rollups ----------------------------------------------------------------------------------------

def test_traffic(client):
    body = get(client, "/traffic?period=1h").json()
    assert (body["period"], body["resolution"], body["window"]) == ("1h", "1m", 60)
    assert len(body["points"]) == 60 and all("key" not in p for p in body["points"])
    assert sum(p["bytes"] for p in body["points"]) == 1000 + 320 + 5000
    assert sum(p["flows"] for p in body["points"]) == 16
    assert body["points"][-1]["t"] == queries.iso(NOW // 60 * 60)
    day = get(client, "/traffic?period=1d").json()
    assert len(day["points"]) == 48 and day["resolution"] == "15m"
    assert sum(p["bytes"] for p in day["points"]) == 26320 and sum(p["packets"] for p in day["points"]) == 360


def test_traffic_split_and_filtered(client):
    by = {}
    for p in get(client, "/traffic?period=6h&by=proto").json()["points"]:
        by[p["key"]] = by.get(p["key"], 0) + p["bytes"]
    assert by == {"tcp": 25000, "udp": 1000, "icmpv6": 320}
    by = {}
    for p in get(client, "/traffic?period=6h&by=direction").json()["points"]:
        by[p["key"]] = by.get(p["key"], 0) + p["bytes"]
    assert by == {"outbound": 25000, "inbound": 1000, "unknown": 320}
    assert sum(p["bytes"] for p in get(client, "/traffic?period=6h&agent=edge-2").json()["points"]) == 1000
    assert sum(p["bytes"] for p in get(client, "/traffic?period=6h&if_name=eth0").json()["points"]) == 25320
    assert sum(p["bytes"] for p in get(client, "/traffic?period=6h&agent=nobody").json()["points"]) == 0


def test_traffic_is_cached_for_the_period(client):
    periods = client.app.state.periods
    before = periods.stats()["executions"]
    a = get(client, "/traffic?period=1w").json()
    b = get(client, "/traffic?period=1w").json()
    assert a == b and periods.stats()["executions"] == before + 1 and periods.stats()["hits"] >= 1


def test_top(client):
    rows = get(client, "/top/talkers?period=1d").json()["rows"]
    assert [(r["key"], r["bytes"]) for r in rows[:4]] == [
        ("10.1.0.1", 20000), ("192.0.2.10", 20000), ("10.9.9.9", 5000), ("192.0.2.99", 5000)]
    assert len(rows) == 8
    body = get(client, "/top/ports?period=1d&limit=3").json()
    assert body["dimension"] == "ports" and body["resolution"] == "15m"
    assert [(r["key"], r["bytes"], r["flows"]) for r in body["rows"]] == [
        ("443", 20000, 20), ("8443", 5000, 1), ("53", 1000, 10)]
    assert [r["key"] for r in get(client, "/top/src_port?period=1h&limit=2").json()["rows"]] == ["50000", "5353"]
    assert [(r["key"], r["bytes"]) for r in get(client, "/top/protocols?period=1d").json()["rows"]] == [
        ("tcp", 25000), ("udp", 1000), ("icmpv6", 320)]
    assert [r["key"] for r in get(client, "/top/countries?period=1d").json()["rows"]] == ["CZ", "US"]
    assert [r["key"] for r in get(client, "/top/as?period=1d").json()["rows"]] == ["15169", "2852"]
    assert [r["key"] for r in get(client, "/top/dst_ip?period=1h").json()["rows"]] == [
        "192.0.2.99", "198.51.100.7", "2001:db8::2"]
    assert [r["key"] for r in get(client, "/top/src_ip?period=1d&agent=edge-2").json()["rows"]] == ["10.1.0.2"]
    assert [r["key"] for r in get(client, "/top/protocols?period=1d&agent=edge-2").json()["rows"]] == ["udp"]


@pytest.fixture(scope="module")
def replies(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("replies") / "flows.db")
    w = SqliteWriter(path=path)
    w.clock = lambda: NOW
    w.open()
    assert w.write("r", REPLIES)
    w.maintain(now=NOW)
    w.close()
    return make_client(path)


def test_top_ports_rank_service_ports(replies):
    # 443 (36,386 B both ways), 3306 (7,300), 5000 (5000 <-> 6000: neither a service, the lower), 53.
    body = get(replies, "/top/ports?period=1h").json()
    assert body["dimension"] == "ports"
    assert [(r["key"], r["bytes"], r["flows"]) for r in body["rows"]] == [
        ("443", 36394, 8), ("3306", 7300, 2), ("5000", 900, 2), ("53", 50, 1)]
    assert get(replies, "/top/service_port?period=1h").json()["rows"] == body["rows"]
    assert get(replies, "/top/ports.csv?period=1d").text.splitlines()[:3] == [
        "key,bytes,packets,flows", "443,36394,80,8", "3306,7300,20,2"]
    # The raw destination ports stay available: there the replies' ephemeral ports lead.
    raw = get(replies, "/top/dst_port?period=1h&limit=3").json()["rows"]
    assert [r["key"] for r in raw] == ["2048", "50000", "50001"]


def test_the_documented_service_ports_are_the_ones_ranked():
    import re
    from pathlib import Path
    from myason.store.rollup import service_ports
    text = " ".join((Path(__file__).resolve().parents[3] / "docs" / "api.md").read_text().split())
    listed = re.search(r"from 1024 up: ([0-9, ]+) \(the built-in", text).group(1)
    assert tuple(int(x) for x in listed.split(", ")) == service_ports()


def test_range_of_stored_flows(client, replies, tmp_path):
    # From the minute of the oldest flow (A: NOW - 3 h) to the end of the newest one's (D: NOW - 180 s).
    assert get(client, "/range").json() == {"first": queries.iso(NOW - 3 * 3600), "last": queries.iso(NOW - 120)}
    assert get(replies, "/range").json() == {"first": queries.iso(NOW - 600), "last": queries.iso(NOW - 180)}
    empty = tmp_path / "empty.db"
    sqlite3.connect(str(empty)).close()
    assert get(make_client(str(empty)), "/range").json() == {"first": None, "last": None}


def test_range_from_coarse_rollups_when_the_minutes_are_gone(tmp_path):
    path = str(tmp_path / "flows.db")
    w = SqliteWriter(path=path)
    w.open()
    old = [row("10.3.0.1", "192.0.2.30", 40000, 443, 6, 100, NOW - 40 * 86400 + 3600 * 5 + 7)]
    recent = [row("10.3.0.1", "192.0.2.30", 40001, 443, 6, 100, NOW - 3600 + 30)]
    assert w.write("a", old + recent)
    w.maintain(now=NOW)
    w.close()
    # The 1m and 15m rollups of the old flow expired: its hour (17:00) is known from the 1h rollups.
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM rollup_1m WHERE bucket < ?", (NOW - 86400,))
        conn.execute("DELETE FROM rollup_15m WHERE bucket < ?", (NOW - 86400,))
    assert get(make_client(path), "/range").json() == {
        "first": "2023-10-06T17:00:00.000Z", "last": queries.iso(NOW - 3600 + 60)}


def test_an_end_moves_the_period(client):
    # The hour ending 2 h ago holds A's flows of 09:07-10:07 only; `end` takes ISO, Unix seconds or a duration.
    for end in ("2023-11-15T10:07:00Z", "1700042820", "2h"):
        body = get(client, "/traffic?period=1h&end=" + end).json()
        assert (body["start"], body["end"]) == ("2023-11-15T09:07:00.000Z", "2023-11-15T10:07:00.000Z"), end
        assert sum(p["bytes"] for p in body["points"]) == 1000 * sum(
            1 for r in A if NOW - 3 * 3600 <= r[8] < NOW - 2 * 3600)
    # Between window boundaries the period reaches up to the next one.
    assert get(client, "/traffic?period=1d&end=2023-11-15T10:07:00Z").json()["end"] == "2023-11-15T10:30:00.000Z"
    top = get(client, "/top/talkers?period=1h&end=2h").json()
    assert top["end"] == "2023-11-15T10:07:00.000Z" and top["rows"][0]["key"] == "10.1.0.1"
    assert get(client, "/top/talkers?period=1h&end=2023-11-14T00:00:00Z").json()["rows"] == []
    assert [e["ID"][-1] for e in get(client, "/events?since=1h&end=6m").json()["events"]] == ["1"]
    # The end is exclusive: event 2 was detected at 12:02:00.
    assert [e["ID"][-1] for e in get(client, "/events?since=1h&end=2023-11-15T12:02:00Z").json()["events"]] == ["1"]
    assert [e["ID"][-1] for e in get(client, "/events?since=1h&end=2023-11-15T12:02:01Z").json()["events"]] == [
        "2", "1"]
    csv_rows = list(csv.DictReader(io.StringIO(get(client, "/traffic.csv?period=1h&end=2h").text)))
    assert sum(int(x["bytes"]) for x in csv_rows) == sum(
        p["bytes"] for p in get(client, "/traffic?period=1h&end=2h").json()["points"])


def test_over_large_limits_are_refused_not_clamped(store):
    c = make_client(store, max_limit=50, default_limit=10, events_limit=20)
    assert get(c, "/q/net/0.0.0.0/0/limit/50").json()["count"] == 36 - 5     # IPv4 flows: all, at the maximum
    for url, message in (("/q/net/0.0.0.0/0/limit/51", "limit must be between 1 and 50, got '51'"),
                         ("/q/host/10.1.0.1/limit/99999999999", "limit must be between 1 and 50"),
                         ("/top/talkers?limit=1001", "limit: Input should be less than or equal to 1000"),
                         ("/events?limit=21", "limit: Input should be less than or equal to 20")):
        r = get(c, url)
        assert r.status_code == 400 and message in r.json()["error"], (url, r.text)
    assert len(get(c, "/top/talkers?limit=1000").json()["rows"]) == 8
    assert len(get(c, "/events?limit=20").json()["events"]) == 2


# -- events, stats, metrics -------------------------------------------------------------------------

def test_events_and_greylist(client):
    evs = get(client, "/events").json()["events"]
    assert [e["ID"][-1] for e in evs] == ["2", "1"]
    assert [e["ID"][-1] for e in get(client, "/events?limit=1").json()["events"]] == ["2"]
    assert [e["ID"][-1] for e in get(client, "/events?category=Recon.Scanning").json()["events"]] == ["1"]
    assert [e["ID"][-1] for e in get(client, "/events?source=198.51.100.1").json()["events"]] == ["2"]
    assert get(client, "/events?since=4m").json()["events"] == []
    # Each row names the agents of its event; agent= is a probe of them, or the collector's Node name.
    assert [e["agents"] for e in evs] == [["edge-1", "edge-2"], []]
    assert evs[0]["_Myason"] == {"Agents": ["edge-1", "edge-2"]} and evs[0]["id"] == evs[0]["ID"]
    for agent, want in (("edge-2", ["2"]), ("edge-1", ["2"]), ("org.example.test", ["2", "1"]), ("edge-3", []),
                        ("org.example", [])):
        assert [e["ID"][-1] for e in get(client, "/events?agent=" + agent).json()["events"]] == want, agent
    grey = get(client, "/greylist").json()
    assert grey["since"] == "7d"
    assert {r["address"]: r["categories"] for r in grey["rows"]} == {
        "203.0.113.66": ["Recon.Scanning"], "198.51.100.1": ["Attempt.Login"]}


def test_stats(client):
    s = get(client, "/stats").json()
    t = s["totals"]
    assert t["agents_seen"] == 2 and t["gaps"] == 3 and t["rejects"] == 3 and t["datagrams"] == 40
    assert t["last_datagram"] == queries.iso(NOW - 5)
    assert s["rejects_by_reason"] == {"bad_token": 2, "replay": 1}
    assert [c["node"] for c in s["collectors"]] == ["collector-1"] and s["collectors"][0]["age"] == 2
    assert {a["agent"] for a in s["agents"]} == {"edge-1", "edge-2"}
    assert s["database"]["type"] == "sqlite" and s["database"]["size_bytes"] > 0
    assert s["database"]["flows_estimate"] == 36 and s["database"]["disk_free"] > 0


def test_metrics(client):
    get(client, "/q/host/10.1.0.1")
    get(client, "/q/bogus")
    text = get(client, "/metrics").text
    assert 'myason_api_requests_total{method="GET",route="/q/{clauses:path}",status="200"} 1.0' in text
    assert 'myason_api_requests_total{method="GET",route="/q/{clauses:path}",status="400"} 1.0' in text
    assert 'myason_api_request_seconds_count{route="/q/{clauses:path}"} 2.0' in text
    assert 'myason_api_cache_executions_total{key="query"} 1.0' in text


# -- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, status, message", [
    ("/q/bogus/1", 400, "unknown clause"),
    ("/q/host/1.2.3", 400, "not an IP address"),
    ("/q/net/10.0.0.0", 400, "ADDR/PREFIX"),
    ("/q/port/99999", 400, "not a port"),
    ("/q/proto/xyz", 400, "not a protocol"),
    ("/q/after/soon", 400, "not a time"),
    ("/q/host/10.1.0.1/limit/10001", 400, "limit must be"),
    ("/q/%2F%2F", 400, "empty query"),
    ("/status/xyz", 400, "qid"),
    ("/status/0123456789abcdef", 404, "unknown query id"),
    ("/traffic?period=2h", 400, "period"),
    ("/traffic?by=host", 400, "by"),
    ("/top/bogus", 400, "dimension"),
    ("/top/talkers?perod=1d", 400, "unknown parameter 'perod'"),
    ("/events?agent=a&agent=b", 400, "parameter 'agent' given 2 times"),
    ("/top/talkers?period=1d&period=1h", 400, "parameter 'period' given 2 times"),
    ("/ids?x=1", 400, "this route takes none"),
    ("/top/talkers?limit=0", 400, "limit"),
    ("/top/talkers?limit=abc", 400, "limit"),
    ("/top/talkers?period=5y", 400, "period"),
    ("/top/talkers?end=soon", 400, "end: not a time"),
    ("/traffic?end=99999999w", 400, "end: out of range"),
    ("/events?end=2024-13-01", 400, "end: not a time"),
    ("/events?since=forever", 400, "since"),
    ("/events?source=not-an-ip", 400, "source"),
    ("/events?limit=1000000", 400, "limit"),
    ("/greylist?since=1x", 400, "since"),
    ("/nothing/here", 404, "Not Found"),
])
def test_bad_input(client, url, status, message):
    r = get(client, url)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_missing_tables_give_empty_answers(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(str(path)).close()
    c = make_client(str(path))
    assert get(c, "/q/host/10.1.0.1").json()["count"] == 0
    assert sum(p["bytes"] for p in get(c, "/traffic").json()["points"]) == 0
    assert get(c, "/top/talkers").json()["rows"] == []
    assert get(c, "/events").json()["events"] == []
    assert get(c, "/stats").json()["totals"]["agents_seen"] == 0


def test_missing_database_is_503(tmp_path):
    c = make_client(str(tmp_path / "absent.db"))
    for url in ("/q/host/10.1.0.1", "/traffic", "/top/talkers", "/stats"):
        r = get(c, url)
        assert r.status_code == 503 and "cannot open" in r.json()["error"], url
    assert not (tmp_path / "absent.db").exists()


def test_openapi_describes_every_route(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/q/{clauses}", "/status/{qid}", "/ids", "/traffic", "/traffic.csv", "/top/{dimension}", "/events",
              "/greylist", "/greylist.csv", "/stats", "/metrics", "/healthz", "/", "/range"):
        assert p in paths and "get" in paths[p], p
    params = {x["name"] for x in paths["/traffic"]["get"]["parameters"]}
    assert params == {"period", "agent", "if_name", "by", "end"}
    assert {"400", "401", "503"} <= set(paths["/q/{clauses}"]["get"]["responses"])
    assert "text/csv" in paths["/q/{clauses}"]["get"]["responses"]["200"]["content"]
