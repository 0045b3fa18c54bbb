"""A durable spool between the collector's processors and one writer (Mentat's filer protocol).

A batch is written to `tmp/`, flushed to disk and atomically renamed into `incoming/`; the
writer claims it by renaming it into `pending/`, and deletes it once the batch is committed, or
moves it to `errors/` if it can never be written. A rename is atomic on one filesystem, so a
reader never sees a partial batch, and a batch is in exactly one place at any time. After a
crash, `recover()` puts claimed batches back into `incoming/`; writers make the second attempt
harmless by committing each batch id once (see the writers).
"""
import itertools
import os
import threading
import time

SUBDIRS = ("tmp", "incoming", "pending", "errors")

# What put() does when the spool holds max_bytes: wait for the writer (bounded by `timeout`,
# then reject), or reject at once. Rejections are counted; the caller decides what to log.
POLICIES = ("block", "reject")


class SpoolFull(Exception):
    """The spool is at its size cap and the batch was not stored."""


class Spool:
    """One writer's queue of batches on disk."""

    RESCAN = 1.0

    def __init__(self, path, max_bytes=1 << 30, policy="block", fsync=True, shared=False):
        if policy not in POLICIES:
            raise ValueError("spool policy must be one of %s" % ", ".join(POLICIES))
        self.path = str(path)
        self.max_bytes = int(max_bytes)
        self.policy = policy
        self.fsync = fsync
        for sub in SUBDIRS:
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self.rejected = 0
        self.stored = 0
        # shared: other processes put into or take from this spool too (processor processes),
        # so the size is re-read from the directory at most every RESCAN seconds instead of
        # being kept only in memory; the cap may then be passed by up to RESCAN s of batches.
        self.shared = shared
        self.bytes = self._scan_bytes()
        self._scanned = time.monotonic()

    def _dir(self, sub):
        return os.path.join(self.path, sub)

    def _scan_bytes(self):
        total = 0
        for sub in ("incoming", "pending"):
            for entry in os.scandir(self._dir(sub)):
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    pass
        return total

    def _name(self):
        # Sortable by creation: nanosecond clock, then a per-process counter; the pid keeps names
        # of several processes sharing a spool apart.
        return "%020d-%d-%08d.batch" % (time.time_ns(), os.getpid(), next(self._seq))

    def put(self, data, timeout=30.0):
        """Store one batch (bytes); returns its name. Raises SpoolFull when over the cap."""
        size = len(data)
        with self._cond:
            if self.current_bytes() + size > self.max_bytes:
                if self.policy == "block":
                    self._wait_room(size, timeout)
                if self.current_bytes() + size > self.max_bytes:
                    self.rejected += 1
                    raise SpoolFull("spool %s is full (%d bytes)" % (self.path, self.bytes))
            self.bytes += size
        name = self._name()
        tmp = os.path.join(self._dir("tmp"), name)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.rename(tmp, os.path.join(self._dir("incoming"), name))
        except BaseException:
            with self._cond:
                self.bytes -= size
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.stored += 1
        return name

    def current_bytes(self):
        """Bytes of batches waiting or claimed (re-read from disk when shared and stale)."""
        if self.shared and time.monotonic() - self._scanned >= self.RESCAN:
            self.bytes = self._scan_bytes()
            self._scanned = time.monotonic()
        return max(0, self.bytes)

    def _wait_room(self, size, timeout):
        # Called with the condition held. In-process writers notify; other processes cannot,
        # so a shared spool also wakes up to re-read the directory.
        deadline = time.monotonic() + timeout
        while self.current_bytes() + size > self.max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(min(left, self.RESCAN) if self.shared else left)

    def claim(self, limit=1):
        """Move up to `limit` of the oldest batches into pending/; returns [(name, bytes)]."""
        names = sorted(os.listdir(self._dir("incoming")))[:limit]
        out = []
        for name in names:
            src = os.path.join(self._dir("incoming"), name)
            dst = os.path.join(self._dir("pending"), name)
            try:
                os.rename(src, dst)
            except FileNotFoundError:
                continue        # another writer process claimed it first
            with open(dst, "rb") as fh:
                out.append((name, fh.read()))
        return out

    def unclaim(self, name):
        """Give a claimed batch back (its writer could not store it now)."""
        try:
            os.rename(os.path.join(self._dir("pending"), name), os.path.join(self._dir("incoming"), name))
        except FileNotFoundError:
            pass

    def done(self, name):
        """The batch is committed: delete it."""
        self._remove(name, None)

    def fail(self, name):
        """The batch can never be written: keep it in errors/ for a person to look at."""
        self._remove(name, "errors")

    def _remove(self, name, to):
        path = os.path.join(self._dir("pending"), name)
        try:
            size = os.stat(path).st_size
            if to is None:
                os.unlink(path)
            else:
                os.rename(path, os.path.join(self._dir(to), name))
        except FileNotFoundError:
            return
        with self._cond:
            self.bytes -= size
            self._cond.notify_all()

    def recover(self):
        """Put batches claimed by a writer that died back into incoming/; drop stale tmp files."""
        moved = 0
        for name in os.listdir(self._dir("pending")):
            try:
                os.rename(os.path.join(self._dir("pending"), name), os.path.join(self._dir("incoming"), name))
                moved += 1
            except FileNotFoundError:
                pass
        for name in os.listdir(self._dir("tmp")):
            try:
                os.unlink(os.path.join(self._dir("tmp"), name))
            except FileNotFoundError:
                pass
        return moved

    def oldest_age(self, now=None):
        """Seconds since the oldest batch not yet stored was spooled (0.0 when none waits)."""
        names = []
        for sub in ("pending", "incoming"):
            try:
                names.extend(os.listdir(self._dir(sub)))
            except FileNotFoundError:
                pass
        stamps = [int(n.split("-", 1)[0]) for n in names if n[:1].isdigit()]
        if not stamps:
            return 0.0
        return max(0.0, (now if now is not None else time.time()) - min(stamps) / 1e9)

    def depth(self):
        """(batches waiting in incoming/, batches claimed in pending/, batches in errors/)."""
        return tuple(len(os.listdir(self._dir(sub))) for sub in ("incoming", "pending", "errors"))


def writer_spool(cfg, wcfg, shared):
    """The spool of writer config `wcfg` under cfg.spool_dir (named by its `name`, else its type)."""
    name = wcfg.get("name", wcfg["type"])
    return Spool(os.path.join(cfg.spool_dir, name), cfg.spool_max_bytes, cfg.spool_policy,
                 fsync=cfg.fsync, shared=shared)
