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

# The layer order (docs/architecture.md, "The house plan"), top first. A module may import its
# own package and anything in a lower layer; never a layer above, and never a sibling of its own
# layer (the daemons do not import each other; nor do enrich and detect). The bottom layer's
# small modules may use each other (import cycles are refused separately).
LAYERS = (
    ("cli", "__main__"),
    ("api", "collector", "agent", "greylist"),
    ("enrich", "detect"),
    ("store",),
    ("schema", "wire", "keys", "options", "kernels", "nets", "services", "errors", "metrics", "logs",
     "fsmode", "redact", "__init__"),
)
BOTTOM = LAYERS[-1]
# Package (or top-level module) -> the myason packages it must not import.
FORBIDDEN = {}
for _i, _layer in enumerate(LAYERS):
    for _name in _layer:
        above = [n for layer in LAYERS[:_i] for n in layer]
        siblings = [] if _layer is BOTTOM or _i == 0 else [n for n in _layer if n != _name]
        FORBIDDEN[_name] = tuple(above + siblings)


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


def _files(package):
    single = PKG / (package + ".py")
    return [single] if single.is_file() else sorted((PKG / package).rglob("*.py"))


def breaches(package):
    bad = []
    for path in _files(package):
        for name, line in imported_modules(path):
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "myason" and parts[1] in FORBIDDEN[package]:
                bad.append((str(path.relative_to(ROOT)), line, name))
    return ["%s:%d imports %s" % b for b in sorted(bad)]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_breaks_the_layer_rule(package):
    assert breaches(package) == []


def test_every_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert tops - set(FORBIDDEN) == set(), "add new packages to LAYERS"


def _module_graph():
    """myason module -> the myason modules its top-level statements import (what runs at import)."""
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text(), str(path))
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                deps.add(base)
                deps.update(base + "." + a.name for a in node.names)
        graph[name] = {d for d in deps if d.startswith("myason")}
    known = set(graph)
    # "from pkg import name" names a module only when pkg.name is one; the package itself runs too.
    return {m: {d for d in deps if d in known and d != m and not m.startswith(d + ".")}
            for m, deps in graph.items()}


def _cycles(graph):
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(_module_graph()) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


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
