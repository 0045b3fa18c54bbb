"""The API's test harness: known enriched rows and IDEA events at a fixed clock, stores filled through
the real writers, and a real `myason api` process."""
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from myason.api import queries
from myason.collector.health import _write_postgresql, health_rows
from myason.store import rollup_maintain
from myason.store.postgresql import PostgresWriter
from myason.store.sqlite import SqliteWriter
from tests.support.services import wait_until

ROOT = Path(__file__).resolve().parents[2]
NOW = 1700049600.0 + 7 * 60      # 2023-11-15 12:07:00 UTC
TOKEN = "s3cret-token"
AUTH = {"Authorization": "Bearer " + TOKEN}


def row(src, dst, sport, dport, proto, nbytes, first, agent="edge-1", if_name="eth0", direction="",
        countries=("", ""), asns=(0, 0)):
    """One enriched collector row (ENRICHED_ROW_FIELDS order)."""
    v6 = ":" in src
    return [src, dst, sport, dport, proto, 0, 10, nbytes, first, first + 1.5, 0x18 if proto == 6 else 0,
            agent, if_name, 2, 3, 6 if v6 else 4, 0, "", 24, 24, 0, 0, "idle", first + 5, "127.0.0.1",
            direction, "", countries[0], countries[1], asns[0], asns[1], "", "", "", ""]


def idea(i, t, cat="Recon.Scanning", src="203.0.113.66"):
    """IDEA event number i, detected at t, from `src` to 10.1.0.1:22."""
    return {"Format": "IDEA0", "ID": "00000000-0000-4000-8000-%012d" % i, "DetectTime": queries.iso(t)[:19] + "Z",
            "Category": [cat], "Source": [{"IP4": [src], "Proto": ["tcp"]}],
            "Target": [{"IP4": ["10.1.0.1"], "Port": [22], "Proto": ["tcp"]}],
            "Node": [{"Name": "org.example.test"}], "Description": "event %d" % i}


# A: old TCP (closed 15m buckets), B: recent UDP from another agent, C: recent ICMPv6,
# D: 3 minutes ago (only in the 1m rollups' tops yet).
A = [row("10.1.0.1", "192.0.2.10", 40000 + i, 443, 6, 1000, NOW - 3 * 3600 + i * 60, direction="outbound",
         countries=("CZ", "US"), asns=(2852, 15169)) for i in range(20)]
B = [row("10.1.0.2", "198.51.100.7", 5353, 53, 17, 100, NOW - 1800 + i * 60, agent="edge-2", if_name="eth1",
         direction="inbound") for i in range(10)]
C = [row("2001:db8::1", "2001:db8::2", 0, 128 * 256, 58, 64, NOW - 1200 + i * 60) for i in range(5)]
D = [row("10.9.9.9", "192.0.2.99", 50000, 8443, 6, 5000, NOW - 180, direction="outbound")]


# Reply flows: a server's answers go to the clients' ephemeral ports and carry most bytes.
REPLIES = ([row("10.2.0.%d" % i, "192.0.2.20", 50000 + i, 443, 6, 100, NOW - 600 + i) for i in range(4)]
           + [row("192.0.2.20", "10.2.0.%d" % i, 443, 50000 + i, 6, 9000 - i, NOW - 599 + i) for i in range(4)]
           + [row("10.2.0.9", "192.0.2.21", 41000, 3306, 6, 300, NOW - 500),
              row("192.0.2.21", "10.2.0.9", 3306, 41000, 6, 7000, NOW - 499),
              row("10.2.0.8", "192.0.2.53", 5353, 53, 17, 50, NOW - 400),
              row("10.2.0.7", "192.0.2.7", 5000, 6000, 17, 400, NOW - 300),
              row("192.0.2.7", "10.2.0.7", 6000, 5000, 17, 500, NOW - 299),
              row("10.2.0.6", "192.0.2.6", 0, 2048, 1, 100000, NOW - 200)])


# An agent that stopped days ago (/agents reads its older days from the coarse rollups), and what
# /agents answers over A + B + C + D + OLD at NOW: (query string, [(agent, interfaces, last_seen)]).
OLD = [row("10.3.0.1", "192.0.2.30", 40000, 443, 6, 100, NOW - 10 * 86400, agent="edge-3", if_name="wlan0"),
       row("10.3.0.1", "192.0.2.30", 40001, 443, 6, 100, NOW - 5 * 86400 + 30, agent="edge-3", if_name="eth9")]
