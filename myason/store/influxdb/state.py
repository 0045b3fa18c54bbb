"""The writer's batch numbers (seq), persisted so a retried batch gets its own timestamps again."""
import fcntl
import json
import os
from collections import OrderedDict

from myason import fsmode
from myason.errors import ConfigError
from myason.store.base import WriterError


RECENT = 256                # batch ids whose seq is remembered for retries (spool claims are ~8)


class SeqState:
    """Allocates each batch a number, persisted so restarts and retries never reuse or change one."""

    def __init__(self, path=None, fsync=True):
        self.path = path
        self.fsync = fsync
        self.recent = OrderedDict()
        self.next = 0
        self._lock = None

    def load(self, clock_us):
        """Read the state file (or start at clock_us without one) and lock it against sharing."""
        if self.path is None:
            # Without a file the microsecond clock keeps numbers of successive runs apart.
            self.next = max(self.next, clock_us)
            return
        if self._lock is None:
            try:
                fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise ConfigError("influxdb.state_file", str(exc)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ConfigError("influxdb.state_file", "%s is in use by another writer" % self.path) from None
            self._lock = fd
        try:
            with open(self.path, "rb") as fh:
                obj = json.loads(fh.read())
            self.next = max(self.next, int(obj["next"]))
            self.recent = OrderedDict((str(b), int(s)) for b, s in obj["recent"])
        except FileNotFoundError:
            self.next = max(self.next, clock_us)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError("influxdb.state_file", "%s is damaged: %s" % (self.path, exc)) from None

    def seq_for(self, batch_id):
        """The batch's number: the same on every retry, a new one (saved first) otherwise."""
        seq = self.recent.get(batch_id)
        if seq is not None:
            return seq
        seq = self.next
        self.next += 1
        self.recent[batch_id] = seq
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        try:
            self._save()
        except OSError as exc:
            # Nothing was sent yet; a retry reuses this number from memory.
            raise WriterError("cannot save %s: %s" % (self.path, exc)) from None
        return seq

    def _save(self):
        if self.path is None:
            return
        tmp = self.path + ".tmp"
        data = json.dumps({"next": self.next, "recent": list(self.recent.items())}).encode()
        with fsmode.open_file(tmp, "wb", fsmode.PRIVATE_FILE) as fh:
            fh.write(data)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def close(self):
        """Release the lock on the state file."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


