"""The compiled kernels' registry and loader: numba's JIT with an on-disk cache warmed at install.

Kernel modules (MODULES) hold plain Python functions and register them here: @kernel(signature)
for the functions the Python side calls, @helper() for the functions kernels call. load() turns
them into numba dispatchers and returns the kernels as one namespace:

- a kernel: as numba.njit(signature, cache=True, nogil=True), compiled (or loaded from the
  cache) eagerly for its declared signature and for no other: a call with other argument types
  is a TypeError, never a silent compilation. nogil: no kernel touches a Python object, so
  threads run kernels in parallel;
- a helper: numba.njit(nogil=True, inline=...), compiled into the kernels that call it;
- None when numba is not installed: the callers use the reference engine (pure Python).

The replay kernels (decode and flow table) also exist in C (myason.kernels.native, built by the
same warm-up): load() serves those from the extension when it is built for the current source,
and loads numba only when a kernel without a C version is first used (the ring walker, the
store encoders), so a replay never imports numba. $MYASON_KERNELS chooses: auto (default),
numba (numba only: the oracle the C kernels are tested against), native (the C kernels
required: an error when they are not built).

The cache. numba keeps each kernel's machine code on disk and, when loading it, checks only the
file that defines the kernel: it would not notice an edited helper or constant imported from
another module. So the cache directory is named after a hash of every source the kernels are
built from (MODULES, this module, and every myason module they import, transitively) and of
numba's, numpy's and Python's versions: any change selects a new, empty directory and the kernels
are compiled once more. Roots: $MYASON_CACHE_DIR if set, else this package's __pycache__/kernels,
else ~/.cache/myason. `python -m myason.kernels` (run by scripts/install.sh) compiles every
kernel into the first writable root and stamps the directory READY; a warmed directory serves
read-only too (daemons under ProtectSystem=strict, users other than the installer), so an agent
or collector started afterwards compiles nothing. A process that finds no cache compiles (about
half a minute for all the kernels), saves them if it can and logs it. STATS tells what load() did.
"""
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("myason.kernels")

# The kernel modules, imported by load(). A new kernel module goes here.
MODULES = ("myason.kernels.decode", "myason.kernels.flowtable", "myason.kernels.pgcopy",
           "myason.kernels.influx", "myason.kernels.ring")


def ro(dtype, ndim=1):
    """In signatures: a read-only C-contiguous array, for a kernel's inputs. A writable array
    converts to it; a read-only one (np.frombuffer of bytes) matches only this."""
    return "Array(%s, %d, 'C', readonly=True)" % (dtype, ndim)


RO_BYTES = ro("uint8")
READY = "READY"           # the stamp warm() leaves in a cache directory it filled

_KERNELS = {}     # name -> (module name, function, signature); one namespace for all modules
_HELPERS = {}     # (module name, name) -> (module name, function, inline)
_loaded = []      # [namespace or None] once load() ran
_numba = []       # [numba namespace or None] once load_numba() ran
_numba_lock = threading.Lock()
_fallback = []    # [namespace or None] once load_or_none() ran
_lock = threading.Lock()
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]       # the myason package
_IMPORTS = re.compile(r"^[ \t]*(?:from[ \t]+(myason(?:\.\w+)*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)"
                      r"|import[ \t]+(myason(?:\.\w+)*))", re.M)
_TAG = re.compile(r"[0-9a-f]{16}")

# What the last numba load did: cache directory, kernels loaded from the cache and kernels
# compiled (a warm cache compiles none), seconds spent; and the C extension in use (native).
STATS = {"cache_dir": None, "writable": False, "loaded": [], "compiled": [], "seconds": 0.0, "native": None}
MODES = ("auto", "numba", "native")


def kernel(signature):
    """Register an exported kernel with its numba signature string (C-contiguous arrays)."""
    def register(fn):
        other = _KERNELS.get(fn.__name__)
        if other is not None and other[0] != fn.__module__:
            raise ValueError("kernel %s of %s: %s has one of that name (load() returns all "
                             "kernels in one namespace)" % (fn.__name__, fn.__module__, other[0]))
        _KERNELS[fn.__name__] = (fn.__module__, fn, signature)
        return fn
    return register


