#!/usr/bin/env python3
"""The quick start's main job: a collector with the embedded store (SQLite) and an agent replaying
the bundled capture into it over encrypted UDP; then print what was stored.

usage: scripts/demo.py [--pcap FILE]
Everything lives in a fresh temp dir (keys, configs, spool, flows.db), left for a look afterwards.
"""
import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MYASON = [sys.executable, str(ROOT / "myason.py")]


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def private(path, text):
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def stored(db):
    try:
        with sqlite3.connect(str(db)) as conn:
            return conn.execute("SELECT count(*) FROM flows").fetchone()[0]
    except sqlite3.Error:
        return -1


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise SystemExit("demo: timed out waiting for %s" % what)


def report(db, work):
    conn = sqlite3.connect(str(db))
    n, packets, nbytes, agents = conn.execute(
        "SELECT count(*), sum(packets), sum(bytes), count(DISTINCT agent) FROM flows").fetchone()
    print("\nstored in %s: %d flows, %d packets, %d bytes from %d agent(s)" % (db, n, packets, nbytes, agents))
    print("\nby protocol:")
    names = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}
    for proto, flows, b in conn.execute(
            "SELECT proto, count(*), sum(bytes) FROM flows GROUP BY proto ORDER BY 3 DESC"):
        print("  %-7s %6d flows %10d bytes" % (names.get(proto, proto), flows, b))
    print("\ntop 10 flows by bytes:")
    fmt = "  %-42s %-42s %5s %7s %8s  %s"
    print(fmt % ("source", "destination", "proto", "packets", "bytes", "end"))
    for r in conn.execute("SELECT src_ip, src_port, dst_ip, dst_port, proto, packets, bytes, end_reason "
                          "FROM flows ORDER BY bytes DESC LIMIT 10"):
        print(fmt % ("%s:%s" % r[:2], "%s:%s" % r[2:4], names.get(r[4], r[4]), r[5], r[6], r[7]))
    print("\nfiles (keys, configs, spool, database): %s" % work)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pcap", default=str(ROOT / "data" / "demo.pcap"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="myason-demo."))
    key = subprocess.run(MYASON + ["keygen"], capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    private(work / "agent.key", key + "\n")
    private(work / "keystore", "demo-agent %s 127.0.0.0/8\n" % key)
    db = work / "flows.db"
    (work / "collector.yaml").write_text(
        "bind_address: 127.0.0.1\nbind_port: %d\nkeystore: %s\nspool_dir: %s\nstats_interval: 0\n"
        "batch_interval: 0.2\nwriters:\n  - type: sqlite\n    path: %s\n" % (port, work / "keystore", work / "spool", db))
    (work / "agent.yaml").write_text(
        "agent_id: demo-agent\nkey_file: %s\ncollectors: [\"127.0.0.1:%d\"]\nstats_interval: 0\n"
        % (work / "agent.key", port))
    log = open(work / "collector.log", "w")
    coll = subprocess.Popen(MYASON + ["collector", "-cc", str(work / "collector.yaml")], stderr=log, cwd=str(ROOT))
    try:
        wait_for(lambda: "collector listening" in (work / "collector.log").read_text() or coll.poll() is not None,
                 30, "the collector to start")
        if coll.poll() is not None:
            raise SystemExit("demo: the collector failed:\n" + (work / "collector.log").read_text())
        print("collector listening on 127.0.0.1:%d (log: %s)" % (port, work / "collector.log"))
        agent = subprocess.run(MYASON + ["agent", "-ac", str(work / "agent.yaml"), "--read", args.pcap,
                                         "--no-progress", "--output", str(work / "agent.csv")], cwd=str(ROOT))
        if agent.returncode != 0:
            raise SystemExit("demo: the agent failed")
        exported = sum(1 for _ in open(work / "agent.csv")) - 1
        wait_for(lambda: stored(db) >= exported, 60, "the collector to store %d flows" % exported)
    finally:
        coll.send_signal(signal.SIGTERM)
        coll.wait(60)
        log.close()
    report(db, work)
    print("(remove it with: rm -r %s)" % work)


if __name__ == "__main__":
    main()
