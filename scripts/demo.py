#!/usr/bin/env python3
"""The quick start's main job: a collector with the embedded store (SQLite) and an agent replaying
the bundled capture into it over encrypted UDP; print what was stored, then serve it on the
built-in web page (`myason api`) until Ctrl-C or SIGTERM.

usage: scripts/demo.py [--pcap FILE] [--keep-time] [--no-serve] [--bind HOST:PORT]
The capture is replayed shifted in time so that it ends just now (the page shows recent periods);
--keep-time replays it with its own timestamps. --no-serve (or MYASON_DEMO_SERVE=0) stops after
the report. Everything lives in a fresh temp dir (keys, configs, spool, flows.db, token), left
for a look afterwards.
"""
import argparse
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MYASON = [sys.executable, str(ROOT / "myason.py")]


def free_port(kind=socket.SOCK_DGRAM, port=0, host="127.0.0.1"):
    """`port` on `host` when it is free, else a free one."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        s.bind((host, port))
    except OSError:
        s.bind((host, 0))
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


def eval_list(text):
    """A JSON array column of the SQLite store as a list."""
    import json
    try:
        return [str(v) for v in json.loads(text)]
    except ValueError:
        return [text]


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
    events = conn.execute("SELECT detecttime, category, description FROM events ORDER BY detecttime").fetchall()
    print("\nIDEA events: %d" % len(events))
    for t, category, description in events[:10]:
        print("  %s  %s  %s" % (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)), ",".join(eval_list(category)),
                                description))
    print("\nfiles (keys, configs, spool, database): %s" % work)


# The demo's collector config: its own keystore and spool, SQLite, "our" networks for the
# direction column, and a blocklist naming the capture's ping target so the page has an event.
COLLECTOR_YAML = """bind_address: 127.0.0.1
bind_port: {port}
keystore: {work}/keystore
spool_dir: {work}/spool
stats_interval: 0
batch_interval: 0.2
writers:
  - type: sqlite
    path: {db}
enrich:
  local_networks: [10.0.0.0/8, 2001:db8::/32]
detect:
  detectors:
    blocklist:
      lists:
        - {{name: demo-blocklist, cidrs: [198.51.100.0/24], category: Anomaly.Traffic}}
"""


def maintain_rollups(db):
    """Bring the rollup tables up to date now (the writer's housekeeping would, later), so the
    page's charts need no wait."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from myason.store import rollup_maintain
    from myason.store.sqlite import SqliteWriter
    writer = SqliteWriter(path=str(db))
    writer.open()
    try:
        rollup_maintain.maintain(writer)
    finally:
        writer.close()


class Stop(Exception):
    """SIGTERM, turned into an exception so serving ends through the same path as Ctrl-C."""


def _raise_stop(signum, frame):
    raise Stop()


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def serve(work, bind):
    """Run `myason api` on the demo's database until Ctrl-C or SIGTERM; returns its exit code."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    port = free_port(socket.SOCK_STREAM, int(port or 8080), host)
    token = secrets.token_urlsafe(18)
    private(work / "api.token", token + "\n")
    (work / "api.yaml").write_text("bind: \"%s:%d\"\ntoken_file: %s\ncollector_conf: %s\n"
                                   % ("[%s]" % host if ":" in host else host, port, work / "api.token",
                                      work / "collector.yaml"))
    log = open(work / "api.log", "w")
    api = subprocess.Popen(MYASON + ["api", "-ac", str(work / "api.yaml")], stdout=log, stderr=log, cwd=str(ROOT))
    address = "http://%s:%d/" % (host if ":" not in host else "[%s]" % host, port)
    try:
        wait_for(lambda: http_ok(address + "healthz") or api.poll() is not None, 60, "the API to start")
        if api.poll() is not None:
            raise SystemExit("demo: myason api failed:\n" + (work / "api.log").read_text()[-3000:])
        print("\nthe web page serves the demo data at:\n\n    %s#token=%s\n" % (address, token))
        print("(API log: %s; Ctrl-C or SIGTERM stops it)" % (work / "api.log"), flush=True)
        while api.poll() is None:
            time.sleep(0.5)
        if api.returncode == 0:
            return 0            # stopped by the terminal's Ctrl-C, which reaches it too
        print("demo: myason api exited with %d:\n%s" % (api.returncode, (work / "api.log").read_text()[-3000:]),
              file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stop):
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if api.poll() is None:
            api.send_signal(signal.SIGTERM)
            try:
                api.wait(30)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait()
        log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pcap", default=str(ROOT / "data" / "demo.pcap"))
    ap.add_argument("--keep-time", action="store_true", help="replay with the capture's own timestamps")
    ap.add_argument("--no-serve", action="store_true",
                    help="stop after the report (also MYASON_DEMO_SERVE=0), do not serve the web page")
    ap.add_argument("--bind", default="127.0.0.1:8080",
                    help="address of the web page (another free port when this one is taken)")
    args = ap.parse_args()
    serving = not args.no_serve and os.environ.get("MYASON_DEMO_SERVE", "1") != "0"
    # Ctrl-C and SIGTERM both end the demo; during the replay they abort it, while serving they stop the page.
    signal.signal(signal.SIGTERM, _raise_stop)
    work = Path(tempfile.mkdtemp(prefix="myason-demo."))
    key = subprocess.run(MYASON + ["keygen"], capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    private(work / "agent.key", key + "\n")
    private(work / "keystore", "demo-agent %s 127.0.0.0/8\n" % key)
    db = work / "flows.db"
    (work / "collector.yaml").write_text(COLLECTOR_YAML.format(port=port, work=work, db=db))
    (work / "agent.yaml").write_text(
        "agent_id: demo-agent\nkey_file: %s\ncollectors: [\"127.0.0.1:%d\"]\nstats_interval: 0\n"
        % (work / "agent.key", port))
    # The agent's --time-shift: ends a little in the past, so the newest flows fall in closed
    # 1-minute rollup buckets.
    shift = []
    if not args.keep_time:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from myason.agent.pcapfile import open_capture
        with open_capture(args.pcap) as cap:
            newest = cap.newest_timestamp()
        if newest is not None:
            shift = ["--time-shift", "%.6f" % (time.time() - 90 - newest)]
    log = open(work / "collector.log", "w")
    coll = subprocess.Popen(MYASON + ["collector", "-cc", str(work / "collector.yaml")], stderr=log, cwd=str(ROOT))
    try:
        wait_for(lambda: "collector listening" in (work / "collector.log").read_text() or coll.poll() is not None,
                 30, "the collector to start")
        if coll.poll() is not None:
            raise SystemExit("demo: the collector failed:\n" + (work / "collector.log").read_text())
        print("collector listening on 127.0.0.1:%d (log: %s)" % (port, work / "collector.log"))
        agent = subprocess.run(MYASON + ["agent", "-ac", str(work / "agent.yaml"), "--read", args.pcap, *shift,
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
    if not serving:
        print("(remove it with: rm -r %s)" % work)
        return 0
    maintain_rollups(db)
    rc = serve(work, args.bind)
    print("(remove it with: rm -r %s)" % work)
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Stop:
        sys.exit("demo: stopped (SIGTERM)")
