"""Issue 12 item 14: the InfluxDB 1.x writer against a real InfluxDB 1.6.7 with authentication on.

scripts/services.sh starts InfluxDB without authentication, so this module starts its own
influxd (same package, `auth-enabled = true`, HTTP access log on) on free loopback ports. The
writer must be let in with HTTP Basic credentials, and the password must appear neither in
the server's access log (which records every request line with its query string) nor in
what the writer reports.
"""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from myason.store.base import WriterError, writer_class
from tests.support.services import influx_rows, wait_until
from tests.support.rows import random_rows, totals

ADMIN, ADMIN_PW = "admin", "adm1n-secret"
WRITER, WRITER_PW = "flows_writer", "wr:ter p@ss/&p=x"


def _ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _request(url, path, params, user=None, password=None):
    """POST a form to InfluxDB (credentials, when given, as HTTP Basic) and return the JSON answer."""
    req = urllib.request.Request(url + path, data=urllib.parse.urlencode(params).encode(), method="POST")
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def admin_query(url, q, db=None):
    params = {"q": q, **({"db": db} if db else {})}
    return _request(url, "/query", params, ADMIN, ADMIN_PW)


@pytest.fixture(scope="module")
def influx_auth(tmp_path_factory):
    """(url, log path) of an influxd with auth on, an admin and a user who may only write to `myason`."""
    influxd = shutil.which("influxd")
    if influxd is None:
        pytest.skip("no influxd (apt-get install influxdb, or run scripts/services.sh once)")
    d = tmp_path_factory.mktemp("influx-auth")
    http_port, rpc_port = _ports(2)
    conf = d / "influxdb.conf"
    conf.write_text("""reporting-disabled = true
bind-address = "127.0.0.1:%d"
[meta]
  dir = "%s/meta"
  logging-enabled = false
[data]
  dir = "%s/data"
  wal-dir = "%s/wal"
  query-log-enabled = false
  index-version = "inmem"
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:%d"
  auth-enabled = true
  log-enabled = true
  pprof-enabled = false
[logging]
  level = "info"
""" % (rpc_port, d, d, d, http_port))
    log_path = d / "influxd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([influxd, "run", "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = "http://127.0.0.1:%d" % http_port
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError("influxd exited: %s" % log_path.read_text()[-2000:])
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2):
                    return True
            except (OSError, urllib.error.HTTPError):
                return False
        wait_until(up, timeout=60, interval=0.2)
        # With no user yet, InfluxDB lets exactly this statement in without credentials.
        _request(url, "/query", {"q": "CREATE USER %s WITH PASSWORD '%s' WITH ALL PRIVILEGES" % (ADMIN, ADMIN_PW)})
        admin_query(url, 'CREATE DATABASE "myason"')
        admin_query(url, "CREATE USER %s WITH PASSWORD '%s'" % (WRITER, WRITER_PW.replace("'", "\\'")))
        admin_query(url, 'GRANT WRITE ON "myason" TO %s' % WRITER)
        yield url, log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sums(url, db):
    rows = influx_rows(admin_query(url, "SELECT sum(bytes), sum(packets), sum(flows) FROM flows", db=db))
    return (rows[0]["sum"], rows[0]["sum_1"], rows[0]["sum_2"]) if rows else (0, 0, 0)


def secrets_in(text):
    forms = {WRITER_PW, urllib.parse.quote(WRITER_PW), urllib.parse.quote_plus(WRITER_PW),
             urllib.parse.quote(WRITER_PW, safe=""), ADMIN_PW}
    return [f for f in forms if f in text]


def test_a_write_only_user_writes_with_basic_auth_and_no_password_is_logged(influx_auth, tmp_path):
    url, log_path = influx_auth
    rows = random_rows(50, seed=7)
    w = writer_class("influxdb")(url=url, database="myason", username=WRITER, password=WRITER_PW,
                                 create_database=False, state_file=str(tmp_path / "state"), fsync=False)
    w.write("auth-b1", rows)
    w.close()
    assert sums(url, "myason") == totals(rows)
    log = log_path.read_text(errors="replace")
    requests = [line for line in log.splitlines() if "/write?" in line and WRITER in line]
    assert requests                              # the access log records each request line
    # InfluxDB itself masks p= in its log (p=[REDACTED]), a proxy in front would not: the
    # credentials must not be in the URL at all (the log names the Basic user apart).
    for line in requests:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(line.split('"')[1].split()[1]).query)
        assert "p" not in query and "u" not in query, line
    assert secrets_in(log) == []


def test_an_admin_in_the_url_creates_database_and_retention(influx_auth, tmp_path):
    url, log_path = influx_auth
    with_creds = url.replace("http://", "http://%s:%s@" % (ADMIN, ADMIN_PW))
    rows = random_rows(20, seed=8, t0=time.time() - 600)       # inside the 30-day policy
    w = writer_class("influxdb")(url=with_creds, database="myason_rp", retention="30d",
                                 state_file=str(tmp_path / "state"), fsync=False)
    w.write("auth-b2", rows)
    w.close()
    assert sums(url, "myason_rp") == totals(rows)
    policies = influx_rows(admin_query(url, 'SHOW RETENTION POLICIES ON "myason_rp"'))
    assert any(p["name"] == "rp_raw" and p["default"] for p in policies)
    assert secrets_in(log_path.read_text(errors="replace")) == []


def test_a_wrong_password_is_retryable_and_not_reported(influx_auth, tmp_path):
    url, _ = influx_auth
    w = writer_class("influxdb")(url=url, database="myason", username=WRITER, password="not-" + WRITER_PW,
                                 create_database=False, state_file=str(tmp_path / "state"), fsync=False)
    with pytest.raises(WriterError) as info:
        w.write("auth-b3", random_rows(1, seed=9))
    w.close()
    assert not info.value.permanent and "401" in str(info.value)
    assert secrets_in(str(info.value)) == [] and WRITER_PW not in str(info.value)
