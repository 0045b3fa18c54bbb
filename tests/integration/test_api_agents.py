"""GET /agents over PostgreSQL (the same answers as over SQLite, tests/unit/api/test_agents.py) and from
a real `myason api` process over a SQLite store."""
import calendar
import json
import time

import pytest
from fastapi.testclient import TestClient

from myason.api.app import create_app
from myason.api.config import ApiConfig
from myason.api.db import PostgresDatabase
from tests.support.api import A, AGENTS, AUTH, B, C, D, NOW, OLD, TOKEN, ApiProcess, agents_answer, fill, row, write_store

pytest.importorskip("psycopg")


def test_agents_over_postgresql(pg):
    fill(pg, [("a", A + B + C + D + OLD, [])], NOW)
    db = PostgresDatabase(pg, pool_size=2, timeout=10)
    client = TestClient(create_app(ApiConfig(database={"type": "postgresql", "dsn": pg}), db, TOKEN,
                                   clock=lambda: NOW), raise_server_exceptions=False)
    try:
        for query, expected in AGENTS:
            r = client.get("/agents?" + query, headers=AUTH)
            assert r.status_code == 200, (query, r.text)
            assert r.json() == agents_answer(expected), query
    finally:
        db.close()


def test_agents_from_a_real_process_over_sqlite(tmp_path):
    """Flows of a minute ago on the real clock: both agents, their interfaces, the minute they were last seen."""
    now = time.time()
    t = now - 60
    rows = [row("10.1.0.1", "192.0.2.1", 40000, 443, 6, 100, t), row("10.1.0.2", "192.0.2.2", 40001, 53, 17, 100,
                                                                       t - 600, agent="edge-2", if_name="eth1"),
            row("10.1.0.3", "192.0.2.3", 40002, 22, 6, 100, t - 1200, if_name="eth2")]
    db = write_store(str(tmp_path / "flows.db"), rows)
    api = ApiProcess("token: %s\ndatabase: {type: sqlite, path: %s}\n" % (TOKEN, db), tmp_path)
    try:
        body = api.json("agents?since=1h")
        assert [(a["agent"], a["interfaces"]) for a in body["agents"]] == [("edge-1", ["eth0", "eth2"]),
                                                                             ("edge-2", ["eth1"])]
        # The end of the minute holding the flow, or now when that minute is still going on.
        minute_end = min((t // 60 + 1) * 60, time.time())
        last = calendar.timegm(time.strptime(body["agents"][0]["last_seen"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert t < last <= minute_end + 1
        assert api.json("agents?since=10m")["agents"][0]["agent"] == "edge-1"
        status, text = api.get("agents", auth=False)
        assert status == 401 and "bearer" in json.loads(text)["error"]
    finally:
        assert api.stop() == 0
