"""Docket-style background flow searches over real SQLite and PostgreSQL stores and a real `myason api`:
202 then the result by id, the state history, the default time bound, searches in flight run once,
the full queue, expiry, the spool's cap, and what a restart does with the spool."""
import csv
import io
import json
import os
import stat
import threading
import time

import pytest
from fastapi.testclient import TestClient

from myason.api.app import create_app
from myason.api.config import ApiConfig
from tests.support.api import A, AUTH, B, C, D, NOW, TOKEN, ApiProcess, TableLock, fill, row, write_store
from tests.support.services import wait_until

OLD = row("10.1.0.77", "192.0.2.77", 41000, 22, 6, 700, NOW - 25 * 3600)      # beyond the default bound
RECENT = row("10.1.0.77", "192.0.2.77", 41001, 22, 6, 700, NOW - 1800)
VOLATILE = ("elapsed", "cached")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """The harness's rows (and two flows of 10.1.0.77, one 25 h old) in a real store at NOW."""
    rows = A + B + C + D + [OLD, RECENT]
    if request.param == "sqlite":
        return {"type": "sqlite", "path": write_store(str(tmp_path / "flows.db"), rows)}
    dsn = request.getfixturevalue("pg")
    fill(dsn, [("a", rows, [])], NOW)
    return {"type": "postgresql", "dsn": dsn}


def client_for(database, **cfg):
    app = create_app(ApiConfig(database=database, token=TOKEN, **cfg), clock=lambda: NOW)
    return TestClient(app, raise_server_exceptions=False)


def closing(client):
    client.app.state.searches.close()
    client.app.state.db.close()


def get(client, url, status=200, **kw):
    r = client.get(url, headers={**AUTH, **kw.pop("headers", {})}, **kw)
    assert r.status_code == status, (url, r.status_code, r.text)
    return r


def fetched(client, qid, suffix=""):
    """The result of `qid` once it is no longer 202."""
    r = wait_until(lambda: (lambda r: r if r.status_code != 202 else None)(
        client.get("/result/" + qid + suffix, headers=AUTH)), timeout=20)
    assert r.status_code == 200, r.text
    return r


def stable(body):
    return {k: v for k, v in body.items() if k not in VOLATILE}


def test_wait_0_answers_202_and_the_result_by_id_equals_the_synchronous_answer(database):
    client = client_for(database, query_cache_size=0)      # every request runs: no cached answer
    try:
        sync = get(client, "/q/net/10.0.0.0/8/limit/25").json()
        assert sync["count"] == 25 and sync["truncated"] and sync["bound"] == "after/24h (default)"
        r = get(client, "/q/net/10.0.0.0/8/limit/25?wait=0", status=202)
        accepted = r.json()
        qid = accepted["id"]
        assert accepted == {"id": qid, "query": "net/10.0.0.0/8/after/1d/limit/25", "state": accepted["state"],
                            "status_url": "/status/" + qid, "result_url": "/result/" + qid}
        assert accepted["state"] in ("queued", "running") and r.headers["location"] == "/result/" + qid
        assert qid == sync["id"]
        later = fetched(client, qid).json()
        assert stable(later) == stable(sync) and later["cached"] is False
        sync_csv = get(client, "/q/net/10.0.0.0/8/limit/25.csv").text
        assert fetched(client, qid, ".csv").text == sync_csv
        assert get(client, "/result/" + qid, headers={"Accept": "text/csv"}).text == sync_csv
        assert len(list(csv.reader(io.StringIO(sync_csv)))) == 26
        # Three runs of the id (JSON, 202 then fetched, CSV), each queued -> running -> done.
        st = get(client, "/status/" + qid).json()
        assert [h["state"] for h in st["history"]] == ["queued", "running", "done"] * 3
        ats = [h["at"] for h in st["history"]]
        assert ats == sorted(ats) and all(a.endswith("Z") for a in ats)
        assert st["state"] == "done" and st["rows"] == 25 and st["truncated"] and st["seconds"] >= 0
        assert st["bytes"] > 0 and st["error"] is None and st["expires"] > ats[-1]
        assert get(client, "/result/0123456789abcdef", status=404).json()["error"] == "unknown query id 0123456789abcdef"
        assert get(client, "/ids").json()["ids"][0] == qid
    finally:
        closing(client)


