"""Event search on real PostgreSQL and SQLite stores: /events filters and cursor paging, /events/{id},
the flows link of a real detection (agent -> collector -> both stores), and events retention."""
import json
import random
import sqlite3
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from myason.api import queries
from myason.api.app import create_app
from myason.api.config import ApiConfig
from myason.api.db import open_database
from myason.cli import main
from myason.store.base import writer_class
from tests.support import collector as col
from tests.support import trafficgen as gen
from tests.support.api import AUTH, NOW, TOKEN
from tests.support.attacks import ATTACKERS, DETECT, attacks
from tests.support.services import wait_until
from tests.support.stores import pg_query

CATEGORIES = ("Recon.Scanning", "Attempt.Login", "Availability.DoS")
NODES = ("org.example.north", "org.example.south")


def idea(rng, t, sources, targets, category, node):
    """A stored-style IDEA event with a random UUID4, detected at t (whole seconds)."""
    def part(addrs):
        return {"IP4": [a for a in addrs if ":" not in a], "IP6": [a for a in addrs if ":" in a], "Proto": ["tcp"]}
    return {"Format": "IDEA0", "ID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "DetectTime": queries.iso(t)[:19] + "Z", "Category": [category],
            "EventTime": queries.iso(t - 120)[:19] + "Z", "CeaseTime": queries.iso(t - 60)[:19] + "Z",
            "Source": [part(sources)], "Target": [{**part(targets), "Port": [22]}],
            "Node": [{"Name": node, "SW": ["myason"]}], "Description": "test event"}


