"""The mentat writer: each IDEA event as one JSON file in a Mentat/Warden filer queue.

Filer protocol: a file is written and fsynced in `tmp/`, then renamed into `incoming/`, where
Mentat's daemons pick it up. The rename is atomic within one filesystem, so a reader never sees
a partial file. Names are unique (spool batch id, position in the batch, event ID).

Exactly once per batch: once all of a batch's events are in `incoming/`, a marker named after
the batch goes into `.myason-batches/`; a retried batch with a marker is skipped. A crash
between the first rename and the marker makes the retry rename the same names again, which
replaces a file still waiting in `incoming/` (no duplicate); only a file Mentat already took
in that short gap could come twice. Flows are not stored here.
"""
import logging
import os
import time

import orjson

from myason import fsmode
from myason.options import REQUIRED, check_bool, check_int, check_str, parse_options
from myason.store.base import Writer, WriterError, register

log = logging.getLogger("myason.store.mentat")

MARKERS = ".myason-batches"
HOUSEKEEPING_EVERY = 3600.0


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def event_file_name(batch_id, index, event):
    """Unique queue file name of the index-th event of a batch."""
    ident = "".join(c for c in str(event.get("ID", "")) if c.isalnum() or c == "-")[:64]
    return "%s-%05d-%s.idea" % (batch_id, index, ident)


@register
class MentatWriter(Writer):
    """Drop IDEA events into a Mentat filer queue directory (tmp/ -> incoming/).

    Options: queue_dir (required): the queue (tmp/ and incoming/ are created); fsync (default
    true): flush each file and directory before it counts as delivered; marker_keep_days
    (default 7): how long delivered batch markers are kept for retries; file_mode (default
    0640): the mode of each event file, whatever the umask: Mentat reads them through the
    group (make the queue directory setgid to Mentat's group), others get nothing. Folders the
    writer creates: incoming/ 0770 for a group-readable mode (Mentat moves files out), else 0700;
    tmp/ and the batch markers 0700 (the writer's alone).
    """

    name = "mentat"
    stores_events = True
    SPEC = {
        "queue_dir": (REQUIRED, check_str(allow_empty=False, expected="a directory path")),
        "fsync": (True, check_bool()),
        "marker_keep_days": (7, check_int(lo=1)),
        "file_mode": (0o640, fsmode.check_file_mode),
    }

    def __init__(self, **options):
        super().__init__(**options)
        opts = parse_options(self.name, options, self.SPEC)
        self.queue_dir = opts["queue_dir"]
        self.fsync = opts["fsync"]
        self.marker_keep_days = opts["marker_keep_days"]
        self.file_mode = opts["file_mode"]
        self.tmp = os.path.join(self.queue_dir, "tmp")
        self.incoming = os.path.join(self.queue_dir, "incoming")
        self.markers = os.path.join(self.queue_dir, MARKERS)
        self.skipped = 0
        self.clock = time.time
        self._next_housekeeping = 0.0

    def open(self):
        """Create the queue folders."""
        try:
            fsmode.make_dirs(self.queue_dir, fsmode.dir_mode_for(self.file_mode))
            fsmode.make_dirs(self.incoming, fsmode.dir_mode_for(self.file_mode, group_writes=True))
            for d in (self.tmp, self.markers):
                fsmode.make_dirs(d)
        except OSError as exc:
            raise WriterError("mentat: cannot create %s: %s" % (self.queue_dir, exc)) from None

    def write(self, batch_id, rows, events=()):
        """Put each event into incoming/ as one file; a batch already delivered is skipped."""
        if not events:
            return True
        marker = os.path.join(self.markers, batch_id)
        if os.path.exists(marker):
            self.skipped += 1
            return False
        try:
            files = [(event_file_name(batch_id, i, e), orjson.dumps(e)) for i, e in enumerate(events)]
        except (TypeError, AttributeError, orjson.JSONEncodeError) as exc:
            raise WriterError("mentat: batch %s has a bad event: %s" % (batch_id, exc), permanent=True) from None
        try:
            self.open()
            for name, data in files:
                self._deliver(name, data)
            if self.fsync:
                _fsync_dir(self.incoming)
            os.close(fsmode.open_fd(marker, os.O_WRONLY))
        except OSError as exc:
            raise WriterError("mentat: cannot write to %s: %s" % (self.queue_dir, exc)) from None
        if self.clock() >= self._next_housekeeping:
            self._housekeeping()
        return True

    def _deliver(self, name, data):
        tmp = os.path.join(self.tmp, name)
        with fsmode.open_file(tmp, "wb", self.file_mode) as fh:
            fh.write(data)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.rename(tmp, os.path.join(self.incoming, name))

    def _housekeeping(self):
        now = self.clock()
        self._next_housekeeping = now + HOUSEKEEPING_EVERY
        cutoff = now - self.marker_keep_days * 86400.0
        try:
            with os.scandir(self.markers) as it:
                for entry in it:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
        except OSError as exc:
            log.warning("mentat: housekeeping of %s failed: %s", self.markers, exc)
