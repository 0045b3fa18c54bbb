"""The replay kernels as a C extension (_native.c): built at install, loaded in a millisecond.

Why: numba's import and its cache load cost about 0.3 s at every start, which a long-lived
collector or live agent pays once but a whole-process replay (`myason agent --read`) pays on
every file: as long as metering bench-mix's 1.35 M frames. The kernels a replay needs (frame
decoding and the flow table: NATIVE_KERNELS) are therefore also written in C, with the numba
versions kept as the oracle (tests/unit/kernels/test_native.py compares both on the same
inputs). docs/performance.md has the measurements behind this choice.

The build (`python -m myason.kernels`, run by scripts/install.sh) compiles _native.c with the
C compiler Python was built with (sysconfig) into <cache root>/native-<tag>/, tag = a hash of
the source, Python's ABI and the machine, so an edited source is never served by a stale
build: it is simply not found, and the numba kernels are used until the next build. The tag is
also compiled into the module (SOURCE_TAG) and checked at load, with the constants the C code
was written against (constants() and flowtable_layout() against myason.kernels.constants and
flowtable).
"""
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

log = logging.getLogger("myason.kernels")

SOURCE = Path(__file__).resolve().parent / "_native.c"
# The kernels _native.c implements (same names and arguments as the numba kernels).
NATIVE_KERNELS = ("walk_pcap", "decode_frames", "run", "rehash", "flush_all", "rebuild_heap", "tick_schedule")
# Functions of the extension with no numba twin (their Python fallback is named where they are used).
NATIVE_ONLY = ("assemble",)
PREFIX = "native-"
CFLAGS = ("-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-Wall", "-Werror", "-std=gnu11")


class BuildError(Exception):
    """The extension could not be compiled (no compiler, no Python headers, a compiler error)."""


def source_tag():
    """The hash naming a build: the C source, Python's ABI (extension suffix) and the machine."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(("%s %s" % (importlib.machinery.EXTENSION_SUFFIXES[0], os.uname().machine)).encode())
    return h.hexdigest()[:16]


def _filename():
    return "_native" + importlib.machinery.EXTENSION_SUFFIXES[0]


def find(roots, tag=None):
    """The path of a built extension for the current source under one of `roots`, or None."""
    tag = tag or source_tag()
    for root in roots:
        path = Path(root) / (PREFIX + tag) / _filename()
        if path.is_file() and os.access(path, os.R_OK):
            return path
    return None


def _check(mod, tag):
    """Raise ImportError unless the module is this source's build and its constants are ours."""
    from myason.kernels import constants, flowtable
    from myason.schema import END_REASONS
    if getattr(mod, "SOURCE_TAG", None) != tag:
        raise ImportError("stale build (tag %s, source %s)" % (getattr(mod, "SOURCE_TAG", None), tag))
    for name, value in mod.constants().items():
        if getattr(constants, name) != value:
            raise ImportError("constant %s is %r in _native.c, %r in myason.kernels.constants"
                              % (name, value, getattr(constants, name)))
    layout = mod.flowtable_layout()
    expected = {"ALIVE": flowtable.ALIVE, "FIN_SEEN": flowtable.FIN_SEEN, "NSTATE": flowtable.NSTATE,
                "I": (flowtable.NALIVE, flowtable.FREE_TOP, flowtable.SEQ, flowtable.CPOS, flowtable.HEAP_N,
                      flowtable.PACKETS, flowtable.CREATED, flowtable.OUT_N, flowtable.COUNTS,
                      flowtable.CAP, flowtable.LIMIT, flowtable.HMASK, flowtable.CN),
                "CODES": (flowtable.DONE, flowtable.NEED_OUT, flowtable.NEED_GROW, flowtable.NEED_HEAP)}
    if layout != expected:
        raise ImportError("the flow table layout of _native.c differs from myason.kernels.flowtable")
    if len(END_REASONS) > flowtable.CAP - flowtable.COUNTS:
        raise ImportError("more end reasons than the flow table counts: update _native.c")
    mod.set_reasons(flowtable.R_IDLE, flowtable.R_ACTIVE, flowtable.R_FIN, flowtable.R_RST, flowtable.R_FULL)


def load(roots):
    """The built extension module for the current source, or None (not built, or not loadable:
    logged)."""
    tag = source_tag()
    path = find(roots, tag)
    if path is None:
        return None
    name = "myason.kernels._native"
    try:
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        _check(mod, tag)
    except ImportError as exc:
        log.warning("the native kernels in %s cannot be used (%s): using numba's", path, exc)
        return None
    return mod


def compiler():
    """The C compiler command Python was built with (argv list), as sysconfig reports it."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def build(root):
    """Compile _native.c into root/native-<tag>/ (nothing to do when that build exists); remove
    the builds of other sources. Returns the path; BuildError when it cannot be built."""
    root = Path(root)
    tag = source_tag()
    target = root / (PREFIX + tag) / _filename()
    if not target.is_file():
        include = sysconfig.get_paths()["include"]
        if not (Path(include) / "Python.h").is_file():
            raise BuildError("Python.h not found in %s (Debian: apt-get install python3-dev)" % include)
        cmd = compiler()
        if shutil.which(cmd[0]) is None:
            raise BuildError("no C compiler (%s; Debian: apt-get install gcc)" % cmd[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(fd)
        argv = cmd + list(CFLAGS) + ["-I" + include, "-DMYASON_SOURCE_TAG=" + tag, str(SOURCE), "-o", tmp, "-lm"]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise BuildError("%s failed (exit %d):\n%s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        target.parent.chmod(0o755)
    for old in root.iterdir():
        if old.name.startswith(PREFIX) and old.name != PREFIX + tag and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return target