def corpus():
    """36 events over 12 minutes, three per detect second (ties broken by id), IPv4 and IPv6."""
    rng = random.Random(15)
    out = []
    for i in range(36):
        src = ("203.0.113.%d" % (i % 7), "198.51.100.%d" % i, "2001:db8:1::%x" % (i + 1))[i % 3]
        tgt = ("10.0.%d.%d" % (i % 2, i), "2001:db8:2::%x" % (i + 1))[i % 4 == 3]
        out.append(idea(rng, NOW - 3000 + (i // 3) * 60, [src], [tgt], CATEGORIES[i % 3 if i % 5 else 0],
                        NODES[i % 2]))
    return out


def newest_first(events):
    # Both stores order ids as lowercase hex text (PostgreSQL's uuid order is the same).
    return sorted(events, key=lambda e: (e["DetectTime"], e["ID"]), reverse=True)


def open_writer(kind, where, **options):
    w = writer_class(kind)(**({"dsn": where} if kind == "postgresql" else {"path": where}), **options)
    w.clock = lambda: NOW
    w.open()
    return w


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """(kind, dsn or path) of an empty store of each kind."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "events.db")
    return "postgresql", request.getfixturevalue("pg")


def client_of(kind, where, clock=lambda: NOW, **cfg):
    spec = {"type": kind, ("dsn" if kind == "postgresql" else "path"): where}
    db = open_database(spec, 2, 10.0)
    return TestClient(create_app(ApiConfig(database=spec, token=TOKEN, **cfg), db, TOKEN, clock=clock),
                      raise_server_exceptions=False)


def get(client, url):
    r = client.get(url, headers=AUTH)
    assert r.status_code == 200, (url, r.text)
    return r.json()


def stored_document(kind, where, event_id):
    if kind == "postgresql":
        return pg_query(where, "SELECT event FROM events WHERE id = %s::uuid", (event_id,))[0][0]
    conn = sqlite3.connect(where)
    try:
        return json.loads(conn.execute("SELECT event FROM events WHERE id = ?", (event_id,)).fetchone()[0])
    finally:
        conn.close()


def _addresses(ev, side):
    return [a for part in ev[side] for a in part.get("IP4", []) + part.get("IP6", [])]


def _inside(addr, place):
    import ipaddress
    return ipaddress.ip_address(addr) in ipaddress.ip_network(place)


FILTERS = [
    {}, {"category": "Attempt.Login"}, {"agent": NODES[1]}, {"source": "203.0.113.3"},
    {"source": "203.0.113.0/24"}, {"source": "2001:db8:1::/48"}, {"source": "2001:db8:1::6"},
    {"target": "10.0.1.0/24"}, {"target": "2001:db8:2::/64"}, {"target": "10.0.0.4"},
    {"source": "198.51.100.0/24", "target": "10.0.0.0/16"}, {"category": "Recon.Scanning", "agent": NODES[0]},
    {"source": "::/0", "category": "Availability.DoS", "target": "10.0.0.0/8", "agent": NODES[1]},
    {"start": "2023-11-15T11:24:00Z", "end": "2023-11-15T11:27:00Z"}, {"since": "5m", "end": "45m"},
    {"start": "2023-11-15T11:26:00Z", "source": "2001:db8::/32"}, {"source": "192.0.2.0/24"},
]


def matches(ev, f):
    t = ev["DetectTime"]
    if "start" in f and t < f["start"]:
        return False
    if f.get("end") == "2023-11-15T11:27:00Z" and t >= f["end"]:
        return False
    if f.get("since") == "5m" and not queries.iso(NOW - 50 * 60)[:19] <= t[:19] < queries.iso(NOW - 45 * 60)[:19]:
        return False
    if "category" in f and f["category"] not in ev["Category"]:
        return False
    if "agent" in f and f["agent"] not in [n["Name"] for n in ev["Node"]]:
        return False
    for key, side in (("source", "Source"), ("target", "Target")):
        if key in f and not any(_inside(a, f[key]) for a in _addresses(ev, side)):
            return False
    return True


def test_filters_paging_document_and_404(store):
    kind, where = store
    events = corpus()
    w = open_writer(kind, where)
    assert w.write("e", [], events)
    client = client_of(kind, where)
    # Each filter alone and combined, the CIDRs in IPv4 and IPv6, against the same filters in Python.
    for f in FILTERS:
        query = "&".join("%s=%s" % kv for kv in f.items())
        got = get(client, "/events?since=1d&limit=1000&" + query if "start" not in f and "since" not in f
                  else "/events?limit=1000&" + query)
        want = [e["ID"] for e in newest_first(events) if matches(e, f)]
        assert [e["id"] for e in got["events"]] == want, f
        assert got["next"] is None
        assert want or f in ({"source": "192.0.2.0/24"},), f
    assert len({tuple(sorted(f)) for f in FILTERS if f}) > 5
    # Paging with a small limit: every event once, in order, though events are stored between pages;
    # newer ones and one tied with the cursor's time but sorting before it never show up.
    rng = random.Random(7)
    stored = list(events)
    ids, cursor, pages = [], None, 0
    while True:
        page = get(client, "/events?since=1d&limit=4" + ("&cursor=" + cursor if cursor else ""))
        ids += [e["id"] for e in page["events"]]
        assert [e["ID"] for e in page["events"]] == [e["id"] for e in page["events"]]
        cursor, pages = page["next"], pages + 1
        if cursor is None:
            break
        last = next(e for e in events if e["ID"] == ids[-1])
        late = [idea(rng, NOW - 30, ["203.0.113.200"], ["10.0.0.1"], "Recon.Scanning", NODES[0]),
                {**idea(rng, 0, ["203.0.113.201"], ["10.0.0.1"], "Recon.Scanning", NODES[0]),
                 "DetectTime": last["DetectTime"], "ID": "ffffffff-ffff-4fff-bfff-%012d" % pages}]
        assert w.write("late-%d" % pages, [], late)
        stored += late
    assert ids == [e["ID"] for e in newest_first(events)] and pages == 9
    # A filtered walk pages too, and a cursor keeps its window while the clock moves on.
    page = get(client, "/events?since=1d&limit=2&category=Recon.Scanning")
    later = client_of(kind, where, clock=lambda: NOW + 86400)
    rest = get(later, "/events?since=1d&limit=1000&category=Recon.Scanning&cursor=" + page["next"])
    want = [e["ID"] for e in newest_first(stored) if "Recon.Scanning" in e["Category"]]
    assert [e["id"] for e in page["events"] + rest["events"]] == want and len(want) > len(events) // 3
    w.close()
    # One event: the stored document as it is, and its flows link.
    for ev in events[:3]:
        body = get(client, "/events/" + ev["ID"])
        assert body["id"] == ev["ID"] and body["idea"] == ev == stored_document(kind, where, ev["ID"])
        assert body["flows"]["url"] == "/q/" + body["flows"]["clauses"]
        assert get(client, body["flows"]["url"])["query"].startswith(body["flows"]["clauses"])
    for unknown in (str(uuid.uuid4()), "not-an-id", "x" * 100):
        r = client.get("/events/" + unknown, headers=AUTH)
        assert r.status_code == 404 and "no stored event" in r.json()["error"], unknown
    # Bad input: a clear 400 naming the parameter.
    for url, message in (("/events?cursor=abc", "cursor: not a cursor"), ("/events?source=10.0.0.0/33", "source"),
                         ("/events?target=host", "target"), ("/events?since=1h&start=2h", "not both"),
                         ("/events?start=1h&end=2h", "start must be before end"), ("/events?start=x", "start"),
                         ("/events?agent=a/b", "agent")):
        r = client.get(url, headers=AUTH)
        assert r.status_code == 400 and message in r.json()["error"], (url, r.text)


def test_events_retention_by_myason_maintain(store, tmp_path, capsys):
    kind, where = store
    rng = random.Random(3)
    old = [idea(rng, NOW - 3 * 86400 + i * 3600, ["203.0.113.1"], ["10.0.0.1"], "Recon.Scanning", NODES[0])
           for i in range(5)]
    edge = idea(rng, NOW - 86400 + 60, ["203.0.113.2"], ["10.0.0.1"], "Recon.Scanning", NODES[0])
    new = [idea(rng, NOW - 600 + i, ["203.0.113.3"], ["10.0.0.1"], "Attempt.Login", NODES[1]) for i in range(4)]
    w = open_writer(kind, where)
    assert w.write("e", [], old + [edge] + new)
    w.close()
    place = "dsn: '%s'" % where if kind == "postgresql" else "path: %s" % where
    conf = tmp_path / "collector.yaml"
    conf.write_text("writers:\n  - {type: %s, %s, events_retention: 1d, maintain_interval: 0}\n" % (kind, place))
    assert main(["maintain", "-cc", str(conf), "--now", queries.iso(NOW)[:19] + "Z"]) == 0
    assert "events=5" in capsys.readouterr().out
    client = client_of(kind, where)
    left = get(client, "/events?since=30d&limit=100")["events"]
    assert [e["id"] for e in left] == [e["ID"] for e in newest_first([edge] + new)]
    # Nothing more is due: a second run deletes none; 0 keeps everything.
    assert main(["maintain", "-cc", str(conf), "--now", queries.iso(NOW)[:19] + "Z"]) == 0
    assert "events=" not in capsys.readouterr().out
    conf.write_text("writers:\n  - {type: %s, %s, events_retention: 0}\n" % (kind, place))
    assert main(["maintain", "-cc", str(conf), "--now", queries.iso(NOW + 30 * 86400)[:19] + "Z"]) == 0
    assert len(get(client, "/events?since=60d&limit=100")["events"]) == 5
    conf.write_text("writers:\n  - {type: %s, %s, events_retention: soon}\n" % (kind, place))
    assert main(["maintain", "-cc", str(conf)]) == 2
    assert "events_retention" in capsys.readouterr().err


# -- the flows of real detections -------------------------------------------------------------------

@pytest.fixture(scope="module")
def detected(tmp_path_factory, servers):
    """Crafted attacks through agent -> collector -> SQLite and PostgreSQL; {kind: store location}."""
    import psycopg
    tmp = tmp_path_factory.mktemp("detected")
    stores = {"sqlite": str(tmp / "flows.db")}
    writers = [{"type": "sqlite", "path": stores["sqlite"]}]
    if servers.pg_dsn:
        name = "t_%s" % uuid.uuid4().hex[:12]
        pg_query(servers.pg_dsn, "CREATE DATABASE %s" % name)
        stores["postgresql"] = psycopg.conninfo.make_conninfo(servers.pg_dsn, dbname=name)
        writers.append({"type": "postgresql", "dsn": stores["postgresql"]})
    pcap = tmp / "attacks.pcap"
    gen.write_pcap(pcap, attacks(time.time() - 60))
    c = col.Collector(tmp / "c", writers, enrich={"local_networks": ["10.0.0.0/8"]}, detect=DETECT,
                      node_name="org.example.test")
    with c:
        col.run_agent(c.agent_conf(), [pcap], output=tmp / "exported.csv")
        exported = len((tmp / "exported.csv").read_text().splitlines()) - 1
        wait_until(lambda: col.sqlite_count(stores["sqlite"]) == exported, timeout=30)
        assert c.stop() == 0       # shutdown closes every detector window and commits every spool
    yield stores
    if "postgresql" in stores:
        pg_query(servers.pg_dsn, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_flows_link_finds_the_flows_of_each_detection(detected, kind):
    if kind not in detected:
        pytest.skip("PostgreSQL not started")
    client = client_of(kind, detected[kind], clock=time.time, max_limit=5000)
    events = get(client, "/events?since=1h&limit=100")["events"]
    assert len(events) == 5, events
    for listed in events:
        body = get(client, "/events/" + listed["id"])
        ev = body["idea"]
        assert ev == {k: v for k, v in listed.items() if k not in ("id", "agents")}
        assert listed["agents"] == ev["_Myason"]["Agents"] == [col.AGENT_ID]
        found = get(client, body["flows"]["url"])
        assert not found["truncated"]
        rows = [dict(zip(found["columns"], r)) for r in found["rows"]]
        sources, targets = set(_addresses(ev, "Source")), set(_addresses(ev, "Target"))
        # Only flows between the event's sources and targets, and at least every flow it counted.
        between = [r for r in rows if (r["src_ip"] in sources and r["dst_ip"] in targets)
                   or (r["src_ip"] in targets and r["dst_ip"] in sources)]
        assert len(between) == len(rows) >= ev["ConnCount"], (ev["Description"], body["flows"], len(rows))
        if sources == {ATTACKERS["hscan"]}:
            # The horizontal scan: exactly its 60 probes, one per target, on tcp/22.
            assert body["flows"]["clauses"].startswith("host/%s/net/10.0.1.0/26/port/22/proto/6/after/"
                                                       % ATTACKERS["hscan"])
            assert len(rows) == 60 and {r["dst_ip"] for r in rows} == targets
            assert {(r["src_ip"], r["dst_port"], r["proto"]) for r in rows} == {(ATTACKERS["hscan"], 22, 6)}