def helper(inline=False):
    """Register a function the kernels call (inline: numba inlines it at every call site)."""
    def register(fn):
        _HELPERS[(fn.__module__, fn.__name__)] = (fn.__module__, fn, inline)
        return fn
    return register


# -- the cache --------------------------------------------------------------------------------

def _module_file(name):
    """The source file of myason module `name` (no import), or None."""
    parts = name.split(".")[1:]
    base = _PACKAGE_ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def sources():
    """Every source file the compiled kernels depend on, sorted: MODULES, this module and the
    myason modules they import, transitively (found by reading their absolute import
    statements, the only kind the project writes)."""
    todo = list(MODULES) + [__name__]
    seen, files = set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        for m in _IMPORTS.finditer(path.read_text()):
            if m.group(3):
                todo.append(m.group(3))
                continue
            todo.append(m.group(1))
            # "from myason.x import y": y may be a module of its own.
            for word in re.findall(r"\w+", m.group(2).split("#")[0]):
                todo.append(m.group(1) + "." + word)
    return sorted(files)


def source_tag():
    """The hash naming the cache directory: kernel sources, numba, numpy, Python, machine."""
    import numba
    import numpy
    h = hashlib.sha256()
    for path in sources():
        h.update(str(path.relative_to(_PACKAGE_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(("numba %s numpy %s %s %s" % (numba.__version__, numpy.__version__,
                                           sys.implementation.cache_tag, os.uname().machine)).encode())
    return h.hexdigest()[:16]


def cache_roots():
    """Where cache directories may live, in order: $MYASON_CACHE_DIR if set, else this package's
    __pycache__/kernels (warmed by scripts/install.sh) and ~/.cache/myason."""
    env = os.environ.get("MYASON_CACHE_DIR")
    if env:
        return [Path(env)]
    return [Path(__file__).resolve().parent / "__pycache__" / "kernels", Path.home() / ".cache" / "myason"]


def _usable(d, write):
    if write:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(d, os.R_OK | os.W_OK | os.X_OK)
    return d.is_dir() and os.access(d, os.R_OK | os.X_OK)


def cache_dir(tag):
    """(directory, writable) of the kernels' cache for sources `tag`, or (None, False).

    A warmed directory (READY stamp) serves read-only (a daemon under ProtectSystem=strict, or
    another user than the one who installed); otherwise the first root where the directory can
    be made and written, where the kernels are compiled and saved.
    """
    roots = cache_roots()
    for root in roots:
        d = root / tag
        if (d / READY).is_file() and _usable(d, write=False):
            return d, os.access(d, os.W_OK)
    for root in roots:
        d = root / tag
        if _usable(d, write=True):
            return d, True
    return None, False


def _cache_class(directory, writable):
    """numba's per-function cache (numba.core.caching.FunctionCache), in `directory`.

    numba's own locators only accept a directory they can write to; this one also loads from a
    read-only one, and a failed save (read-only, full disk) leaves the kernel compiled in memory
    instead of failing it. None (no cache: compiled in memory) if numba's caching internals
    are not what this expects.
    """
    try:
        from numba.core import caching

        class Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
            def __init__(self, py_func, py_file):
                self._py_file = py_file
                self._lineno = py_func.__code__.co_firstlineno

            def ensure_cache_path(self):
                pass    # made by cache_dir(); reading needs no write access

            def get_cache_path(self):
                return str(directory)

            @classmethod
            def from_function(cls, py_func, py_file):
                return cls(py_func, py_file)

        class Impl(caching.CompileResultCacheImpl):
            _locator_classes = [Locator]

        class KernelCache(caching.FunctionCache):
            _impl_class = Impl

            def load_overload(self, sig, target_context):
                # Memoised: _jit_all looks first (cached()), then the dispatcher's compile()
                # takes the same result.
                memo = self.__dict__.setdefault("_myason_memo", {})
                if sig not in memo:
                    try:
                        memo[sig] = super().load_overload(sig, target_context)
                    except OSError as exc:      # unreadable: compile instead
                        log.warning("cannot read the kernel cache in %s (%s)", directory, exc)
                        memo[sig] = None
                return memo[sig]

            def cached(self, sig, target_context):
                return self.load_overload(sig, target_context) is not None

            def save_overload(self, sig, data):
                if writable:
                    try:
                        super().save_overload(sig, data)
                    except OSError as exc:
                        log.warning("cannot save a compiled kernel in %s (%s)", directory, exc)
        return KernelCache
    except (ImportError, AttributeError, TypeError) as exc:
        log.warning("numba's cache internals changed (%s): the kernels are compiled at every start", exc)
        return None


# -- loading ----------------------------------------------------------------------------------

class Kernels:
    """The kernels as one namespace: those of `native` (the C extension) when given, every other
    one from numba, loaded at its first use (load_numba). An attribute is resolved once."""

    def __init__(self, native):
        self._native = native

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        from myason.kernels.native import NATIVE_KERNELS
        if self._native is not None and name in NATIVE_KERNELS:
            value = getattr(self._native, name)
        else:
            ns = load_numba()
            if ns is None:
                raise RuntimeError("kernel %s needs numba, which is not available in this process" % name)
            value = getattr(ns, name)
        setattr(self, name, value)
        return value


def native_only(name):
    """The extension's function `name` (native.NATIVE_ONLY) when the C kernels are in use, else
    None (the caller has a Python fallback); never loads numba."""
    k = load()
    ext = getattr(k, "_native", None) if k is not None else None
    return getattr(ext, name, None) if ext is not None else None


def mode():
    """$MYASON_KERNELS (auto, numba, native); ValueError naming the variable when it is something else."""
    value = os.environ.get("MYASON_KERNELS", "auto") or "auto"
    if value not in MODES:
        raise ValueError("MYASON_KERNELS must be one of %s, got %r" % (", ".join(MODES), value))
    return value


def load():
    """The compiled kernels as one namespace (Kernels), or None when neither the C extension nor
    numba can be had (the callers use the reference engine then)."""
    with _lock:
        if not _loaded:
            _loaded.append(_namespace(mode()))
    return _loaded[0]


def _namespace(how):
    from myason.kernels import native
    ext = None
    if how != "numba":
        ext = native.load(cache_roots())
        if ext is None and how == "native":
            raise ImportError("MYASON_KERNELS=native: the C kernels are not built for this source "
                              "(python -m myason.kernels builds them)")
        STATS["native"] = ext.__file__ if ext is not None else None
    if ext is None and load_numba() is None:
        return None
    return Kernels(ext)


def load_numba():
    """The numba kernels as a module-like namespace (compiled or loaded from the cache once), or
    None without numba."""
    with _numba_lock:
        if not _numba:
            _numba.append(_load())
    return _numba[0]


def load_or_none():
    """The numba kernels (load_numba), or None (logged once) when they cannot be had for any
    reason. For optional users whose kernels are numba only (the collector's encoders have
    pure-Python equivalents): numba's JIT can fail at run time."""
    if not _fallback:
        try:
            _fallback.append(load_numba())
        except Exception as exc:  # noqa: BLE001 - the caller falls back to Python
            log.warning("compiled kernels unavailable (%s): using the Python code paths", exc)
            _fallback.append(None)
    return _fallback[0]


def build_native():
    """The C kernels for the current source: found built, else compiled into the first writable
    cache root. Returns the path, or None with the reason in STATS["native_error"] (logged)."""
    from myason.kernels import native
    roots = cache_roots()
    found = native.find(roots)
    if found is not None:
        STATS["native"] = str(found)
        return found
    for root in roots:
        if _usable(root, write=True):
            try:
                path = native.build(root)
            except (native.BuildError, OSError) as exc:
                STATS["native_error"] = str(exc)
                log.warning("the C kernels could not be built (%s): replays load numba instead (~0.3 s "
                            "more per start)", exc)
                return None
            STATS["native"] = str(path)
            return path
    STATS["native_error"] = "no writable cache root (%s)" % ", ".join(map(str, roots))
    log.warning("the C kernels could not be built: %s", STATS["native_error"])
    return None


def _load():
    for mod in MODULES:
        importlib.import_module(mod)
    try:
        import numba
    except ImportError:
        return None
    except OSError as exc:
        # llvmlite checks at import that it can map executable memory: not under systemd's
        # MemoryDenyWriteExecute or the kernel's PR_SET_MDWE.
        log.warning("numba cannot generate machine code in this process (%s): the compiled "
                    "kernels are unavailable", exc)
        return None
    started = time.perf_counter()
    directory, writable = cache_dir(source_tag())
    cache = _cache_class(directory, writable) if directory else None
    if directory is None:
        log.warning("no usable cache directory for the compiled kernels (set MYASON_CACHE_DIR): "
                    "compiling them in memory")
    # numba's first compilation or cache load imports scipy.linalg only to probe for BLAS
    # (0.2-0.3 s), and cffi (with its C parser, 20-50 ms) to type cffi functions; the kernels
    # use neither, so these imports are made to fail fast (numba then reports no BLAS and no
    # cffi support in this process; other code may import both afterwards).
    blocked = [m for m in ("scipy.linalg", "cffi") if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None
    try:
        ns = _jit_all(numba.njit, cache)
    finally:
        for m in blocked:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]
    loaded, compiled = [], []
    for name in _KERNELS:
        (loaded if sum(getattr(ns, name).stats.cache_hits.values()) else compiled).append(name)
    STATS.update(cache_dir=str(directory) if directory else None, writable=writable, loaded=loaded,
                 compiled=compiled, seconds=time.perf_counter() - started)
    if compiled:
        log.info("compiled %d kernels in %.1f s, cache %s (scripts/install.sh compiles them ahead: "
                 "python -m myason.kernels)", len(compiled), STATS["seconds"],
                 directory if writable else "none")
    return ns


def _jit_all(njit, cache):
    """numba dispatchers for the registered functions, put in place of the Python functions in
    every kernel module (a kernel sees its helpers as dispatchers, even those it imported).

    Kernels are as numba.njit(signature, cache=True, nogil=True), with the cache class above.
    Helpers are made dispatchers only when a kernel is not in the cache: loading compiles none.
    """
    kernels = []
    for name, (_mod, fn, sig) in _KERNELS.items():
        disp = njit(nogil=True)(fn)
        if cache is not None:
            disp._cache = cache(fn)
        kernels.append((name, fn, sig, disp))
    modules = {mod for mod, _, _ in list(_HELPERS.values()) + list(_KERNELS.values())}
    dispatchers = {}
    if cache is None or not all([disp._cache.cached(sig, disp.targetctx) for _, _, sig, disp in kernels]):
        for _mod, fn, inline in _HELPERS.values():
            dispatchers[id(fn)] = njit(inline="always" if inline else "never", nogil=True)(fn)
        _replace(modules, dispatchers)
    ns = type(sys)("myason_kernels")
    for name, fn, sig, disp in kernels:
        disp.compile(sig)
        disp.disable_compile()
        dispatchers[id(fn)] = disp
        setattr(ns, name, disp)
    _replace(modules, dispatchers)
    return ns


def _replace(modules, dispatchers):
    for mod in modules:
        namespace = vars(sys.modules[mod])
        for key, value in list(namespace.items()):
            disp = dispatchers.get(id(value))
            if disp is not None and getattr(disp, "py_func", None) is value:
                namespace[key] = disp


def warm():
    """Build the C kernels (build_native), compile every numba kernel into the cache (a no-op
    when it is warm) and leave the READY stamp; remove the cache directories of other sources
    from the same root. Returns STATS, or None without numba; OSError when nothing could be
    saved (no writable cache directory)."""
    build_native()
    if load_numba() is None:
        return None
    d = Path(STATS["cache_dir"]) if STATS["cache_dir"] else None
    if d is None or (STATS["compiled"] and not STATS["writable"]):
        raise OSError("no writable cache directory for the compiled kernels (%s): set MYASON_CACHE_DIR"
                      % ", ".join(map(str, cache_roots())))
    if not STATS["writable"]:
        return STATS        # warmed before, by another user: nothing to do
    # Readable by every user: the daemons run as users of their own, and the cache holds
    # nothing but machine code of public sources.
    for path in [d] + sorted(d.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    stamp = {"kernels": sorted(_KERNELS), "sources": [str(p) for p in sources()],
             "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = d / (READY + ".tmp%d" % os.getpid())
    tmp.write_text(json.dumps(stamp, indent=1) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, d / READY)
    for old in d.parent.iterdir():
        if old != d and old.is_dir() and _TAG.fullmatch(old.name):
            shutil.rmtree(old, ignore_errors=True)
    return STATS
