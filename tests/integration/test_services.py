"""The test database servers of scripts/services.sh really work: PostgreSQL, InfluxDB 1.x, VictoriaMetrics."""
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.support import services as svc
from tests.support.services import (
    influx_query,
    influx_rows,
    influx_write,
    parse_env,
    pg_start,
    pg_stop,
    servers_from_env,
    vm_export,
    wait_until,
)


def _name(prefix):
    # A fresh name per test keeps re-runs in one server session from seeing each other's data.
    return "%s_%s" % (prefix, uuid.uuid4().hex[:8])


# ---------------------------------------------------------------- pure helpers (no servers)

def test_parse_env_keeps_only_key_value_lines():
    text = ("services: installing curl\n\nMYASON_SERVICES_DIR=/tmp/x\nlower=1\n=bad\n"
            "MYASON_PG_DSN=postgresql://postgres@127.0.0.1:5/myason\n  MYASON_VM_URL=http://h:1  \n"
            "MYASON_EMPTY=\n# MYASON_COMMENT=1\n")
    assert parse_env(text) == {
        "MYASON_SERVICES_DIR": "/tmp/x",
        "MYASON_PG_DSN": "postgresql://postgres@127.0.0.1:5/myason",
        "MYASON_VM_URL": "http://h:1",
        "MYASON_EMPTY": "",
    }


def test_servers_from_env_partial_and_missing_dir():
    srv = servers_from_env({"MYASON_SERVICES_DIR": "/tmp/d", "MYASON_PG_PORT": "5432",
                            "MYASON_PG_DATA": "/tmp/d/pg/data", "MYASON_VM_URL": "http://v"})
    assert srv.dir == Path("/tmp/d") and srv.pg_port == 5432 and srv.pg_data == Path("/tmp/d/pg/data")
    assert srv.vm_url == "http://v" and srv.influx_url is None and srv.pg_dsn is None
    assert servers_from_env({"MYASON_SERVICES_DIR": "/d", "MYASON_PG_PORT": "x"}).pg_port is None
    with pytest.raises(ValueError):
        servers_from_env({"MYASON_PG_PORT": "1"})


def test_influx_rows_flattens_series():
    answer = {"results": [{"statement_id": 0, "series": [
        {"name": "m", "tags": {"host": "a"}, "columns": ["time", "v"], "values": [[1, 2], [3, 4]]},
        {"name": "n", "columns": ["time", "s"], "values": [[5, "x"]]}]}, {"statement_id": 1}]}
    assert influx_rows(answer) == [
        {"measurement": "m", "host": "a", "time": 1, "v": 2},
        {"measurement": "m", "host": "a", "time": 3, "v": 4},
        {"measurement": "n", "time": 5, "s": "x"},
    ]
    assert influx_rows({"results": [{"error": "boom"}]}) == []
    assert influx_rows("not a dict") == []


def test_wait_until_returns_value_retries_and_times_out():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "up"

    assert wait_until(flaky, timeout=2, interval=0.01, ignore=(ConnectionError,)) == "up"
    assert len(calls) == 3
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as ei:
        wait_until(lambda: 0, timeout=0.2, interval=0.02)
    assert 0.15 < time.monotonic() - t0 < 2 and "last result 0" in str(ei.value)
    with pytest.raises(KeyError):  # exceptions not listed in `ignore` are real failures
        wait_until(lambda: {}["x"], timeout=1, ignore=(ConnectionError,))


def _fake_script(monkeypatch, tmp_path, body):
    script = tmp_path / "fake-services.sh"
    script.write_text("#!/bin/bash\n" + body + "\n")
    monkeypatch.setattr(svc, "SCRIPT", script)
    monkeypatch.setattr(svc.os, "geteuid", lambda: 0)


