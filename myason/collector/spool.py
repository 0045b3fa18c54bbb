"""A durable spool between the collector's processors and one writer (Mentat's filer protocol).

A batch is written to `tmp/`, flushed to disk and atomically renamed into `incoming/`; the
writer claims it by renaming it into `pending/`, and deletes it once the batch is committed, or
moves it to `errors/` if it can never be written. A rename is atomic on one filesystem, so a
reader never sees a partial batch, and a batch is in exactly one place at any time. After a
crash, `recover()` puts claimed batches back into `incoming/`; writers make the second attempt
harmless by committing each batch id once (see the writers). The processors stage a batch in
every writer's spool before publishing it in any (myason/collector/journal.py).
"""
import itertools
import os
import threading
import time

from myason import fsmode

SUBDIRS = ("tmp", "incoming", "pending", "errors")

# What the processors do when a spool holds spool_max_bytes or more (myason/collector/processor.py):
# `block` stops taking datagrams in, so the back-pressure reaches the listener and then the
# kernel's receive buffer; `reject` drops received datagrams before decoding them. Either way a
# batch already accepted goes into every spool, so the stores never disagree.
POLICIES = ("block", "reject")

_counter = itertools.count()


def batch_name():
    """A new batch name, sortable by creation: nanosecond clock, pid, a per-process counter.

    One name per batch for all the spools it enters; the pid keeps the names of processes
    sharing the spools apart, and says whose staged files a dead process left (discard_staged_by).
    """
    return "%020d-%d-%08d.batch" % (time.time_ns(), os.getpid(), next(_counter))


class Spool:
    """One writer's queue of batches on disk."""

    RESCAN = 1.0

    def __init__(self, path, max_bytes=1 << 30, fsync=True, shared=False):
        self.path = str(path)
        self.max_bytes = int(max_bytes)
        self.fsync = fsync
        # Flows are personal data: the spool is the collector's alone, whatever the umask
        # (spool_dir too, when it is made here: os.makedirs gives parents the umask's mode).
        fsmode.make_dirs(self.path)
        for sub in SUBDIRS:
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)
        self._cond = threading.Condition()
        self.stored = 0
        # shared: other processes put into or take from this spool too (processor processes),
        # so the size is re-read from the directory at most every RESCAN seconds instead of
        # being kept only in memory.
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

    # -- the processors' side -------------------------------------------------------------

    def put(self, data):
        """Store one batch (bytes) on its own, outside any journal; returns its name."""
        name = batch_name()
        self.stage(name, data)
        self.publish(name)
        return name

    def stage(self, name, data):
        """Write a batch to tmp/ (fsynced when fsync is on); an OSError leaves no file behind."""
        tmp = os.path.join(self._dir("tmp"), name)
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
        except BaseException:
            self.discard(name)
            raise

    def publish(self, name):
        """Move a staged batch into incoming/, where the writer claims it."""
        tmp = os.path.join(self._dir("tmp"), name)
        size = os.stat(tmp).st_size
        os.rename(tmp, os.path.join(self._dir("incoming"), name))
        with self._cond:
            self.bytes += size
        self.stored += 1

    def publish_staged(self, name):
        """publish(name) if it is still in tmp/ (crash recovery); True when it was."""
        try:
            self.publish(name)
        except FileNotFoundError:
            return False
        return True

    def discard(self, name):
        """Delete a staged batch that was not committed."""
        try:
            os.unlink(os.path.join(self._dir("tmp"), name))
        except FileNotFoundError:
            pass

    def discard_staged_by(self, pid):
        """Delete what process `pid` staged and never committed (it died); returns how many."""
        mark = "-%d-" % pid
        n = 0
        for name in os.listdir(self._dir("tmp")):
            if mark in name:
                self.discard(name)
                n += 1
        return n

    def current_bytes(self):
        """Bytes of batches waiting or claimed (re-read from disk when shared and stale)."""
        if self.shared and time.monotonic() - self._scanned >= self.RESCAN:
            self.bytes = self._scan_bytes()
            self._scanned = time.monotonic()
        return max(0, self.bytes)

    def full(self):
        """True when the batches waiting or claimed take max_bytes or more."""
        return self.current_bytes() >= self.max_bytes

    def wait_room(self, timeout):
        """Wait up to `timeout` seconds for the spool to be below its cap; True when it is.

        Writers in this process wake the waiter when they delete a batch; writers in other
        processes cannot, so a shared spool is re-read every RESCAN seconds meanwhile.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.full():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, self.RESCAN) if self.shared else left)
        return True

    # -- the writer's side ----------------------------------------------------------------

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

    # -- both -----------------------------------------------------------------------------

    def recover(self):
        """Put batches claimed by a writer that died back into incoming/; drop stale tmp files.

        Run at start, after journal.recover() has published the batches that were committed.
        """
        moved = 0
        for name in os.listdir(self._dir("pending")):
            try:
                os.rename(os.path.join(self._dir("pending"), name), os.path.join(self._dir("incoming"), name))
                moved += 1
            except FileNotFoundError:
                pass
        for name in os.listdir(self._dir("tmp")):
            self.discard(name)
        self.bytes = self._scan_bytes()
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
    return Spool(os.path.join(cfg.spool_dir, name), cfg.spool_max_bytes, fsync=cfg.fsync, shared=shared)