_RECENT = [("edge-1", ["eth0"], NOW - 120), ("edge-2", ["eth1"], NOW - 1200)]
AGENTS = [("since=1h", _RECENT), ("", _RECENT + [("edge-3", ["eth9", "wlan0"], NOW - 5 * 86400 + 3180)]),
          ("since=7d", _RECENT + [("edge-3", ["eth9"], NOW - 5 * 86400 + 3180)]),
          ("since=10m", _RECENT[:1]), ("since=3d&end=4d", [("edge-3", ["eth9"], NOW - 5 * 86400 + 60)]),
          ("since=1h&end=2023-11-15T09:00:00Z", [])]


def agents_answer(expected):
    """The /agents body of AGENTS' expected list."""
    return {"agents": [{"agent": a, "interfaces": i, "last_seen": queries.iso(t)} for a, i, t in expected]}


class Clock:
    """A clock the test moves: `clock.t += 60`."""

    def __init__(self, t=NOW):
        self.t = t

    def __call__(self):
        return self.t


class TableLock:
    """An ACCESS EXCLUSIVE lock on a PostgreSQL table, held by a transaction of its own until release():
    a query of that table waits, genuinely in flight, until then."""

    def __init__(self, dsn, table):
        import psycopg
        self.dsn = dsn
        self.conn = psycopg.connect(dsn)
        self.conn.execute("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE" % table)

    def waiting(self, like):
        """Backends of this database waiting for a lock while running a statement LIKE `like`."""
        import psycopg
        # A connection of its own each time: within a transaction pg_stat_activity is a snapshot.
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE %s", (like,)).fetchone()[0]

    def release(self):
        self.conn.rollback()
        self.conn.close()


# -- stores ---------------------------------------------------------------------------------------

def write_store(path, rows=(), events=(), maintain=False):
    """A SQLite store at `path` written by the real SqliteWriter at NOW (and rolled up)."""
    w = SqliteWriter(path=path)
    w.clock = lambda: NOW
    w.open()
    assert w.write("b", list(rows), list(events))
    if maintain:
        w.maintain(now=NOW)
    w.close()
    return path


def fill(dsn, batches, now, health=None):
    """Write batches [(id, rows, events)] through the real writer, then roll them up at `now`."""
    w = PostgresWriter(dsn=dsn)
    w.clock = lambda: now
    w.open()
    try:
        for batch_id, rows, events in batches:
            assert w.write(batch_id, rows, events)
        rollup_maintain.maintain(w, now=now)
    finally:
        w.close()
    if health:
        _write_postgresql(dsn, "collector-1", now - 3600, now - 2, *health_rows(health, [], "/", now - 2))


# -- a real process ---------------------------------------------------------------------------------

class ApiProcess:
    """`myason api` in a subprocess: its page address from the first stdout line, its token from the
    config (`token`, `token_file`) or from the 0600 file the line names for a generated one."""

    def __init__(self, config_text, tmp_path, extra=()):
        conf = tmp_path / "api.yaml"
        conf.write_text(config_text)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "myason.py"), "api", "-ac", str(conf),
                                      "--bind", "127.0.0.1:0", *extra], cwd=str(ROOT), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()      # the process prints it before serving
        m = re.search(r"(http://[^/]+/)(?:#token=(\S+))?", line)
        if not m:
            self.stop()
            raise AssertionError("no address printed: %r\n%s" % (line, self.proc.stderr.read()))
        self.line = line
        self.base, self.token = m.group(1), m.group(2) or self._token(config_text, line)
        wait_until(lambda: self.get("healthz", auth=False)[0] == 200, timeout=20,
                   ignore=(urllib.error.URLError, ConnectionError))

    @staticmethod
    def _token(config_text, line):
        import yaml
        conf = yaml.safe_load(config_text) or {}
        m = re.search(r"\(token in (\S+?)[,)]", line)
        path = conf.get("token_file") or (m.group(1) if m else None)
        return conf.get("token") or (Path(path).read_text().split("\n")[0] if path else None)

    def get(self, path, auth=True, accept=None):
        """(status, body text) of GET base+path."""
        req = urllib.request.Request(self.base + path)
        if auth and self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def json(self, path):
        """Parsed JSON of a 200 answer."""
        status, text = self.get(path)
        assert status == 200, (path, status, text)
        return json.loads(text)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Signal the process and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
