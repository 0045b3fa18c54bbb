"""`--log-json` on real agent and collector processes: every stderr line is one JSON object."""
import json
import time
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path


from tests.support.collector import Collector, sqlite_count

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {"time", "level", "logger", "thread", "message"}


def json_lines(text, skip_plain_head=False):
    """Every non-empty line parsed as JSON (fails on the first that is not).

    skip_plain_head: ignore plain lines before the first JSON one (logged before logging is set up).
    """
    out = []
    for line in text.splitlines():
        if skip_plain_head and not out and not line.startswith("{"):
            continue
        if line.strip():
            doc = json.loads(line)
            assert FIELDS <= set(doc), doc
            datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            out.append(doc)
    return out


def odd_pcap(path):
    """A classic pcap of link type 147 (USER0), which the agent counts, skips and warns about once."""
    frame = b"\x00" * 40
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147)
                     + struct.pack("<IIII", 1700000000, 0, len(frame), len(frame)) + frame)
    return path


def test_agent_and_collector_log_json_lines(tmp_path):
    col = Collector(tmp_path / "collector", [{"type": "sqlite", "path": str(tmp_path / "flows.db")}])
    col.start(extra_args=("--log-json", "-q"))
    try:
        conf = col.agent_conf()
        agent = subprocess.run([sys.executable, str(ROOT / "myason.py"), "agent", "-ac", str(conf), "--read",
                                str(ROOT / "data" / "demo.pcap"), str(odd_pcap(tmp_path / "odd.pcap")),
                                "--no-progress", "--log-json", "-q", "--engine", "python"],
                               cwd=str(ROOT), capture_output=True, text=True, timeout=300)
        assert agent.returncode == 0, agent.stderr
        deadline = time.monotonic() + 30
        while sqlite_count(tmp_path / "flows.db") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        code = col.stop()
    assert code == 0, col.log()
    agent_docs = json_lines(agent.stderr)
    warn = [d for d in agent_docs if "link type 147" in d["message"]]
    assert len(warn) == 1 and warn[0]["level"] == "WARNING" and warn[0]["logger"].startswith("myason.agent")
    collector_docs = json_lines(col.log(), skip_plain_head=True)
    messages = [d["message"] for d in collector_docs]
    assert any(m.startswith("collector listening") for m in messages)
    assert any(m.startswith("signal 15") for m in messages)
    assert {d["logger"].split(".")[0] for d in collector_docs} == {"myason"}
    assert sqlite_count(tmp_path / "flows.db") > 0


def test_collector_start_up_warnings_are_json_too(tmp_path):
    col = Collector(tmp_path / "collector", [{"type": "sqlite", "path": str(tmp_path / "flows.db")}])
    col.start(extra_args=("--log-json", "-q"))
    assert col.stop() == 0, col.log()
    json_lines(col.log())