def test_the_default_bound_is_stated_and_applied(database):
    client = client_for(database)
    try:
        body = get(client, "/q/host/10.1.0.77").json()
        assert body["bound"] == "after/24h (default)" and body["query"] == "host/10.1.0.77/after/1d/limit/100"
        assert body["count"] == 1 and body["rows"][0][5] == 41001       # the flow 25 h old is not there
        for path, bound in (("host/10.1.0.77/after/2d", "after/2d"), ("host/10.1.0.77/before/1h", "before/1h"),
                            ("after/26h/host/10.1.0.77/before/2023-11-15T12:00:00Z",
                             "after/26h/before/2023-11-15T12:00:00Z")):
            body = get(client, "/q/" + path).json()
            assert body["bound"] == bound and 41000 in [r[5] for r in body["rows"]], path
    finally:
        closing(client)
    unbounded = client_for(database, default_bound=0)
    try:
        body = get(unbounded, "/q/host/10.1.0.77").json()
        assert body["bound"] == "none" and body["query"] == "host/10.1.0.77/limit/100" and body["count"] == 2
    finally:
        closing(unbounded)


def metric(client, name):
    for line in get(client, "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError("no metric %s" % name)


def test_identical_searches_in_flight_run_once(pg):
    fill(pg, [("a", A + B, [])], NOW)
    client = client_for({"type": "postgresql", "dsn": pg})
    lock = TableLock(pg, "flows")
    try:
        answers = [None] * 4

        def ask(i):
            answers[i] = client.get("/q/host/10.1.0.1?wait=0", headers=AUTH)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert [a.status_code for a in answers] == [202] * 4 and len({a.json()["id"] for a in answers}) == 1
        qid = answers[0].json()["id"]
        # The one execution waits for the lock in the database; the others joined it.
        wait_until(lambda: lock.waiting("SELECT %FROM flows%") == 1, timeout=20)
        st = get(client, "/status/" + qid).json()
        assert st["state"] == "running" and st["shared"] == 3
        assert get(client, "/result/" + qid, status=202).json()["state"] == "running"
    finally:
        lock.release()
    try:
        assert fetched(client, qid).json()["count"] == 20
        assert metric(client, 'myason_api_searches_total{key="queued"}') == 1
        assert metric(client, 'myason_api_searches_total{key="shared"}') == 3
        assert metric(client, 'myason_api_cache_executions_total{key="query"}') == 1
    finally:
        closing(client)


def test_a_full_queue_answers_503_with_retry_after(pg):
    fill(pg, [("a", A + B, [])], NOW)
    client = client_for({"type": "postgresql", "dsn": pg}, search_workers=1, search_queue=1)
    lock = TableLock(pg, "flows")
    try:
        first = get(client, "/q/host/10.1.0.1?wait=0", status=202).json()
        wait_until(lambda: get(client, "/status/" + first["id"]).json()["state"] == "running", timeout=20)
        second = get(client, "/q/host/10.1.0.2?wait=0", status=202).json()
        assert second["state"] == "queued"
        r = get(client, "/q/host/10.1.0.3?wait=0", status=503)
        assert "search_queue is full" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
        assert metric(client, 'myason_api_searches_total{key="rejected"}') == 1
        assert metric(client, 'myason_api_searches_now{key="queued"}') == 1
        get(client, "/q/host/10.1.0.2?wait=0", status=202)        # the same search in the queue joins it
    finally:
        lock.release()
    try:
        assert fetched(client, first["id"]).json()["count"] == 20
        assert fetched(client, second["id"]).json()["count"] == 10
        assert get(client, "/q/host/10.1.0.3").json()["count"] == 0     # room again
    finally:
        closing(client)


# -- a real process ---------------------------------------------------------------------------------

def recent_store(path, n):
    """n flows of 10.3.x.x over the last hour (real time: a real process's clock)."""
    now = time.time()
    return write_store(path, [row("10.3.%d.%d" % (i // 250 % 250, i % 250 + 1), "192.0.2.%d" % (i % 200 + 1),
                                  1024 + i % 50000, 443, 6, 100 + i, now - 3600 + i * 3600 / n) for i in range(n)])


def config(db, spool, extra):
    return "database: {type: sqlite, path: %s}\ntoken: t0k\nresult_spool: %s\n%s" % (db, spool, extra)


def poll(api, path):
    return wait_until(lambda: (lambda r: r if r[0] != 202 else None)(api.get(path)), timeout=30)


def test_a_large_search_goes_to_the_background_and_a_restart_empties_the_spool(tmp_path):
    db, spool = recent_store(str(tmp_path / "flows.db"), 12000), tmp_path / "spool"
    api = ApiProcess(config(db, spool, "search_wait: 0.01\n"), tmp_path)
    try:
        # 10,000 rows to read, format and write: never done within 10 ms.
        status, text = api.get("q/net/10.0.0.0/8/limit/10000")
        assert status == 202, text
        qid = json.loads(text)["id"]
        status, text = poll(api, "result/" + qid)
        body = json.loads(text)
        assert status == 200 and body["count"] == 10000 and body["truncated"] and body["bound"] == "after/24h (default)"
        assert stat.S_IMODE(os.stat(spool).st_mode) == 0o700
        assert [n for n in os.listdir(spool) if n.endswith(".json")] == [qid + ".1.json"]
        st = api.json("status/" + qid)
        assert [h["state"] for h in st["history"]] == ["queued", "running", "done"] and st["rows"] == 10000
        status, text = api.get("result/" + qid + ".csv")
        assert status == 200 and len(text.splitlines()) == 10001
    finally:
        assert api.stop() == 0
    # A clean stop stops the workers and empties the spool.
    assert [n for n in os.listdir(spool) if n.endswith(".json")] == []
    # The ids die with the process: after a crash, the next one on the same spool removes them.
    crashed = ApiProcess(config(db, spool, "search_wait: 0.01\n"), tmp_path)
    try:
        status, text = crashed.get("q/net/10.0.0.0/8/limit/10000")
        qid = json.loads(text)["id"]
        assert poll(crashed, "result/" + qid)[0] == 200
        assert [n for n in os.listdir(spool) if n.endswith(".json")] == [qid + ".1.json"]
    finally:
        crashed.proc.kill()
        crashed.proc.wait()
    again = ApiProcess(config(db, spool, ""), tmp_path)
    try:
        assert [n for n in os.listdir(spool) if n.endswith(".json")] == []
        assert again.get("status/" + qid)[0] == 404 and again.get("result/" + qid)[0] == 404
    finally:
        assert again.stop() == 0


def test_expiry_answers_410_and_the_cap_evicts(tmp_path):
    db, spool = recent_store(str(tmp_path / "flows.db"), 300), tmp_path / "spool"
    api = ApiProcess(config(db, spool, "result_ttl: 3\nresult_spool_bytes: 4000\n"), tmp_path)
    try:
        first = api.json("q/net/10.3.0.0/16/limit/15")        # about 2,400 bytes each
        second = api.json("q/port/443/limit/15")
        # The second did not fit beside the first: the oldest went.
        status, text = api.get("result/" + first["id"])
        assert status == 410 and "result_spool_bytes" in json.loads(text)["error"]
        st = api.json("status/" + first["id"])
        assert st["state"] == "expired" and st["expired_by"] == "result_spool_bytes" and st["rows"] == 15
        assert api.get("result/" + second["id"])[0] == 200
        # Larger than the whole spool: that search fails, with the reason.
        status, text = api.get("q/port/443/limit/100")
        assert status == 500 and "larger than the whole result spool (result_spool_bytes = 4000)" in text
        failed = api.json("status/" + api.json("ids")["ids"][0])
        assert failed["state"] == "failed" and "result_spool_bytes" in failed["error"]
        # After result_ttl the result is gone (410) and its status still readable.
        status, text = wait_until(lambda: (lambda r: r if r[0] == 410 else None)(api.get("result/" + second["id"])),
                                  timeout=30)
        assert "result_ttl" in json.loads(text)["error"]
        st = api.json("status/" + second["id"])
        assert st["state"] == "expired" and st["expired_by"] == "result_ttl"
        assert [h["state"] for h in st["history"]][-2:] == ["done", "expired"]
        text = api.get("metrics")[1]
        for key, least in (("evicted", 1), ("expired", 1), ("failed", 1), ("done", 2)):
            line = [x for x in text.splitlines() if x.startswith('myason_api_searches_total{key="%s"}' % key)][0]
            assert float(line.split()[-1]) >= least, line
    finally:
        assert api.stop() == 0
