"""The quick start's main job runs, stores every flow the agent exported and serves the web page."""
import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_stores_what_the_agent_exported():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--no-serve"], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"stored in (\S+): (\d+) flows, (\d+) packets", proc.stdout)
    assert m, proc.stdout
    exported = re.search(r"flows_exported\s+(\d+)", proc.stderr)
    metered = re.search(r"packets_metered\s+(\d+)", proc.stderr)
    assert int(m.group(2)) == int(exported.group(1)) > 0
    assert int(m.group(3)) == int(metered.group(1))
    assert "top 10 flows by bytes" in proc.stdout
    assert "IDEA events: " in proc.stdout
    shutil.rmtree(Path(m.group(1)).parent, ignore_errors=True)


def _lines(stream, out):
    for line in stream:
        out.put(line)
    out.put(None)


def _get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read()


def test_demo_serves_the_page_until_sigterm():
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo.py"), "--bind", "127.0.0.1:0"],
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, err = queue.Queue(), queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    threading.Thread(target=_lines, args=(proc.stderr, err), daemon=True).start()
    out, address, work = [], None, None
    try:
        deadline = time.monotonic() + 180
        while address is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            assert line is not None, "demo ended before serving:\n" + "".join(out)
            out.append(line)
            m = re.search(r"(http://\S+/)#token=(\S+)", line)
            if m:
                address, token = m.groups()
            m = re.search(r"stored in (\S+):", line)
            if m:
                work = Path(m.group(1)).parent
        assert address, "no page address printed:\n" + "".join(out)
        status, body = _get(address)
        assert status == 200 and b'id="traffic-chart"' in body
        status, body = _get(address + "top/talkers?period=1h", token)
        assert status == 200 and json.loads(body)["rows"], body
        status, body = _get(address + "events?since=1h", token)
        assert status == 200 and json.loads(body)["events"], body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if work:
            shutil.rmtree(work, ignore_errors=True)
