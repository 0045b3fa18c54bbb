"""docs/architecture.md's worked examples (a writer, an enrichment step, a detector) run as written.

Each runs in a fresh interpreter, so what it registers does not leak into other tests.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def example(heading):
    text = DOC.read_text()
    section = text.split("#### " + heading + "\n", 1)[1].split("\n#", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


@pytest.mark.parametrize("heading", ["Adding a writer", "Adding an enrichment step", "Adding a detector"])
def test_worked_example_runs(heading):
    code = example(heading)
    assert "assert " in code, "an example proves what it claims"
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
