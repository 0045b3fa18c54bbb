"""The collector says when it is ready, whether every stage runs, and when all it received is stored."""
import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request

from tests.support.collector import ROOT, sqlite_rows
from tests.support.services import wait_until
from tests.support.streams import ROWS_PER_DATAGRAM, Stream, collector


def get(port, path):
    """(HTTP status, JSON body) of the collector's metrics endpoint."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def status_command(c):
    """(exit code, stdout) of `myason collector -cc CONF --status`."""
    proc = subprocess.run([sys.executable, str(ROOT / "myason.py"), "collector", "-cc", str(c.dir / "collector.yaml"),
                           "--status"], capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout


def test_status_reports_stages_and_drained_only_when_every_flow_is_stored(tmp_path):
    db = tmp_path / "flows.db"
    c = collector(tmp_path, [{"type": "sqlite", "path": str(db), "busy_timeout": 0.2}])
    s = Stream(c)
    with c:
        port = c.metrics_port
        # 503 until every stage has started (the writers connect in their own threads).
        code, status = wait_until(lambda: (lambda r: r[0] == 200 and r)(get(port, "/healthz")), timeout=10,
                                  ignore=(OSError,))
        assert code == 200 and status["healthy"] and status["ready"] and status["drained"]
        assert set(status["stages"]) == {"listener", "processor-0", "writer-sqlite", "maintenance-sqlite"}
        s.send(20)
        wait_until(lambda: len(sqlite_rows(db)) == 20 * ROWS_PER_DATAGRAM, timeout=30)
        assert wait_until(lambda: get(port, "/status")[1]["drained"], timeout=10)
        code, out = status_command(c)
        assert code == 0 and "everything received is stored" in out and "writer-sqlite" in out
        # The database is locked: batches wait in the spool, so not everything is stored.
        lock = sqlite3.connect(str(db), isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            s.send(30)
            busy = wait_until(lambda: (lambda st: not st["drained"] and st["spool_batches"]["sqlite"] > 0
                                       and st["stages"]["writer-sqlite"] == "retrying" and st)(
                                           get(port, "/status")[1]), timeout=30)
            assert busy["healthy"]          # a writer retrying is alive: /healthz stays 200
            assert get(port, "/healthz")[0] == 200
            code, out = status_command(c)
            assert code == 1 and "batches waiting" in out
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert wait_until(lambda: get(port, "/status")[1]["drained"], timeout=30)
        assert len(sqlite_rows(db)) == 50 * ROWS_PER_DATAGRAM
        assert c.stop() == 0, c.log()
    code, out = status_command(c)
    assert code == 3 and "not reachable" in out


def test_status_needs_the_metrics_endpoint(tmp_path):
    c = collector(tmp_path, [{"type": "sqlite", "path": str(tmp_path / "f.db")}], metrics=False)
    code, _ = status_command(c)
    assert code == 2
