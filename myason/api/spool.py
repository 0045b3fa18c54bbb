"""The result spool of background flow searches: one file per result in a private directory,
written atomically, kept `ttl` seconds and at most `max_bytes` in all (the oldest go first).

A reader never sees half a file: a result is written to a hidden temporary name and renamed
into place. No fsync: the files are only worth anything to the process that wrote them (the
search states live in its memory), so a crash loses nothing a restart would keep.

On open, a configured directory is created 0700 (an existing one is set to 0700), locked
against a second `myason api` using it (flock on `.lock`, refused at start naming the key),
and emptied of the result files a previous process left: their ids and states died with that
process, so no one can ask for them. Without a configured directory each process makes its
own (mkdtemp, 0700) in the temp dir when its first search runs, and removes it on close or at
exit.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import threading
import time
import weakref

from myason.errors import ConfigError

_NAME_RE = re.compile(r"^[0-9a-f]{16}\.[0-9]+\.json$")
_TMP_RE = re.compile(r"^\.[0-9a-f]{16}\.[0-9]+\.json\.tmp$")


class TooBig(Exception):
    """A result larger than the whole spool."""


class ResultSpool:
    """put/get/remove of result files by name; expire() and the byte cap drop the oldest."""

    def __init__(self, directory=None, max_bytes=256 << 20, ttl=3600.0, clock=time.time, key="result_spool"):
        self.directory = directory
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.clock = clock
        self.key = key
        self._owned = directory is None
        self._lock_fd = None
        self._lock = threading.Lock()
        self._files = collections.OrderedDict()     # name -> (bytes, written at), oldest first
        self.bytes = 0
        self.leftovers = 0      # files of a previous process removed at open

    @property
    def is_open(self) -> bool:
        return self._lock_fd is not None

    def open(self) -> "ResultSpool":
        """Create (or take over) the directory; ConfigError naming the key when that fails."""
        try:
            if self._owned:
                self.directory = tempfile.mkdtemp(prefix="myason-api-results-")
                # Also at exit: `myason api` runs without a lifespan, and tests build many apps.
                self._cleanup = weakref.finalize(self, shutil.rmtree, self.directory, ignore_errors=True)
            else:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                os.chmod(self.directory, 0o700)
            fd = os.open(os.path.join(self.directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(self.key, "cannot use %s as the result spool: %s"
                              % (self.directory, exc.strerror or exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(self.key, "%s is the result spool of another running myason api" % self.directory) from None
        self._lock_fd = fd
        for name in os.listdir(self.directory):
            if _NAME_RE.match(name) or _TMP_RE.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name))
                    self.leftovers += 1
        return self

    def close(self) -> None:
        """Remove every result (and the directory when it was made here); release the lock."""
        with self._lock:
            names, self._files, self.bytes = list(self._files), collections.OrderedDict(), 0
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(self._path(name))
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            if self._owned:
                self._cleanup()

    def _path(self, name):
        return os.path.join(self.directory, name)

    def put(self, name, data: bytes) -> list:
        """Write `data` as `name` atomically; returns the names evicted to stay within max_bytes.

        TooBig (nothing written, nothing evicted) when data alone is larger than max_bytes.
        """
        size = len(data)
        if size > self.max_bytes:
            raise TooBig("the result is %d bytes, larger than the whole result spool (result_spool_bytes = %d)"
                         % (size, self.max_bytes))
        tmp = self._path("." + name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self._path(name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        evicted = []
        with self._lock:
            self._drop(name)
            self._files[name] = (size, self.clock())
            self.bytes += size
            while self.bytes > self.max_bytes:
                oldest = next(iter(self._files))
                self._drop(oldest)
                evicted.append(oldest)
        for old in evicted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(old))
        return evicted

    def get(self, name):
        """The bytes of `name`, or None when it is not (or no longer) in the spool."""
        with self._lock:
            if name not in self._files:
                return None
        try:
            with open(self._path(name), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def remove(self, name) -> None:
        """Forget and delete `name` (nothing when it is not there)."""
        with self._lock:
            known = self._drop(name)
        if known:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name))

    def expire(self) -> list:
        """Delete the results older than ttl; returns their names."""
        limit = self.clock() - self.ttl
        with self._lock:
            old = [n for n, (_, at) in self._files.items() if at <= limit]
            for name in old:
                self._drop(name)
        for name in old:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name))
        return old

    def _drop(self, name) -> bool:
        item = self._files.pop(name, None)
        if item is not None:
            self.bytes -= item[0]
        return item is not None

    def stats(self) -> dict:
        """Files and bytes held now."""
        with self._lock:
            return {"files": len(self._files), "bytes": self.bytes}
