"""The quick start's main job runs and stores every flow the agent exported."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_stores_what_the_agent_exported():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"stored in (\S+): (\d+) flows, (\d+) packets", proc.stdout)
    assert m, proc.stdout
    exported = re.search(r"flows_exported\s+(\d+)", proc.stderr)
    metered = re.search(r"packets_metered\s+(\d+)", proc.stderr)
    assert int(m.group(2)) == int(exported.group(1)) > 0
    assert int(m.group(3)) == int(metered.group(1))
    assert "top 10 flows by bytes" in proc.stdout
    shutil.rmtree(Path(m.group(1)).parent, ignore_errors=True)
