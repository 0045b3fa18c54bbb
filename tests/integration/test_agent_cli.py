"""`myason agent` as a new user meets it: start-up log line, closed stdout, fatal errors."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo.pcap"
MYASON = [sys.executable, str(ROOT / "myason.py")]


def run_agent(*args, timeout=120, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(MYASON + ["agent", *args], cwd=str(ROOT), stderr=subprocess.PIPE, text=True,
                          timeout=timeout, **kw)


def keygen(path):
    subprocess.run(MYASON + ["keygen", "--out", str(path)], check=True, capture_output=True, timeout=60)


# --- the agent says who it is and where it exports ------------------------------------------

def test_start_log_line_names_the_agent_id_and_the_collectors(tmp_path):
    key = tmp_path / "agent.key"
    keygen(key)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        conf = tmp_path / "agent.yaml"
        conf.write_text('agent_id: sensor-42\nkey_file: %s\ncollectors: ["127.0.0.1:%d"]\nstats_interval: 0\n'
                        % (key, port))
        proc = run_agent("-ac", str(conf), "--read", str(DEMO), "--no-progress", "-q")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "sensor-42" in line]
    assert len(lines) == 1 and "127.0.0.1:%d" % port in lines[0] and "keystore" in lines[0], proc.stderr


# --- a closed stdout ends the run quietly ---------------------------------------------------

def closed_pipe():
    """The write end of a pipe whose reader is already gone."""
    r, w = os.pipe()
    os.close(r)
    return w


@pytest.mark.parametrize("engine", ["fast", "python"])
def test_stdout_closed_before_the_first_record(engine):
    w = closed_pipe()
    try:
        proc = run_agent("--read", str(DEMO), "--no-export", "--output", "-", "--no-progress", "-q",
                         "--engine", engine, stdout=w)
    finally:
        os.close(w)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


def test_stdout_closed_after_one_line_like_head_1():
    proc = subprocess.Popen(MYASON + ["agent", "--read", str(DEMO), "--no-export", "--output", "-", "--no-progress"],
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()            # what `| head -1` does after its line
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 141, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first.startswith(b'{"src_ip"')
    assert "Traceback" not in err and "Broken pipe" not in err and "ERROR" not in err
    assert "myason agent summary" in err   # the run's counters still go to stderr (-q leaves them out)


# --- fatal errors: the error, not a summary of zeros ----------------------------------------

@pytest.mark.parametrize("name, content, message", [
    ("nope.pcap", None, "no such file"),
    ("notes.txt", b"just some text\n", "not a pcap or pcapng file"),
    ("empty.pcap", b"", "empty file"),
])
def test_a_capture_that_cannot_be_read_prints_the_error_only(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    proc = run_agent("--read", str(path), "--no-export", "--no-progress")
    assert proc.returncode == 1
    assert name in proc.stderr and message in proc.stderr
    assert "summary" not in proc.stderr and "flows_exported" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_bad_later_file_is_reported_before_anything_is_replayed(tmp_path):
    out = tmp_path / "flows.csv"
    proc = run_agent("--read", str(DEMO), str(tmp_path / "nope.pcap"), "--no-export", "--no-progress",
                     "--output", str(out))
    assert proc.returncode == 1
    assert "nope.pcap" in proc.stderr and "summary" not in proc.stderr
    assert not out.exists()
