"""The test tree's layout: the shared harness is one package (tests/support), fixtures live in
conftest.py files, and nothing imports a test module.

A test module importing another runs the other's module-level code and skips, drags its fixtures in
under noqa, and breaks when the other is renamed or split; a helper two modules share belongs in
tests/support, a fixture in the conftest.py of the layer that uses it.
"""
import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "tests.support"
# Trees whose Python files may import the harness but no test module.
SCANNED = ("tests", "bench", "scripts")


def module_name(root, path):
    """The dotted name `path` is imported by from `root` (a package's __init__.py: the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(root, path):
    """(line, dotted name) for every name an import statement of `path` brings in: `import a.b` gives
    a.b, `from a import b` gives a.b (b may be a module), relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(root, path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                yield node.lineno, module + "." + alias.name


def is_fixture(decorator):
    """True for @pytest.fixture, @pytest.fixture(...) and @fixture(...)."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    return name == "fixture"


def violations(root):
    """Every break of the layout rules under root, as 'path:line: what' strings."""
    out = []
    tests = root / "tests"
    support = tests / "support"
    files = sorted(p for top in SCANNED if (root / top).is_dir() for p in (root / top).rglob("*.py"))
    # Test modules run from their own directory could import a sibling by its bare name.
    test_stems = {p.stem for p in tests.rglob("*.py") if support not in p.parents}
    for path in files:
        rel = path.relative_to(root)
        in_support = support in path.parents
        if path.is_relative_to(tests) and not in_support and not (
                path.name.startswith("test_") or path.name in ("conftest.py", "__init__.py")):
            out.append("%s:1: a helper module outside tests/support (move it there)" % rel)
        for line, name in imported_names(root, path):
            inside = name == "tests" or name.startswith("tests.")
            if inside and not (name == SUPPORT or name.startswith(SUPPORT + ".")):
                out.append("%s:%d: imports %s, a test module (shared helpers belong in tests/support)"
                           % (rel, line, name))
            elif not inside and name.split(".")[0] in test_stems:
                out.append("%s:%d: imports %s by its bare name" % (rel, line, name))
        if in_support:
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(map(is_fixture, node.decorator_list)):
                    out.append("%s:%d: fixture %s defined in tests/support (fixtures live in conftest.py files)"
                               % (rel, node.lineno, node.name))
    return out


def test_no_module_imports_a_test_module_and_the_harness_is_one_package():
    assert violations(ROOT) == []


def test_the_check_finds_each_kind_of_break(tmp_path):
    files = {
        "tests/__init__.py": "",
        "tests/conftest.py": "from tests.support.services import start_services\n",
        "tests/support/__init__.py": "",
        "tests/support/good.py": "from tests.support import services\nfrom . import other\n",
        "tests/support/bad.py": "from tests.unit.test_b import row\nimport pytest\n\n@pytest.fixture\ndef pg():\n    pass\n",
        "tests/unit/__init__.py": "",
        "tests/unit/helpers.py": "",
        "tests/unit/test_a.py": "from tests.unit.test_b import row\nfrom . import helpers\nimport test_b\n"
                                "import tests.integration.test_c\nfrom tests.support.good import x\n",
        "tests/unit/test_b.py": "import os\n",
        "tests/integration/test_c.py": "from tests.integration import netns\nfrom tests import support\n",
        "bench/run.py": "from tests.integration.test_c import Api\nfrom tests.support.api import ApiProcess\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    assert sorted(violations(tmp_path)) == sorted([
        "bench/run.py:1: imports tests.integration.test_c.Api, a test module (shared helpers belong in tests/support)",
        "tests/integration/test_c.py:1: imports tests.integration.netns, a test module"
        " (shared helpers belong in tests/support)",
        "tests/support/bad.py:1: imports tests.unit.test_b.row, a test module (shared helpers belong in tests/support)",
        "tests/support/bad.py:5: fixture pg defined in tests/support (fixtures live in conftest.py files)",
        "tests/unit/helpers.py:1: a helper module outside tests/support (move it there)",
        "tests/unit/test_a.py:1: imports tests.unit.test_b.row, a test module (shared helpers belong in tests/support)",
        "tests/unit/test_a.py:2: imports tests.unit.helpers, a test module (shared helpers belong in tests/support)",
        "tests/unit/test_a.py:3: imports test_b by its bare name",
        "tests/unit/test_a.py:4: imports tests.integration.test_c, a test module (shared helpers belong in tests/support)",
    ])
