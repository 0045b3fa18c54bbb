"""Issue 12, API items, against a real `myason api` process on loopback: slow and idle clients,
made-up methods, DNS rebinding, the token at start, and /events and /greylist over PostgreSQL
under a lock (query timeout, pool size). The in-process halves are in tests/unit/api/test_hardening.py."""
import http.client
import os
import re
import select
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.support.api import NOW, ROOT, ApiProcess, fill, idea, row, write_store
from tests.support.services import wait_until

psycopg = pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(str(tmp_path_factory.mktemp("hardening") / "flows.db"),
                       [row("10.8.0.1", "192.0.2.8", 40000 + i, 443, 6, 100, NOW - 600 + i) for i in range(5)],
                       [idea(1, NOW - 60)])


def address(api):
    host, port = re.match(r"http://([^/]+):(\d+)/", api.base).groups()
    return host, int(port)


def gone(sock):
    """True once the server closed `sock` (it may first have sent a 408 or 503)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
            if not select.select([sock], [], [], 0)[0]:
                return False
    except ConnectionResetError:
        return True


def healthz_seconds(api):
    t0 = time.monotonic()
    assert api.get("healthz", auth=False)[0] == 200
    return time.monotonic() - t0


# -- item 5: slow and idle clients ----------------------------------------------------------------------

def test_slow_and_idle_clients_cannot_hold_the_server(store, tmp_path):
    api = ApiProcess("database: {type: sqlite, path: %s}\ntoken: t0k\nheader_timeout: 2\nmax_connections: 240\n"
                     % store, tmp_path)
    addr = address(api)
    socks = []
    try:
        # 230 clients: half connect and send nothing, half send a request head a byte at a time.
        t_connect = time.monotonic()
        idle = [socket.create_connection(addr, timeout=5) for _ in range(115)]
        slow = [socket.create_connection(addr, timeout=5) for _ in range(115)]
        socks = idle + slow
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        for s in slow:
            s.send(head[:1])
        assert healthz_seconds(api) < 1.0
        # Past max_connections (240) a connection is answered 503 and closed at once, not kept.
        extra = [socket.create_connection(addr, timeout=5) for _ in range(40)]
        socks += extra
        wait_until(lambda: sum(gone(s) for s in extra) >= 29, timeout=1.0)
        assert time.monotonic() - t_connect < 1.8 and not any(gone(s) for s in idle + slow)
        # The slow ones keep sending; every connection is closed after header_timeout all the same.
        i = 1
        while not all(gone(s) for s in idle + slow):
            assert time.monotonic() - t_connect < 8, "clients still connected after 8 s"
            for s in slow:
                try:
                    s.send(head[i % len(head):i % len(head) + 1])
                except OSError:
                    pass
            i += 1
            time.sleep(0.1)     # the clients' pace, not a wait for a condition
        assert time.monotonic() - t_connect >= 2.0
        assert healthz_seconds(api) < 1.0
        # An idle keep-alive connection is closed after keepalive_timeout (5 s by default).
        conn = http.client.HTTPConnection(*addr, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b'{"status":"ok"}'
        assert wait_until(lambda: gone(conn.sock), timeout=10)
    finally:
        for s in socks:
            s.close()
        code = api.stop()
    assert code == 0, api.proc.stderr.read()


# -- item 4: made-up methods -----------------------------------------------------------------------------

def test_made_up_methods_do_not_grow_the_metrics(store, tmp_path):
    api = ApiProcess("database: {type: sqlite, path: %s}\ntoken: t0k\n" % store, tmp_path)
    try:
        addr = address(api)
        for i in range(300):
            conn = http.client.HTTPConnection(*addr, timeout=10)
            conn.request("M%04d" % i + "X" * 4000, "/healthz")
            assert conn.getresponse().status == 405
            conn.close()
        status, text = api.get("metrics")
        assert status == 200 and len(text) < 20000
        assert set(re.findall(r'method="([^"]*)"', text)) <= {"GET", "HEAD", "OTHER"}
        assert re.search(r'myason_api_requests_total\{method="OTHER",[^}]*status="405"\} 300\.0', text)
    finally:
        assert api.stop() == 0


# -- item 9: DNS rebinding without auth --------------------------------------------------------------------

def test_no_auth_answers_only_loopback_host_names(store, tmp_path):
    api = ApiProcess("database: {type: sqlite, path: %s}\n" % store, tmp_path, ("--no-auth",))
    try:
        host, port = address(api)

        def ask(host_header):
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.putrequest("GET", "/q/host/10.8.0.1/after/2023-11-01T00:00:00Z", skip_host=True)
            conn.putheader("Host", host_header)
            conn.endheaders()
            r = conn.getresponse()
            body = r.read()
            conn.close()
            return r.status, body

        status, body = ask("rebind.attacker.example")
        assert status == 400 and b"not trusted" in body and b"10.8.0.1" not in body
        assert ask("rebind.attacker.example:%d" % port)[0] == 400
        status, body = ask("127.0.0.1:%d" % port)
        assert status == 200 and b'"count":5' in body
        assert ask("localhost:%d" % port)[0] == 200
    finally:
        assert api.stop() == 0


# -- item 12: the token at start ----------------------------------------------------------------------------

def test_a_token_from_a_file_is_never_printed(store, tmp_path):
    token_file = tmp_path / "api.token"
    token_file.write_text("tok-from-file-123\n")
    os.chmod(token_file, 0o600)
    api = ApiProcess("database: {type: sqlite, path: %s}\ntoken_file: %s\n" % (store, token_file), tmp_path)
    try:
        assert "tok-from-file-123" not in api.line and str(token_file) in api.line
        assert api.get("ids")[0] == 200 and api.get("ids", auth=False)[0] == 401
    finally:
        assert api.stop() == 0
    assert "tok-from-file-123" not in api.proc.stdout.read() + api.proc.stderr.read()


def test_a_generated_token_goes_to_a_0600_file_when_not_on_a_terminal(store, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.environ["RUNTIME_DIRECTORY"] = str(run)
    try:
        api = ApiProcess("database: {type: sqlite, path: %s}\n" % store, tmp_path)
    finally:
        del os.environ["RUNTIME_DIRECTORY"]
    try:
        m = re.search(r"\(token in (\S+), mode 0600\)", api.line)
        assert m and "#token=" not in api.line, api.line
        path = m.group(1)
        assert os.path.dirname(path) == str(run) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert api.token and api.token not in api.line and api.get("ids")[0] == 200
    finally:
        assert api.stop() == 0
    assert api.token not in api.proc.stdout.read() + api.proc.stderr.read()
    assert not os.path.exists(path)      # it was this run's token only


def test_a_generated_token_is_printed_on_a_terminal(store, tmp_path):
    conf = tmp_path / "api.yaml"
    conf.write_text("database: {type: sqlite, path: %s}\n" % store)
    master, slave = os.openpty()
    env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "myason.py"), "api", "-ac", str(conf), "--bind", "127.0.0.1:0"],
                            cwd=str(ROOT), stdout=slave, stderr=subprocess.DEVNULL, env=env)
    os.close(slave)
    try:
        out = b""
        deadline = time.monotonic() + 30
        while b"\n" not in out:
            assert time.monotonic() < deadline and proc.poll() is None, out
            if select.select([master], [], [], 1)[0]:
                out += os.read(master, 4096)
        m = re.search(rb"(http://\S+/)#token=(\S+) \(token also in (\S+)\)", out)
        assert m, out
        assert open(m.group(3).decode()).read().strip() == m.group(2).decode()
        req = urllib.request.Request(m.group(1).decode() + "ids",
                                     headers={"Authorization": "Bearer " + m.group(2).decode()})
        assert wait_until(lambda: urllib.request.urlopen(req, timeout=5).status == 200, timeout=20,
                          ignore=(urllib.error.URLError, ConnectionError))
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        os.close(master)


# -- item 7: /events and /greylist through the pool, the read-only session and the timeout -------------------

def _count_connections(dsn, exclude):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND pid <> %s",
                            (exclude,)).fetchone()[0]


class Lock:
    """An ACCESS EXCLUSIVE lock on `events` held by a transaction of its own, until release()."""

    def __init__(self, dsn):
        self.conn = psycopg.connect(dsn)
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")

    def release(self):
        self.conn.rollback()
        self.conn.close()


def test_events_over_postgresql_use_the_pool_and_the_timeout(pg, tmp_path):
    now = time.time()
    fill(pg, [("e", [], [idea(i, now - 60 * i, src="203.0.113.%d" % (i % 3)) for i in range(1, 40)])], now)
    api = ApiProcess("database: {type: postgresql, dsn: '%s'}\ntoken: t0k\nquery_timeout: 2\npool_size: 2\n" % pg,
                     tmp_path)
    try:
        # Sorted and limited by the database, newest first; the greylist aggregated there.
        assert [e["ID"][-2:] for e in api.json("events?since=1d&limit=2")["events"]] == ["01", "02"]
        grey = api.json("greylist?since=1d")["rows"]
        assert sorted((r["address"], r["events"]) for r in grey) == [
            ("203.0.113.0", 13), ("203.0.113.1", 13), ("203.0.113.2", 13)]
        from myason.store.query import fetch_events, greylist
        assert grey == greylist(fetch_events({"type": "postgresql", "dsn": pg}, now - 86400))

        lock = Lock(pg)
        try:
            # A statement stuck behind the lock is cancelled after query_timeout: 503, not a hang.
            for path in ("events?since=1d", "greylist?since=1d"):
                t0 = time.monotonic()
                status, text = api.get(path)
                assert status == 503 and "timed out" in text, (path, status, text)
                assert time.monotonic() - t0 < 6
            # Twelve at once: at most pool_size connections, the others wait for one (then 503).
            results = []
            threads = [threading.Thread(target=lambda: results.append(api.get("events?since=1d")[0]))
                       for _ in range(12)]
            for t in threads:
                t.start()
            wait_until(lambda: _count_connections(pg, lock.pid) >= 2, timeout=10)
            most, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < 1.5:
                most = max(most, _count_connections(pg, lock.pid))
                time.sleep(0.05)    # sampling pace
            assert most == 2
        finally:
            lock.release()
        for t in threads:
            t.join(30)
        assert len(results) == 12 and set(results) <= {200, 503}
    finally:
        assert api.stop() == 0
