"""The API over a real PostgreSQL: in-process answers on known data, then a real `myason api` process."""
import csv
import io
import os
import time

import pytest
from fastapi.testclient import TestClient

from myason.api import queries
from myason.api.app import create_app
from myason.api.config import ApiConfig
from myason.api.db import PostgresDatabase
from tests.support.api import A, AUTH, B, C, D, NOW, REPLIES, TOKEN, ApiProcess, fill, idea, row
from tests.support.stores import pg_query

psycopg = pytest.importorskip("psycopg")


# -- in process, fixed clock ------------------------------------------------------------------------

def test_answers_on_known_data(pg):
    fill(pg, [("a", A, [idea(1, NOW - 600), idea(2, NOW - 300, "Attempt.Login", "198.51.100.1")]),
              ("b", B + C, []), ("d", D, [])], NOW,
         health={"datagrams": 40, "flows_spooled": 36, "rejects": {"bad_token": 2}, "spool": {},
                 "agents": {"edge-1": {"last_seen": NOW - 5, "datagrams": 30, "flows": 26, "gaps": 4}}})
    db = PostgresDatabase(pg, pool_size=2, timeout=10)
    client = TestClient(create_app(ApiConfig(database={"type": "postgresql", "dsn": pg}), db, TOKEN,
                                   clock=lambda: NOW), raise_server_exceptions=False)

    def get(url, **kw):
        r = client.get(url, headers={**AUTH, **kw.pop("headers", {})}, **kw)
        assert r.status_code == 200, (url, r.text)
        return r

    try:
        body = get("/q/host/10.1.0.1/limit/5").json()
        assert body["count"] == 5 and body["truncated"] and body["rows"][0][0] == queries.iso(A[-1][8])
        assert dict(zip(body["columns"], body["rows"][0]))["src_ip"] == "10.1.0.1"
        for path, count in (("net/10.0.0.0/8", 31), ("net/2001:db8::/32", 5), ("host/2001:db8::2", 5),
                            ("port/53/proto/udp", 10), ("agent/edge-2", 10), ("after/10m", 1),
                            ("after/2023-11-15T09:10:00Z/before/2023-11-15T09:15:00Z", 5), ("dst/10.1.0.1", 0)):
            assert get("/q/" + path).json()["count"] == count, path
        rows = list(csv.reader(io.StringIO(get("/q/src/10.1.0.2.csv").text)))
        assert rows[0][:3] == ["first", "last", "agent"] and len(rows) == 11
        points = get("/traffic?period=1h&by=proto").json()["points"]
        by = {}
        for p in points:
            by[p["key"]] = by.get(p["key"], 0) + p["bytes"]
        assert by == {"tcp": 5000, "udp": 1000, "icmpv6": 320}
        assert sum(p["bytes"] for p in get("/traffic?period=1d").json()["points"]) == 26320
        assert sum(p["bytes"] for p in get("/traffic?period=1y&agent=edge-2").json()["points"]) == 1000
        assert [(r["key"], r["bytes"]) for r in get("/top/talkers?period=1d").json()["rows"][:4]] == [
            ("10.1.0.1", 20000), ("192.0.2.10", 20000), ("10.9.9.9", 5000), ("192.0.2.99", 5000)]
        assert [r["key"] for r in get("/top/ports?period=1d&limit=3").json()["rows"]] == ["443", "8443", "53"]
        assert [r["key"] for r in get("/top/protocols?period=1w").json()["rows"]] == ["tcp", "udp", "icmpv6"]
        assert [r["key"] for r in get("/top/countries?period=1d").json()["rows"]] == ["CZ", "US"]
        assert [e["ID"][-1] for e in get("/events").json()["events"]] == ["2", "1"]
        assert [e["ID"][-1] for e in get("/events?source=203.0.113.66").json()["events"]] == ["1"]
        assert len(get("/greylist").json()["rows"]) == 2
        s = get("/stats").json()
        assert s["totals"]["agents_seen"] == 1 and s["totals"]["gaps"] == 4 and s["rejects_by_reason"] == {"bad_token": 2}
        assert s["database"]["type"] == "postgresql" and s["database"]["size_bytes"] > 1000000
        r = client.get("/q/net/10.0.0.0/33", headers=AUTH)
        assert r.status_code == 400 and "not a network" in r.json()["error"]
    finally:
        db.close()


