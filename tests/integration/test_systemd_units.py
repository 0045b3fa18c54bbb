"""conf/*.service checked by systemd itself (`systemd-analyze verify` and `security`, offline).

systemd does not need to be running. The units' /opt/myason paths are pointed at this tree so
that verify can check the command exists; anything verify prints is a finding.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = ("myason-agent.service", "myason-collector.service", "myason-api.service")
# `systemd-analyze security` grades exposure from 0 (locked down) to 10; 3.0 is still "OK".
MAX_EXPOSURE = 3.0


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
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout
