"""Run a real collector process (and agents feeding it) for integration tests; read its metrics endpoint,
its exit summary, its spool and its SQLite store."""
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml
from cryptography.fernet import Fernet

from tests.support.services import wait_until

ROOT = Path(__file__).resolve().parents[2]
AGENT_ID = "e2e-agent"


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_private(path, text):
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


class Collector:
    """`myason collector` in a subprocess with its own keystore, spool and config."""

    def __init__(self, workdir, writers, agents=(AGENT_ID,), port=None, **extra):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_udp_port()
        self.keys = {a: Fernet.generate_key().decode() for a in agents}
        write_private(self.dir / "keystore", "".join("%s %s\n" % kv for kv in self.keys.items()))
        conf = {"bind_address": "127.0.0.1", "bind_port": self.port, "keystore": str(self.dir / "keystore"),
                "spool_dir": str(self.dir / "spool"), "writers": list(writers), "batch_interval": 0.2,
                "stats_interval": 0, "fsync": False}
        conf.update(extra)
        (self.dir / "collector.yaml").write_text(yaml.safe_dump(conf))
        self.proc = None
        self.stderr = []

    def agent_conf(self, agent=AGENT_ID, **extra):
        """Write an agent config (and key file) that exports to this collector; returns its path."""
        key = write_private(self.dir / ("%s.key" % agent), self.keys[agent] + "\n")
        conf = {"agent_id": agent, "key_file": str(key), "collectors": ["127.0.0.1:%d" % self.port],
                "stats_interval": 0}
        conf.update(extra)
        path = self.dir / ("%s.yaml" % agent)
        path.write_text(yaml.safe_dump(conf))
        return path

    def start(self, timeout=30, extra_args=(), prefix=()):
        """Start the process and wait until it listens.

        prefix: a command the collector runs under (e.g. strace); the collector then gets a
        process group of its own, so kill_group() reaches it and its children through it.
        """
        self.proc = subprocess.Popen([*prefix, sys.executable, str(ROOT / "myason.py"), "collector", "-cc",
                                      str(self.dir / "collector.yaml"), *extra_args], cwd=str(ROOT),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=bool(prefix))
        ready = threading.Event()

        def read(proc=self.proc):
            for line in proc.stderr:
                self.stderr.append(line)
                if "collector listening" in line:
                    ready.set()
        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.is_set():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                raise AssertionError("collector did not start:\n" + "".join(self.stderr))
            ready.wait(0.05)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signal the process and wait; returns its exit code."""
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        time.sleep(0.1)
        self.proc = None
        return code

    def kill_group(self):
        """SIGKILL the whole process group of a prefixed start (the wrapper, collector, children)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def log(self):
        """Everything the collector wrote to stderr so far."""
        return "".join(self.stderr)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc is not None:
            self.stop()


def free_tcp_port():
    """A TCP port free on 127.0.0.1 right now (for the metrics endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    """Prometheus text of the collector's metrics endpoint as {(name, key): value}."""
    # The endpoint comes up just after the "listening" line the harness waits for.
    text = wait_until(lambda: urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read(),
                      timeout=10, ignore=(OSError,)).decode()
    out = {}
    for m in re.finditer(r'^(myason_\w+?)(?:\{key="([^"]*)"\})? ([0-9.e+-]+)$', text, re.M):
        out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


class SummaryCollector(Collector):
    """The harness's Collector, run with `--summary-json FILE` so its counters are machine-readable."""

    def __init__(self, summary_json, *args, **kw):
        super().__init__(*args, **kw)
        self.summary_json = summary_json

    def start(self, timeout=30, prefix=()):
        """Start the process with --summary-json and wait until it listens."""
        return super().start(timeout, ("--summary-json", str(self.summary_json)), prefix)

    def summary(self):
        """The counters the last run wrote at exit."""
        return json.loads(self.summary_json.read_text())


def spool_files(c, sub):
    """Batch files in one spool subfolder, over every writer's spool."""
    return sorted(p.name for p in Path(c.dir / "spool").glob("*/%s/*.batch" % sub))


def assert_no_loss_inside(summary):
    """No datagram dropped by the kernel or a full queue, no batch moved to errors/."""
    assert summary["kernel_drops"] == 0 and summary["queue_dropped"] == 0
    assert all(w["failed_batches"] == 0 for w in summary["writers"].values())
    assert all(s["errors"] == 0 for s in summary["spool"].values())


def sqlite_rows(path):
    """Every stored flow as a dict ([] while the table does not exist yet)."""
    try:
        conn = sqlite3.connect(str(path))
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM flows")]
        conn.close()
    except sqlite3.OperationalError:
        return []
    return rows


def sqlite_count(path):
    """Flows stored so far (0 while the table does not exist yet)."""
    try:
        conn = sqlite3.connect(str(path))
        n = conn.execute("SELECT count(*) FROM flows").fetchone()[0]
        conn.close()
        return n
    except sqlite3.OperationalError:
        return 0


def run_agent(conf, pcaps, output=None, timeout=600):
    """`myason agent -ac CONF --read PCAPS [--output OUTPUT]` to completion."""
    argv = [sys.executable, str(ROOT / "myason.py"), "agent", "-ac", str(conf), "--read", *map(str, pcaps),
            "--no-progress"]
    if output:
        argv += ["--output", str(output)]
    proc = subprocess.run(argv, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError("agent failed (%d):\n%s" % (proc.returncode, proc.stderr))
    return proc
