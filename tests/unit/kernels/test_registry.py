"""The compiled kernels' registry: what the cache directory is named after, and the fallback
without numba. That a warm cache compiles nothing in a fresh process is proved by
tests/integration/test_kernels_build.py."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from myason.kernels import native, registry

ROOT = Path(__file__).resolve().parents[3]

compiled = pytest.mark.skipif(registry.load() is None, reason="numba is not installed")


def copy_sources(dest):
    """The myason modules the kernels are built from, in a tree of their own."""
    for path in registry.sources() + [ROOT / "myason" / "__init__.py",
                                      ROOT / "myason" / "kernels" / "__init__.py"]:
        target = dest / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def tag_of(tree):
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = "from myason.kernels import registry; print(registry.__file__, registry.source_tag())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    assert out[0] == str(tree / "myason" / "kernels" / "registry.py")
    return out[1]


def test_the_sources_are_every_module_the_kernels_are_built_from():
    names = {str(p.relative_to(ROOT)) for p in registry.sources()}
    assert {"myason/kernels/registry.py", "myason/kernels/constants.py", "myason/schema.py"} <= names
    for mod in registry.MODULES:
        assert mod.replace(".", "/") + ".py" in names
    assert not any(n.startswith(("myason/agent/", "myason/store/")) for n in names)


@compiled
@pytest.mark.parametrize("edited", ["myason/kernels/constants.py", "myason/schema.py",
                                    "myason/kernels/decode.py"])
def test_any_edit_to_a_source_selects_a_new_cache_directory(tmp_path, edited):
    # numba's own check looks at the kernel's file only: a constant or a helper imported from
    # another module would go unnoticed. The cache directory is named after all of them.
    copy_sources(tmp_path)
    before = tag_of(tmp_path)
    assert tag_of(tmp_path) == before
    with open(tmp_path / edited, "a") as f:
        f.write("\n# edited\n")
    assert tag_of(tmp_path) != before


def _without_numba(code, kernels_mode):
    code = "import sys\nsys.modules['numba'] = None\n" + code + "print('ok')\n"
    env = dict(os.environ, MYASON_KERNELS=kernels_mode)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_without_numba_the_reference_paths_are_used():
    _without_numba("from myason import kernels\n"
                   "from myason.agent import process\n"
                   "from myason.store import pgcopy, influxdb\n"
                   "assert kernels.load() is None and kernels.load_or_none() is None\n"
                   "assert not process.fast_engine_available()\n"
                   "assert pgcopy._kernels() is None and influxdb.aggregate_fast([(0,)], 60, ()) is None\n",
                   "numba")


@pytest.mark.skipif(native.find(registry.cache_roots()) is None, reason="the C kernels are not built")
def test_without_numba_the_c_kernels_still_serve_replays():
    # Numba-only kernels fail loudly; the store encoders fall back to Python.
    _without_numba("from myason import kernels\n"
                   "from myason.agent import process\n"
                   "from myason.store import pgcopy\n"
                   "k = kernels.load()\n"
                   "assert process.fast_engine_available() and callable(k.walk_pcap) and callable(k.run)\n"
                   "try:\n"
                   "    k.walk_blocks\n"
                   "except RuntimeError as exc:\n"
                   "    assert 'needs numba' in str(exc)\n"
                   "else:\n"
                   "    raise AssertionError('walk_blocks without numba')\n"
                   "assert kernels.load_or_none() is None and pgcopy._kernels() is None\n",
                   "auto")


def test_kernels_mode_is_checked(monkeypatch):
    monkeypatch.setenv("MYASON_KERNELS", "fast")
    with pytest.raises(ValueError, match="MYASON_KERNELS"):
        registry.mode()


def test_a_warmed_directory_is_used_before_a_writable_one(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setattr(registry, "cache_roots", lambda: [first, second])
    (second / "abc").mkdir(parents=True)
    (second / "abc" / registry.READY).write_text("{}\n")
    assert registry.cache_dir("abc") == (second / "abc", True)
    # Nothing warmed: the first root where the directory can be made.
    assert registry.cache_dir("def") == (first / "def", True)
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(registry, "cache_roots", lambda: [tmp_path / "file" / "x", second])
    assert registry.cache_dir("ghi") == (second / "ghi", True)
    monkeypatch.setattr(registry, "cache_roots", lambda: [tmp_path / "file" / "x"])
    assert registry.cache_dir("ghi") == (None, False)


def test_myason_cache_dir_is_the_only_root_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("MYASON_CACHE_DIR", str(tmp_path))
    assert registry.cache_roots() == [tmp_path]
    monkeypatch.delenv("MYASON_CACHE_DIR")
    assert registry.cache_roots()[0] == ROOT / "myason" / "kernels" / "__pycache__" / "kernels"
