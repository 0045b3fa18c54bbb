"""Events by probe: two agents replay into one real collector, which stores the events of its real
detectors in SQLite and PostgreSQL; each event names the agents whose flows made it
(`_Myason.Agents`, the `agents` column), and /events?agent=<probe id> finds exactly those, while
?agent=<the collector's node name> still finds them all."""
import time
import uuid

import pytest

from tests.support import collector as col
from tests.support import trafficgen as gen
from tests.support.api import AUTH, TOKEN
from tests.support.attacks import syn
from tests.support.services import wait_until
from tests.support.stores import pg_query

EDGE1, EDGE2 = "edge-1", "edge-2"
NODE = "org.example.test"
# Who scans, and which probes see its probes: one probe each, and one scan crossing both taps.
SCANS = {"203.0.113.11": (EDGE1,), "203.0.113.22": (EDGE2,), "203.0.113.33": (EDGE1, EDGE2)}


def _frames(t0):
    """{agent: [(t, frame)]}: 60 hosts on tcp/22 per scanner, each probe on one of its probes."""
    out = {EDGE1: [], EDGE2: []}
    for n, (src, probes) in enumerate(SCANS.items()):
        for i in range(60):
            frame = syn(t0 + n * 5 + i * 0.05, src, "10.0.%d.%d" % (n + 1, i + 1), 50000, 22)
            out[probes[i % len(probes)]].append(frame)
    return out


@pytest.fixture(scope="module")
def stored(tmp_path_factory, servers):
    """{kind: store location} after both agents' replays and the collector's shutdown."""
    import psycopg
    tmp = tmp_path_factory.mktemp("agents")
    stores = {"sqlite": str(tmp / "flows.db")}
    writers = [{"type": "sqlite", "path": stores["sqlite"]}]
    name = None
    if servers.pg_dsn:
        name = "t_%s" % uuid.uuid4().hex[:12]
        pg_query(servers.pg_dsn, "CREATE DATABASE %s" % name)
        stores["postgresql"] = psycopg.conninfo.make_conninfo(servers.pg_dsn, dbname=name)
        writers.append({"type": "postgresql", "dsn": stores["postgresql"]})
    c = col.Collector(tmp / "c", writers, agents=(EDGE1, EDGE2), node_name=NODE)
    exported = 0
    with c:
        for agent, frames in _frames(time.time() - 60).items():
            pcap = tmp / ("%s.pcap" % agent)
            gen.write_pcap(pcap, frames)
            col.run_agent(c.agent_conf(agent), [pcap], output=tmp / ("%s.csv" % agent))
            exported += len((tmp / ("%s.csv" % agent)).read_text().splitlines()) - 1
        assert exported == 180
        wait_until(lambda: col.sqlite_count(stores["sqlite"]) == exported, timeout=30)
        assert c.stop() == 0       # shutdown closes every detector window and commits every spool
    yield stores
    if name:
        pg_query(servers.pg_dsn, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def _client(kind, where):
    from fastapi.testclient import TestClient

    from myason.api.app import create_app
    from myason.api.config import ApiConfig
    from myason.api.db import open_database
    spec = {"type": kind, ("dsn" if kind == "postgresql" else "path"): where}
    return TestClient(create_app(ApiConfig(database=spec, token=TOKEN), open_database(spec, 2, 10.0), TOKEN),
                      raise_server_exceptions=False)


def _stored_agents(kind, where):
    """{IDEA ID: the `agents` column} as the writer stored it."""
    if kind == "postgresql":
        return {str(i): list(a) for i, a in pg_query(where, "SELECT id, agents FROM events")}
    import json
    import sqlite3
    conn = sqlite3.connect(where)
    try:
        return {i: json.loads(a) for i, a in conn.execute("SELECT id, agents FROM events")}
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_events_by_probe_and_by_collector(stored, kind):
    if kind not in stored:
        pytest.skip("PostgreSQL not started")
    client = _client(kind, stored[kind])

    def events(query=""):
        r = client.get("/events?since=1h&limit=100" + query, headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()["events"]

    every = events()
    assert len(every) == len(SCANS), [e["Description"] for e in every]
    by_source = {e["Source"][0]["IP4"][0]: e for e in every}
    assert set(by_source) == set(SCANS)
    for src, probes in SCANS.items():
        ev = by_source[src]
        assert ev["_Myason"] == {"Agents": sorted(probes)} and ev["agents"] == sorted(probes)
        assert ev["Node"][0]["Name"] == NODE and ev["ConnCount"] == 60
    assert _stored_agents(kind, stored[kind]) == {e["ID"]: e["agents"] for e in every}
    for probe in (EDGE1, EDGE2):
        want = {by_source[s]["ID"] for s, probes in SCANS.items() if probe in probes}
        assert {e["ID"] for e in events("&agent=" + probe)} == want and len(want) == 2, probe
    assert {e["ID"] for e in events("&agent=" + NODE)} == {e["ID"] for e in every}
    for other in ("edge-3", "edge", "org.example"):
        assert events("&agent=" + other) == [], other
    # With the other filters: the shared scan is the one from its source on either probe.
    assert [e["ID"] for e in events("&agent=%s&source=203.0.113.33" % EDGE2)] == [by_source["203.0.113.33"]["ID"]]