def test_service_ports_range_and_end(pg):
    """The same answers as over SQLite (tests/unit/api/test_app_sqlite.py) for items of the rollups."""
    fill(pg, [("a", A, [idea(1, NOW - 600)]), ("r", REPLIES, [])], NOW)
    db = PostgresDatabase(pg, pool_size=2, timeout=10)
    client = TestClient(create_app(ApiConfig(database={"type": "postgresql", "dsn": pg}), db, TOKEN,
                                   clock=lambda: NOW), raise_server_exceptions=False)

    def get(url):
        r = client.get(url, headers=AUTH)
        assert r.status_code == 200, (url, r.text)
        return r.json()

    try:
        assert [(r["key"], r["bytes"], r["flows"]) for r in get("/top/ports?period=1h")["rows"]] == [
            ("443", 36394, 8), ("3306", 7300, 2), ("5000", 900, 2), ("53", 50, 1)]
        assert [r["key"] for r in get("/top/dst_port?period=1h&limit=3")["rows"]] == ["2048", "50000", "50001"]
        # A's twenty minutes reach 1d buckets only through the 15m/1h lists: service ports there too.
        assert get("/top/ports?period=1w")["rows"][0] == {"key": "443", "bytes": 56394, "packets": 280, "flows": 28}
        assert get("/range") == {"first": queries.iso(NOW - 3 * 3600), "last": queries.iso(NOW - 180)}
        body = get("/traffic?period=1h&end=2h")
        assert (body["start"], body["end"]) == ("2023-11-15T09:07:00.000Z", "2023-11-15T10:07:00.000Z")
        assert sum(p["bytes"] for p in body["points"]) == 1000 * sum(
            1 for r in A if NOW - 3 * 3600 <= r[8] < NOW - 2 * 3600)
        assert get("/top/talkers?period=1h&end=2h")["rows"][0]["key"] == "10.1.0.1"
        assert [e["ID"][-1] for e in get("/events?since=1h&end=9m")["events"]] == ["1"]
        assert get("/events?since=1h&end=11m")["events"] == []
    finally:
        db.close()


def test_database_down_is_503(pg):
    bad = PostgresDatabase(psycopg.conninfo.make_conninfo(pg, port="1"), timeout=2)     # nothing listens there
    client = TestClient(create_app(ApiConfig(database={"type": "postgresql", "dsn": pg}), bad, TOKEN),
                        raise_server_exceptions=False)
    r = client.get("/q/host/10.0.0.1", headers=AUTH)
    assert r.status_code == 503 and "cannot connect" in r.json()["error"]


def test_pooled_connection_killed_under_it_is_replaced(pg):
    fill(pg, [("b", B, [])], NOW)
    db = PostgresDatabase(pg, pool_size=2, timeout=10)
    client = TestClient(create_app(ApiConfig(database={"type": "postgresql", "dsn": pg}, query_cache_size=0), db,
                                   TOKEN, clock=lambda: NOW), raise_server_exceptions=False)
    try:
        assert client.get("/q/host/10.1.0.2", headers=AUTH).json()["count"] == 10
        killed = pg_query(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE application_name = 'myason-api' AND datname = current_database()")
        assert killed == [(True,)]
        r = client.get("/q/host/10.1.0.2", headers=AUTH)
        assert r.status_code == 200 and r.json()["count"] == 10
    finally:
        db.close()


# -- a real process ---------------------------------------------------------------------------------

def test_real_process_over_postgresql(pg, tmp_path):
    now = time.time()
    rows = [row("10.7.0.1", "192.0.2.70", 1000 + i, 443, 6, 700, now - 600 + i) for i in range(30)]
    fill(pg, [("p", rows, [idea(9, now - 60)])], now)
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    os.chmod(token_file, 0o600)
    # The database comes from a collector config's first SQL writer, as in production.
    collector = tmp_path / "collector.yaml"
    collector.write_text("writers:\n  - {type: jsonl, path: %s}\n  - {type: postgresql, dsn: '%s'}\n"
                         % (tmp_path / "x.jsonl", pg))
    api = ApiProcess("token_file: %s\n" % token_file, tmp_path, ("-cc", str(collector)))
    try:
        # The token is read from the file and never printed (it would land in the journal).
        assert api.token == "file-token" and "file-token" not in api.line and str(token_file) in api.line
        assert api.get("q/host/10.7.0.1", auth=False)[0] == 401
        body = api.json("q/host/10.7.0.1/after/1h")
        assert body["count"] == 30 and body["rows"][0][4] == "10.7.0.1"
        assert api.json("status/" + body["id"])["state"] == "done"
        assert api.json("ids")["ids"] == [body["id"]]
        status, text = api.get("q/host/10.7.0.1", accept="text/csv")
        assert status == 200 and len(text.splitlines()) == 31
        assert sum(p["bytes"] for p in api.json("traffic?period=1h")["points"]) == 21000
        assert api.json("top/talkers?period=1h")["rows"][0] == {"key": "10.7.0.1", "bytes": 21000, "packets": 300,
                                                                 "flows": 30}
        assert len(api.json("events")["events"]) == 1
        assert api.json("stats")["database"]["flows_estimate"] is not None
        assert api.get("q/nonsense")[0] == 400
        status, page = api.get("", auth=False)
        assert status == 200 and "<html" in page.lower()
        assert "myason_api_requests_total" in api.get("metrics")[1]
    finally:
        code = api.stop()
    assert code == 0, api.proc.stderr.read()