def test_start_services_maps_exit_codes(monkeypatch, tmp_path):
    _fake_script(monkeypatch, tmp_path, 'echo "E: Unable to locate package influxdb" >&2; exit 3')
    with pytest.raises(svc.ServicesUnavailable, match="Unable to locate package"):
        svc.start_services()
    _fake_script(monkeypatch, tmp_path, 'echo "services: vm failed" >&2; exit 1')
    with pytest.raises(RuntimeError, match="vm failed"):
        svc.start_services()
    _fake_script(monkeypatch, tmp_path, 'echo "noise" >&2; echo MYASON_SERVICES_DIR=/tmp/z; '
                 'echo MYASON_VM_URL=http://127.0.0.1:9; echo "watch=$MYASON_SERVICES_WATCH_PID" >&2')
    assert svc.start_services(watch_pid=123) == svc.Servers(dir=Path("/tmp/z"), vm_url="http://127.0.0.1:9")
    monkeypatch.setattr(svc.os, "geteuid", lambda: 1000)
    with pytest.raises(svc.ServicesUnavailable, match="root"):
        svc.start_services()


def test_start_timeout_sends_sigterm_so_the_script_can_clean_up(monkeypatch, tmp_path):
    marker = tmp_path / "cleaned"
    _fake_script(monkeypatch, tmp_path, "trap 'kill $!; touch %s; exit 143' TERM; sleep 30 & wait" % marker)
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        svc.start_services(timeout=0.5)
    assert marker.exists() and time.monotonic() - t0 < 10


