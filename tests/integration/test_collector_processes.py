"""Processor processes, SIGHUP key rotation and health rows: a real collector, real UDP, SQLite.

Processor processes (`processors_mode: process`) must behave like threads: every flow stored
once, counters and health complete, a child that dies started again; SIGHUP applies a rotated
keystore in every processor (in order with the queued datagrams) and keeps the old one when
the new file is broken.
"""
import os
import signal
import sqlite3
from collections import Counter

import pytest
import yaml
from cryptography.fernet import Fernet

from tests.support import collector as col
from tests.support.services import wait_until
from tests.support.collector import assert_no_loss_inside, scrape, sqlite_rows
from tests.support.streams import ROWS_PER_DATAGRAM, Stream, collector, row_key

AGENTS = ("ctl-1", "ctl-2", "ctl-3")


def children(pid):
    """Pids of the direct children of pid."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def processors(pid):
    """Pids of the processor processes of collector pid (spawned children, not the resource tracker)."""
    out = []
    for k in children(pid):
        try:
            with open("/proc/%d/cmdline" % k, "rb") as fh:
                if b"spawn_main" in fh.read():
                    out.append(k)
        except OSError:
            pass
    return out


def health(db):
    conn = sqlite3.connect(str(db))
    try:
        coll = conn.execute("SELECT node, datagrams, flows, rejects FROM health_collectors").fetchall()
        agents = dict(conn.execute("SELECT agent, flows FROM health_agents").fetchall())
        metrics = {m for (m,) in conn.execute("SELECT DISTINCT metric FROM health_samples")}
    finally:
        conn.close()
    return coll, agents, metrics


def test_processes_store_every_flow_once_respawn_a_dead_child_and_write_health(tmp_path):
    db = tmp_path / "flows.db"
    c = col.Collector(tmp_path / "c", [{"type": "sqlite", "path": str(db)}], agents=AGENTS,
                      processors_mode="process", processors_number=2, health_interval=0.5,
                      instance="proc-test")
    streams = [Stream(c, agent=a) for a in AGENTS]
    with c:
        assert len(processors(c.proc.pid)) == 2
        for s in streams:
            s.send(200)
        wait_until(lambda: len(sqlite_rows(db)) == 600 * ROWS_PER_DATAGRAM, timeout=60, interval=0.1)
        # A processor dies (as after a crash): the parent starts it again and nothing else stops.
        victim = max(processors(c.proc.pid))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: "died" in c.log() and "starting it again" in c.log(), timeout=30)
        wait_until(lambda: len(processors(c.proc.pid)) == 2 and victim not in processors(c.proc.pid), timeout=30)
        for s in streams:
            s.send(100)
        wait_until(lambda: len(sqlite_rows(db)) == 900 * ROWS_PER_DATAGRAM, timeout=60, interval=0.1)
        wait_until(lambda: health(db)[1].get("ctl-1", 0) > 0 and sum(health(db)[1].values()) >= 900 * 20,
                   timeout=30, interval=0.2)
        assert c.stop() == 0, c.log()
    stored = Counter(row_key(r) for r in sqlite_rows(db))
    expected = Counter()
    for s in streams:
        expected.update(s.expected())
    assert stored == expected
    coll, agents, metrics = health(db)
    assert [row[0] for row in coll] == ["proc-test"]
    assert coll[0][1] == 900 and coll[0][2] == 900 * ROWS_PER_DATAGRAM
    assert agents == {a: 300 * ROWS_PER_DATAGRAM for a in AGENTS}
    assert {"datagrams", "flows", "spool_bytes", "writer_lag"} <= metrics


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_sighup_applies_a_rotated_keystore_and_keeps_the_old_one_when_broken(tmp_path, mode):
    db = tmp_path / "flows.db"
    c = collector(tmp_path, [{"type": "sqlite", "path": str(db)}], processors_mode=mode)
    old = Stream(c)
    new_key = Fernet.generate_key().decode()
    with c:
        old.send(20)
        wait_until(lambda: len(sqlite_rows(db)) == 20 * ROWS_PER_DATAGRAM, timeout=30, interval=0.1)
        new = Stream(c)
        new.fernet = Fernet(new_key.encode())
        new.seq = old.seq
        new.send(5)                     # not in the keystore yet: rejected
        wait_until(lambda: "bad_token" in str(scrape_rejects(c)), timeout=20)
        # Rotation: the new key first (encrypts), the old one still decrypts.
        keystore = c.dir / "keystore"
        lines = keystore.read_text().splitlines()
        lines = [(ln.replace(c.keys[old.agent], "%s,%s" % (new_key, c.keys[old.agent]))
                  if ln.startswith(old.agent + " ") else ln) for ln in lines]
        col.write_private(keystore, "\n".join(lines) + "\n")
        # A live key (token_ttl) and one that needs a restart (batch_rows) change too.
        conf = yaml.safe_load((c.dir / "collector.yaml").read_text())
        conf.update(token_ttl=30.0, batch_rows=777)
        (c.dir / "collector.yaml").write_text(yaml.safe_dump(conf))
        c.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded (keystore" in c.log(), timeout=20)
        assert "batch_rows changed: takes effect at the next restart" in c.log()
        assert "and token_ttl sent" in c.log()
        new.rows.clear()
        new.send(10)
        old.seq = new.seq
        old.rows_before = dict(old.rows)
        old.send(10)                    # the old key still decrypts during the rotation
        wait_until(lambda: len(sqlite_rows(db)) == 40 * ROWS_PER_DATAGRAM, timeout=30, interval=0.1)
        # A broken keystore (readable by others) is refused; the running one stays.
        os.chmod(keystore, 0o644)
        c.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in c.log(), timeout=20)
        os.chmod(keystore, 0o600)
        new.send(5)
        wait_until(lambda: len(sqlite_rows(db)) == 45 * ROWS_PER_DATAGRAM, timeout=30, interval=0.1)
        assert c.stop() == 0, c.log()
    summary = c.summary()
    assert_no_loss_inside(summary)
    assert summary["rejects"].get("bad_token") == 5
    stored = Counter(row_key(r) for r in sqlite_rows(db))
    assert max(stored.values()) == 1
    assert stored == old.expected() + new.expected()


def scrape_rejects(c):
    """The collector's rejects by reason, read from its metrics endpoint."""
    return {k: v for (name, k), v in scrape(c.metrics_port).items() if name == "myason_rejects_total"}
