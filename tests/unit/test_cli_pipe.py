"""Every subcommand that writes to stdout ends quietly with exit 141 when its reader has gone (`| head`)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from myason.store.sqlite import SqliteWriter

ROOT = Path(__file__).resolve().parents[2]
MYASON = [sys.executable, str(ROOT / "myason.py")]


def event(i):
    stamp = "2030-01-02T03:%02d:%02dZ" % (i // 60 % 60, i % 60)
    return {"Format": "IDEA0", "ID": "00000000-0000-4000-8000-%012d" % i, "DetectTime": stamp,
            "EventTime": stamp, "Category": ["Recon.Scanning"],
            "Source": [{"IP4": ["203.0.113.%d" % (i % 250)], "Proto": ["tcp"]}],
            "Target": [{"IP4": ["10.0.0.1"], "Port": [22], "Proto": ["tcp"]}],
            "Node": [{"Name": "org.example.test"}], "Description": "Horizontal scan %d" % i}


@pytest.fixture(scope="module")
def collector_conf(tmp_path_factory):
    """A collector config whose SQLite store holds enough events to fill a pipe many times."""
    work = tmp_path_factory.mktemp("pipe")
    db = work / "flows.db"
    writer = SqliteWriter(path=str(db))
    writer.open()
    try:
        writer.write("events-1", [], [event(i) for i in range(3000)])
    finally:
        writer.close()
    conf = work / "collector.yaml"
    conf.write_text("writers:\n  - {type: sqlite, path: %s}\nspool_dir: %s\n" % (db, work / "spool"))
    return str(conf)


def run_into_closed_pipe(args):
    r, w = os.pipe()
    os.close(r)             # the reader is gone before the first byte is written
    try:
        return subprocess.run(MYASON + args, cwd=str(ROOT), stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [
    ["ifconfig"],
    ["keygen"],
    ["keygen", "--agent", "sensor-1"],
    ["agent", "--read", "x.pcap", "--no-export", "--check-config"],
    ["events", "--since", "100000d"],
    ["events", "--since", "100000d", "--json"],
    ["greylist", "--since", "100000d"],
    ["greylist", "--since", "100000d", "--format", "json"],
    ["maintain"],
])
def test_closed_stdout_ends_quietly_with_141(collector_conf, args):
    if args[0] in ("events", "greylist", "maintain"):
        args = [args[0], "-cc", collector_conf] + args[1:]
    proc = run_into_closed_pipe(args)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr
    assert "BrokenPipeError" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_an_open_stdout_still_gets_everything(collector_conf):
    proc = subprocess.run(MYASON + ["greylist", "-cc", collector_conf, "--since", "100000d"], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) > 200
