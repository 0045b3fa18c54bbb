"""The layer rule where the compiled kernels sit: myason.kernels is a low layer that the agent and
the store both import, so it imports neither of them (nor anything above); the store imports
nothing of the agent.

Checked twice: statically (every import statement, those inside functions included) and at run
time (what loading the kernels actually imports, in a fresh interpreter: the registry imports its
kernel modules by name, which no import statement shows).
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "myason"

# Package -> the myason packages it must not import.
FORBIDDEN = {
    "kernels": ("agent", "store", "collector", "api", "enrich", "detect", "cli"),
    "store": ("agent", "collector", "api", "cli"),
}


def imported_modules(path):
    """Every myason module an import statement of the file names, with its line."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base == "myason":          # from myason import agent
                for alias in node.names:
                    yield base + "." + alias.name, node.lineno
            else:
                yield base, node.lineno


def breaches(package):
    bad = []
    for path in sorted((PKG / package).rglob("*.py")):
        for name, line in imported_modules(path):
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "myason" and parts[1] in FORBIDDEN[package]:
                bad.append((str(path.relative_to(ROOT)), line, name))
    return ["%s:%d imports %s" % b for b in sorted(bad)]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_breaks_the_layer_rule(package):
    assert breaches(package) == []


def test_the_checker_sees_a_breach(tmp_path, monkeypatch):
    # The rule can fail: a kernel module importing the agent, even inside a function, is caught.
    fake = tmp_path / "myason" / "kernels"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from myason.agent import decode\n"
                                 "from myason import store\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", tmp_path / "myason")
    assert breaches("kernels") == ["myason/kernels/bad.py:2 imports myason.agent",
                                   "myason/kernels/bad.py:3 imports myason.store"]


def test_loading_the_kernels_imports_only_the_low_layers():
    code = ("import json, sys\n"
            "from myason import kernels\n"
            "kernels.load_or_none()\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('myason'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    loaded = json.loads(out.splitlines()[-1])
    assert "myason.kernels.decode" in loaded and "myason.kernels.pgcopy" in loaded
    above = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in FORBIDDEN["kernels"]]
    assert above == []


def test_the_store_loads_without_the_agent():
    code = ("import json, sys\n"
            "import myason.store.pgcopy, myason.store.influxdb, myason.store.postgresql\n"
            "import myason.store.sqlite, myason.store.jsonl\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('myason.agent'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == []
