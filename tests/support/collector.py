"""Run a real collector process (and agents feeding it) for integration tests."""
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from cryptography.fernet import Fernet

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
