"""What the commands log and print, as real processes: enrichment notes once and only where flows are
enriched, the collector's summary table and its unknown_agent line."""
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MYASON = [sys.executable, str(ROOT / "myason.py")]
DEMO = ROOT / "data" / "demo.pcap"
# Setup notes of the enrichment steps (the default collector config has no GeoIP database and
# no local networks).
NOTES = ("geoip enrichment", "direction enrichment")


def myason(*args, **kw):
    return subprocess.run(MYASON + list(args), cwd=str(ROOT), capture_output=True, text=True, timeout=120, **kw)


def free_udp_port():
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def stored(db):
    try:
        with sqlite3.connect(str(db)) as conn:
            return conn.execute("SELECT count(*) FROM flows").fetchone()[0]
    except sqlite3.Error:
        return -1


def setup(work, processors=1):
    key = myason("keygen").stdout.strip()
    (work / "agent.key").write_text(key + "\n")
    (work / "agent.key").chmod(0o600)
    (work / "keystore").write_text("demo-agent %s\n" % key)
    (work / "keystore").chmod(0o600)
    port = free_udp_port()
    conf = work / "collector.yaml"
    conf.write_text("bind_address: 127.0.0.1\nbind_port: %d\nkeystore: %s\nspool_dir: %s\nstats_interval: 0\n"
                    "batch_interval: 0.2\nprocessors_number: %d\nwriters:\n  - {type: sqlite, path: %s}\n"
                    % (port, work / "keystore", work / "spool", processors, work / "flows.db"))
    for agent in ("demo-agent", "stranger"):
        (work / ("%s.yaml" % agent)).write_text(
            'agent_id: %s\nkey_file: %s\ncollectors: ["127.0.0.1:%d"]\nstats_interval: 0\n'
            % (agent, work / "agent.key", port))
    return conf


def run_collector(work, processors=1):
    """Start a collector, replay the demo capture into it from a known and an unknown agent, stop it.

    Returns (collector stderr, summary JSON)."""
    conf = setup(work, processors)
    log = open(work / "collector.log", "w")
    coll = subprocess.Popen(MYASON + ["collector", "-cc", str(conf), "--summary-json", str(work / "summary.json")],
                            cwd=str(ROOT), stderr=log)
    try:
        wait_for(lambda: "collector listening" in (work / "collector.log").read_text() or coll.poll() is not None,
                 60, "the collector to listen")
        assert coll.poll() is None, (work / "collector.log").read_text()
        for agent in ("demo-agent", "stranger"):
            proc = myason("agent", "-ac", str(work / ("%s.yaml" % agent)), "--read", str(DEMO), "--no-progress",
                          "--output", str(work / ("%s.csv" % agent)))
            assert proc.returncode == 0, proc.stderr
        exported = sum(1 for _ in open(work / "demo-agent.csv")) - 1
        wait_for(lambda: stored(work / "flows.db") >= exported, 60, "the flows to be stored")
        wait_for(lambda: "unknown_agent" in (work / "collector.log").read_text(), 30, "the unknown_agent line")
    finally:
        coll.send_signal(signal.SIGTERM)
        coll.wait(60)
        log.close()
    assert coll.returncode == 0
    return (work / "collector.log").read_text(), json.loads((work / "summary.json").read_text())


@pytest.fixture(scope="module")
def thread_run(tmp_path_factory):
    return run_collector(tmp_path_factory.mktemp("threads"))


@pytest.fixture(scope="module")
def process_run(tmp_path_factory):
    return run_collector(tmp_path_factory.mktemp("processes"), processors=2)


# --- item: enrichment notes once, where flows are enriched --------------------------------------

@pytest.mark.parametrize("run", ["thread_run", "process_run"])
@pytest.mark.parametrize("note", NOTES)
def test_collector_logs_each_enrichment_note_once_per_start(request, run, note):
    log, _ = request.getfixturevalue(run)
    assert log.count(note) == 1, log


def test_collector_check_config_shows_the_notes_once(tmp_path):
    conf = setup(tmp_path)
    proc = myason("collector", "-cc", str(conf), "--check-config")
    assert proc.returncode == 0, proc.stderr
    for note in NOTES:
        assert proc.stderr.count(note) == 1, proc.stderr


@pytest.mark.parametrize("args", [
    ["events"], ["events", "--json"], ["greylist"], ["maintain"], ["api", "--check-config", "--no-auth"],
])
def test_commands_that_only_read_the_store_log_no_enrichment_notes(tmp_path, args):
    from myason.store.sqlite import SqliteWriter
    conf = setup(tmp_path)
    writer = SqliteWriter(path=str(tmp_path / "flows.db"))    # a store to read, as a collector leaves it
    writer.open()
    writer.close()
    proc = myason(args[0], "-cc", str(conf), *args[1:])
    assert proc.returncode == 0, proc.stderr
    for note in NOTES:
        assert note not in proc.stderr, proc.stderr


# --- item: the collector's summary at exit ------------------------------------------------------

def test_collector_summary_is_a_table_with_iso_times(thread_run):
    log, _ = thread_run
    summary = log[log.index("myason collector summary:"):]
    assert "{" not in summary and "'" not in summary
    row = next(line for line in summary.splitlines() if line.split()[:1] == ["demo-agent"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row.split()[-1]), row
    assert re.search(r"rejects\s+unknown_agent \d+", summary)


def test_summary_json_stays_machine_readable(thread_run):
    _, data = thread_run
    agent = data["agents"]["demo-agent"]
    assert isinstance(agent["last_seen"], float) and agent["flows"] > 0
    assert data["rejects"]["unknown_agent"] > 0


# --- item: who the collector refused ----------------------------------------------------------

def test_collector_names_the_refused_agent_id_and_source(thread_run):
    log, _ = thread_run
    lines = [line for line in log.splitlines() if "unknown_agent" in line and "summary" not in line
             and "rejects" not in line]
    assert len(lines) == 1, log
    assert "'stranger'" in lines[0] and "127.0.0.1" in lines[0]