def test_script_stop_refuses_a_dir_it_did_not_make(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    r = subprocess.run(["bash", str(svc.SCRIPT), "stop", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "services.env" in r.stderr
    # An env file naming another dir is refused too: stop must never rm -rf a stranger's dir.
    (tmp_path / "services.env").write_text("MYASON_SERVICES_DIR=/tmp/elsewhere\n")
    r = subprocess.run(["bash", str(svc.SCRIPT), "stop", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and (tmp_path / "keep.txt").exists()
    r = subprocess.run(["bash", str(svc.SCRIPT), "start", "mysql"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == ""


# ---------------------------------------------------------------- PostgreSQL

@pytest.mark.root
def test_pg_copy_1000_rows_and_read_back(servers):
    psycopg = pytest.importorskip("psycopg")
    table = _name("copy")
    rows = [(i, "host-%d" % (i % 7), i * 1500, i % 3 == 0) for i in range(1000)]
    with psycopg.connect(servers.pg_dsn, connect_timeout=5) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE %s (id int PRIMARY KEY, host text, bytes bigint, tcp bool)" % table)
            with cur.copy("COPY %s (id, host, bytes, tcp) FROM STDIN" % table) as copy:
                for row in rows:
                    copy.write_row(row)
        conn.commit()
        got = conn.execute("SELECT id, host, bytes, tcp FROM %s ORDER BY id" % table).fetchall()
        db = conn.execute("SELECT current_database(), inet_server_addr()::text").fetchone()
    assert got == rows
    assert db[0] == "myason" and db[1].startswith("127.0.0.1")


@pytest.mark.root
def test_pg_stop_refuses_connections_and_start_keeps_data(servers):
    psycopg = pytest.importorskip("psycopg")
    table = _name("durable")
    with psycopg.connect(servers.pg_dsn, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE %s (k text PRIMARY KEY, v int)" % table)
        conn.execute("INSERT INTO %s VALUES ('a', 1), ('b', 2)" % table)
    held = psycopg.connect(servers.pg_dsn, connect_timeout=5, autocommit=True)
    try:
        pg_stop(servers)
        try:
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(servers.pg_dsn, connect_timeout=2)
            # A connection opened before the outage breaks too: that is what the collector sees.
            with pytest.raises(psycopg.OperationalError):
                held.execute("SELECT 1")
        finally:
            pg_start(servers)
    finally:
        held.close()
    conn = wait_until(lambda: psycopg.connect(servers.pg_dsn, connect_timeout=2), timeout=20,
                      ignore=(psycopg.OperationalError,))
    with conn:
        assert conn.execute("SELECT k, v FROM %s ORDER BY k" % table).fetchall() == [("a", 1), ("b", 2)]
        assert conn.execute("SHOW port").fetchone()[0] == str(servers.pg_port)


# ---------------------------------------------------------------- InfluxDB 1.x

@pytest.mark.root
def test_influx_write_line_protocol_and_query(servers):
    m = _name("flows")
    t0 = 1_700_000_000_000_000_000
    influx_write(servers.influx_url, [
        '%s,exporter=10.0.0.1,proto=tcp bytes=1500i,packets=3i,rate=0.5,app="https" %d' % (m, t0),
        '%s,exporter=10.0.0.1,proto=udp bytes=80i,packets=1i,rate=1.25,app="dns" %d' % (m, t0 + 10**9),
    ])
    rows = influx_rows(influx_query(servers.influx_url, 'SELECT * FROM "%s" ORDER BY time' % m))
    assert [(r["time"], r["proto"], r["bytes"], r["packets"], r["rate"], r["app"]) for r in rows] == [
        (t0, "tcp", 1500, 3, 0.5, "https"),
        (t0 + 10**9, "udp", 80, 1, 1.25, "dns"),
    ]
    total = influx_rows(influx_query(servers.influx_url, 'SELECT sum("bytes") FROM "%s"' % m))
    assert total[0]["sum"] == 1580
    dbs = influx_rows(influx_query(servers.influx_url, "SHOW DATABASES"))
    assert {"measurement": "databases", "name": "myason"} in dbs


@pytest.mark.root
def test_influx_rejects_bad_line_protocol(servers):
    with pytest.raises(RuntimeError, match="HTTP 400"):
        influx_write(servers.influx_url, "no fields here")


# ---------------------------------------------------------------- VictoriaMetrics

@pytest.mark.root
def test_vm_write_with_influxdb_client_and_export(servers):
    influxdb_client = pytest.importorskip("influxdb_client")
    from influxdb_client.client.write_api import SYNCHRONOUS

    m = _name("flows")
    t_s = int(time.time()) - 60
    with influxdb_client.InfluxDBClient(url=servers.vm_url, token="", org="") as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="myason", record=[
            '%s,exporter=e1,proto=tcp bytes=1500i,packets=3i,rate=0.5,app="https" %d' % (m, t_s * 10**9),
            '%s,exporter=e1,proto=tcp bytes=700i,packets=2i,rate=0.25,app="ssh" %d' % (m, (t_s + 1) * 10**9),
        ])
    series = wait_until(lambda: vm_export(servers.vm_url, '{__name__=~"%s_.*"}' % m), timeout=10)
    by_name = {s["metric"]["__name__"]: s for s in series}
    # Influx line protocol becomes one series per numeric field, named <measurement>_<field>.
    for field, values in (("bytes", [1500, 700]), ("packets", [3, 2]), ("rate", [0.5, 0.25])):
        s = by_name["%s_%s" % (m, field)]
        assert s["metric"]["exporter"] == "e1" and s["metric"]["proto"] == "tcp"
        assert s["values"] == values
        assert s["timestamps"] == [t_s * 1000, (t_s + 1) * 1000]  # milliseconds


@pytest.mark.root
def test_vm_drops_string_fields(servers):
    influxdb_client = pytest.importorskip("influxdb_client")
    from influxdb_client.client.write_api import SYNCHRONOUS

    m = _name("strs")
    with influxdb_client.InfluxDBClient(url=servers.vm_url, token="", org="") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="myason", record='%s,exporter=e1 bytes=42i,app="https-marker"' % m)
    series = wait_until(lambda: vm_export(servers.vm_url, '{__name__=~"%s_.*"}' % m), timeout=10)
    by_name = {s["metric"]["__name__"]: s for s in series}
    assert by_name["%s_bytes" % m]["values"] == [42]
    # The string itself is lost: VictoriaMetrics 1.79 (Debian 12) keeps a "<m>_app" series whose
    # samples are all 0, newer releases drop the field entirely; either way no text survives.
    app = by_name.get("%s_app" % m)
    assert app is None or set(app["values"]) == {0}
    assert "https-marker" not in repr(series)
