"""Compiled kernels of the fast path: built once by numba ahead of time, then only imported.

The kernels of fastdecode, fasttable (the agent), store.copykernel and store.influxkernel (the
collector's writers' encoders) are plain Python functions registered with @kernel
(exported, with a signature) and @helper (called by kernels). load() returns them compiled:

1. from the extension module numba's AOT compiler (pycc) built into the cache directory on
   the first run: importing it needs neither numba nor any compilation, so the start-up cost
   is a millisecond instead of numba's import and cache load (~0.5 s);
2. if that module cannot be built (no C compiler...), from numba's JIT with cache=True;
3. None when numba is not installed either: the caller uses the reference engine.

The module's name carries a hash of the kernel sources, numpy's version and the Python ABI,
so an edited kernel is rebuilt; a failed build leaves a NAME.failed note (its output) so that
later runs go to step 2 at once. MYASON_FAST=jit skips step 1, MYASON_CACHE_DIR moves the cache.
"""
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("myason.agent.fastjit")

MODULES = ("myason.agent.fastdecode", "myason.agent.fasttable", "myason.store.copykernel",
           "myason.store.influxkernel")
_KERNELS = {}     # name -> (module name, function, signature)
_HELPERS = {}     # name -> (module name, function, inline)
_loaded = []      # [namespace or None] once load() ran
_fallback = []    # [namespace or None] once load_or_none() ran
_lock = threading.Lock()
# In signatures: a read-only byte buffer (np.frombuffer of a mmap or bytes).
RO_BYTES = "Array(uint8, 1, 'C', readonly=True)"


def kernel(signature):
    """Register an exported kernel with its numba signature string (C-contiguous arrays)."""
    def register(fn):
        _KERNELS[fn.__name__] = (fn.__module__, fn, signature)
        return fn
    return register


def helper(inline=False):
    """Register a function the kernels call (inline: numba inlines it at every call site)."""
    def register(fn):
        _HELPERS[fn.__name__] = (fn.__module__, fn, inline)
        return fn
    return register


def _tag():
    import numpy
    h = hashlib.sha256()
    for mod in MODULES + (__name__,):
        h.update(Path(sys.modules[mod].__file__).read_bytes())
    h.update(("%s %s %s" % (numpy.__version__, sys.implementation.cache_tag, os.uname().machine)).encode())
    return "myason_fast_" + h.hexdigest()[:16]


def _cache_dirs():
    env = os.environ.get("MYASON_CACHE_DIR")
    if env:
        return [Path(env)]
    return [Path(__file__).resolve().parent / "__pycache__", Path.home() / ".cache" / "myason"]


def _suffix():
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def _import(name, path):
    spec = importlib.util.spec_from_file_location(name, str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load():
    """The compiled kernels as a module-like namespace, or None without numba (see above)."""
    with _lock:
        if not _loaded:
            for mod in MODULES:
                __import__(mod)
            result = None
            if os.environ.get("MYASON_FAST", "aot") != "jit":
                result = _load_aot()
            if result is None:
                result = _load_jit()
            _loaded.append(result)
    return _loaded[0]


def load_or_none():
    """load(), or None (logged once) when the kernels cannot be had for any reason.

    For optional users (the collector's encoders have pure-Python equivalents): numba's JIT
    can fail at run time, e.g. with no writable cache directory.
    """
    if not _fallback:
        try:
            _fallback.append(load())
        except Exception as exc:  # noqa: BLE001 - the caller falls back to Python
            log.warning("compiled kernels unavailable (%s): using the Python code paths", exc)
            _fallback.append(None)
    return _fallback[0]


def _load_aot():
    name = _tag()
    for d in _cache_dirs():
        path = d / (name + _suffix())
        if path.exists():
            try:
                return _import(name, path)
            except ImportError as exc:
                log.warning("cannot load %s (%s): rebuilding it", path, exc)
        if (d / (name + ".failed")).exists():
            return None     # this build failed before: the JIT, without trying again
    if not _have_numba():
        return None
    root = str(Path(__file__).resolve().parents[2])
    for d in _cache_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
            if not os.access(d, os.W_OK):
                continue
        except OSError:
            continue
        log.info("compiling the fast path into %s (first run only, about a minute)", d)
        paths = [root] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
        proc = subprocess.run([sys.executable, "-m", __name__, str(d), name], env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        path = d / (name + _suffix())
        if proc.returncode == 0 and path.exists():
            return _import(name, path)
        log.warning("ahead-of-time build failed, using numba's JIT instead:\n%s", proc.stdout[-2000:])
        try:
            (d / (name + ".failed")).write_text(proc.stdout[-20000:])
        except OSError:
            pass
        return None
    return None


def _have_numba():
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):   # ValueError: sys.modules["numba"] is None
        return False


def _jit_globals(njit, **options):
    """Replace the registered functions in their modules by numba dispatchers."""
    for name, (mod, fn, inline) in _HELPERS.items():
        setattr(sys.modules[mod], name, njit(inline="always" if inline else "never", **options)(fn))
    for name, (mod, fn, _) in _KERNELS.items():
        setattr(sys.modules[mod], name, njit(**options)(fn))


def _load_jit():
    try:
        from numba import njit
    except ImportError:
        return None
    _jit_globals(njit, cache=True, nogil=True)
    # numba's first load imports scipy.linalg only to probe for BLAS (0.2-0.3 s); the kernels
    # use none, so the probe is made to fail fast (numba then reports no BLAS in this process).
    probe = "scipy.linalg" not in sys.modules
    if probe:
        sys.modules["scipy.linalg"] = None
    try:
        ns = type(sys)("myason_fast_jit")
        for name, (mod, _, _) in _KERNELS.items():
            setattr(ns, name, getattr(sys.modules[mod], name))
        ns.tick_schedule(*_empty_schedule())
    finally:
        if probe and sys.modules.get("scipy.linalg", 0) is None:
            del sys.modules["scipy.linalg"]
    return ns


def _empty_schedule():
    import numpy as np
    e = np.empty(0)
    return e, np.empty(0, np.uint8), 0.0, -1.0, False, 1.0, np.empty(0, np.int64), e


def build(outdir, name):
    """Compile every registered kernel into the extension module `name` in outdir (pycc)."""
    import warnings
    for mod in MODULES:
        __import__(mod)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import numba.pycc.compiler as pycc_compiler
        from numba import njit
        from numba.pycc import CC

    class _Flags(pycc_compiler.Flags):
        # pycc has no nogil option: the exported wrappers release the GIL like nogil=True.
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.release_gil = True
    pycc_compiler.Flags = _Flags
    _jit_globals(njit)
    with tempfile.TemporaryDirectory(dir=outdir) as tmp:
        cc = CC(name)
        cc.output_dir = tmp
        cc.verbose = False
        for kname, (mod, fn, sig) in _KERNELS.items():
            cc.export(kname, sig)(fn)
        cc.compile()
        built = Path(tmp) / (name + _suffix())
        # Atomic: a concurrent run sees the old module or the whole new one.
        os.replace(built, Path(outdir) / built.name)
    if Path(outdir) == _cache_dirs()[0]:
        # The package's own cache: modules (and failure notes) of its earlier sources are of
        # no use any more.
        for old in Path(outdir).glob("myason_fast_*"):
            if not old.name.startswith(name):
                try:
                    old.unlink()
                except OSError:
                    pass


if __name__ == "__main__":
    # Run as a script this module is __main__: the kernels register with the imported one.
    from myason.agent import fastjit
    fastjit.build(sys.argv[1], sys.argv[2])
