"""conf/*.service checked by systemd itself (`systemd-analyze verify` and `security`, offline).

systemd does not need to be running. The units' /opt/myason paths are pointed at this tree so
that verify can check the command exists; anything verify prints is a finding. Two settings
are also tried on the code itself, without systemd: the agent's route table under a /proc
mounted like ProcSubset=pid, and the API under the kernel's own memory-deny-write-execute.
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.services import wait_until

REPO = Path(__file__).resolve().parents[2]
UNITS = ("myason-agent.service", "myason-collector.service", "myason-api.service")
# `systemd-analyze security` grades exposure from 0 (locked down) to 10; issue 12 item 17 asks
# for 1.5 at most (systemd 252: collector 1.1, api 1.1; docs/operations.md). The agent is 1.6:
# its fast engine needs writable executable memory (numba), so it goes without
# MemoryDenyWriteExecute (0.1), as the collector does for its encoders.
MAX_EXPOSURE = {"myason-agent.service": 1.6, "myason-collector.service": 1.5, "myason-api.service": 1.5}


def _analyze():
    tool = shutil.which("systemd-analyze")
    if tool is None and os.geteuid() == 0 and shutil.which("apt-get"):
        # The package works without systemd running as init (containers).
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"],
                       capture_output=True, timeout=300, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        tool = shutil.which("systemd-analyze")
    return tool


@pytest.fixture(scope="module")
def analyze():
    tool = _analyze()
    if tool is None:
        pytest.skip("systemd-analyze is not available (apt-get install systemd)")
    return tool


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    """Copies of the units whose ExecStart runs this tree's myason."""
    out = tmp_path_factory.mktemp("units")
    exe = REPO / ".venv" / "bin" / "myason"
    if not exe.exists():
        pytest.skip("no .venv/bin/myason (run scripts/install.sh)")
    for name in UNITS:
        text = (REPO / "conf" / name).read_text().replace("/opt/myason/.venv/bin/myason", str(exe))
        (out / name).write_text(text)
    return out


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_is_silent(analyze, units, name):
    r = subprocess.run([analyze, "verify", "--man=no", str(units / name)], capture_output=True,
                       text=True, timeout=60, cwd=str(units))
    assert r.returncode == 0, r.stderr
    # Unknown keys and unparsable values are only warnings (exit 0): there must be none.
    assert (r.stdout + r.stderr).strip() == ""


def test_verify_would_report_a_mistake(analyze, units, tmp_path):
    """The control: the same check flags a misspelt key and a bad address family."""
    bad = (units / UNITS[0]).read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes\n"
                                                 "RestrictAddressFamilies=AF_BOGUS")
    path = tmp_path / "myason-bad.service"
    path.write_text(bad)
    r = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True, text=True,
                       timeout=60, cwd=str(tmp_path))
    assert "ProtectHomes" in r.stderr and "AF_BOGUS" in r.stderr


@pytest.mark.parametrize("name", UNITS)
def test_exposure_score_is_low(analyze, units, name):
    r = subprocess.run([analyze, "security", "--offline=yes", str(units / name)], capture_output=True,
                       text=True, timeout=60, cwd=str(units))
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    if r.returncode != 0 and m is None:
        pytest.skip("this systemd-analyze has no offline security check: %s" % r.stderr.strip()[:200])
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE[name], r.stdout


def test_route_table_is_read_under_proc_subset_pid():
    """ProcSubset=pid (agent unit) hides /proc/net; the agent reads /proc/self/net, which stays."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux)")
    script = textwrap.dedent("""
        import os, sys
        from myason.agent.routes import RouteTable
        print(os.path.exists("/proc/net/route"), len(RouteTable.from_system()), len(RouteTable.from_system("/proc")))
    """)
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        "mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec \"$0\" -c \"$1\"",
                        sys.executable, script], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    if r.returncode != 0 and "subset" in r.stderr:
        pytest.skip("this kernel cannot mount /proc with subset=pid: %s" % r.stderr.strip()[:200])
    assert r.returncode == 0, r.stderr
    visible, ours, theirs = r.stdout.split()
    assert (visible, theirs) == ("False", "0")      # /proc/net is gone, as under the unit
    assert int(ours) > 0                            # and the routes are still read


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _mdwe():
    """preexec_fn: the kernel's memory-deny-write-execute (Linux 6.3+), as MemoryDenyWriteExecute= does by seccomp."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(97)


def _mdwe_available():
    r = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_mdwe, timeout=30)
    return r.returncode == 0


def test_api_serves_under_memory_deny_write_execute(tmp_path):
    """The API unit sets MemoryDenyWriteExecute=yes: it must start and answer with no W+X memory."""
    if not _mdwe_available():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    import json
    import socket
    import sqlite3
    import urllib.request
    from myason.store.sqlite import SqliteWriter
    db = tmp_path / "flows.db"
    w = SqliteWriter(path=str(db))
    w.open()
    w.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = tmp_path / "api.yaml"
    api.write_text(json.dumps({"bind": "127.0.0.1:%d" % port, "database": {"type": "sqlite", "path": str(db)}}))
    proc = subprocess.Popen([sys.executable, str(REPO / "myason.py"), "api", "-ac", str(api), "--no-auth"],
                            preexec_fn=_mdwe, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def answer():
            if proc.poll() is not None:
                raise AssertionError("the API exited (%s): %s" % (proc.returncode, proc.stderr.read()))
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=2) as resp:
                    return resp.status
            except OSError:
                return None
        assert wait_until(answer, timeout=60, interval=0.2) == 200
        with urllib.request.urlopen("http://127.0.0.1:%d/q/after/1h/limit/5" % port, timeout=10) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert sqlite3.connect(str(db)).execute("SELECT count(*) FROM flows").fetchone() == (0,)


def test_numba_jit_fails_under_memory_deny_write_execute():
    """The control, and why the agent and collector units do without MemoryDenyWriteExecute."""
    if not _mdwe_available():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    pytest.importorskip("numba")
    code = "from numba import njit\nprint(njit('int64(int64)')(lambda x: x + 1)(41))"
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert free.stdout.strip() == "42", free.stderr
    denied = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            preexec_fn=_mdwe)
    assert denied.returncode != 0 and denied.stdout.strip() != "42"
