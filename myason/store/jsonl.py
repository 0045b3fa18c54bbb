"""The jsonl writer: flows and IDEA events appended as JSON objects, one per line, to rotated files.

Flows go to `flows-*.jsonl`, events to a second series `events-*.jsonl` in the same directory,
rotated by the same options. Exactly once: the rows and events of a batch are appended, flushed
and fsynced, and only then is a line `[batch_id, file, end_offset]` (no events file yet) or
`[batch_id, file, end_offset, events_file, events_end_offset]` appended (and fsynced) to the
`ledger` file. open() truncates every data file of both series back to the last offset the ledger
recorded for it, which removes the rows and events of a batch whose ledger line was never
written; the batch is then retried from the spool and appended once.
The ids of the last LEDGER_KEEP batches are remembered, far more than the spool ever re-delivers
(a writer holds at most a few claimed batches when it dies).
"""
import calendar
import fcntl
import logging
import os
import re
import time

import orjson

from myason import fsmode
from myason.options import REQUIRED, check_int, check_str, parse_options
from myason.schema import ENRICHED_ROW_FIELDS, ROW_FIELDS
from myason.store.base import Writer, WriterError, register

log = logging.getLogger("myason.store.jsonl")

LEDGER = "ledger"
LEDGER_KEEP = 10000
_FILE_RE = re.compile(r"^flows-(\d{8})-(\d{8}T\d{6}Z)\.jsonl$")
_EVENTS_RE = re.compile(r"^events-(\d{8})-(\d{8}T\d{6}Z)\.jsonl$")
_NCOLS = len(ROW_FIELDS)


def encode_rows(rows):
    """JSON lines (bytes) for rows in ROW_FIELDS or ENRICHED_ROW_FIELDS order; ValueError/TypeError for a bad row."""
    dumps = orjson.dumps
    parts = []
    for row in rows:
        # Plain rows (batch format v1) and enriched rows both come through a spool.
        if len(row) == _NCOLS:
            parts.append(dumps(dict(zip(ROW_FIELDS, row))))
        elif len(row) == len(ENRICHED_ROW_FIELDS):
            parts.append(dumps(dict(zip(ENRICHED_ROW_FIELDS, row))))
        else:
            raise ValueError("a row has %d values, expected %d or %d" % (len(row), _NCOLS, len(ENRICHED_ROW_FIELDS)))
    if not parts:
        return b""
    parts.append(b"")
    return b"\n".join(parts)


def encode_events(events):
    """JSON lines (bytes) for IDEA event dicts; ValueError/TypeError for an event that is not a JSON object."""
    parts = []
    for event in events:
        if not isinstance(event, dict):
            raise ValueError("an event is a %s, expected an IDEA object" % type(event).__name__)
        parts.append(orjson.dumps(event) + b"\n")
    return b"".join(parts)


class _Series:
    """One rotating file series (flows or events): its open file and how far it is recorded."""

    def __init__(self, prefix, pattern):
        self.prefix, self.pattern = prefix, pattern
        self.fh = None
        self.file = None
        self.size = 0
        self.period = None
        self.next_seq = 0

    def close(self):
        """Close the current file; the next write opens or creates one."""
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass
        self.fh = self.file = None
        self.size = 0


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@register
class JsonlWriter(Writer):
    """Append flows and IDEA events to two series of rotating JSON lines files.

    Options: dir (required): where the files and the ledger live; max_bytes (default 100 MiB):
    start a new file when the next batch would make the current one larger (a batch is never
    split, so a single larger batch makes a larger file); rotate_hours (default 1, 0 = off):
    start a new file when the UTC period of that many hours changes; keep_files (default 0 =
    all): delete the oldest files beyond this number. The options apply to the flows and the
    events series each on its own. One writer instance per dir (locked). file_mode (default
    0600): the mode of every file, whatever the umask (0640 for a reader in the collector's
    group); the dir, when the writer creates it, gets 0700 (0750 with a group-readable mode).
    """

    name = "jsonl"
    stores_events = True
    SPEC = {
        "dir": (REQUIRED, check_str(allow_empty=False, expected="a directory path")),
        "max_bytes": (100 << 20, check_int(lo=1)),
        "rotate_hours": (1, check_int(lo=0)),
        "keep_files": (0, check_int(lo=0)),
        "file_mode": (fsmode.PRIVATE_FILE, fsmode.check_file_mode),
    }

    def __init__(self, **options):
        super().__init__(**options)
        opts = parse_options(self.name, options, self.SPEC)
        self.dir = opts["dir"]
        self.max_bytes = opts["max_bytes"]
        self.rotate_hours = opts["rotate_hours"]
        self.keep_files = opts["keep_files"]
        self.file_mode = opts["file_mode"]
        self.clock = time.time      # tests replace it to cross rotation periods
        self.skipped = 0            # batches not written again because the ledger has them
        self.truncated_bytes = 0    # unledgered bytes removed by open() (a crashed batch)
        self._lock_fd = None
        self._ledger = None
        # (batch_id, file, end_offset, events_file or None, events_end_offset), oldest first
        self._entries = []
        self._known = set()
        self._flows = _Series("flows", _FILE_RE)
        self._events = _Series("events", _EVENTS_RE)

    # -- open / recovery -------------------------------------------------------------------

    def open(self):
        """Lock the dir, cut unledgered bytes off the data files, load the known batch ids."""
        self.close()
        try:
            fsmode.make_dirs(self.dir, fsmode.dir_mode_for(self.file_mode))
            self._lock()
            self._entries = self._read_ledger()
            last = {}
            for _, name, off, ename, eoff in self._entries:
                last[name] = off
                if ename is not None:
                    last[ename] = eoff
            present = set()
            for series in (self._flows, self._events):
                files = self._data_files(series)
                for name in files:
                    self._truncate_to(name, last.get(name, 0))
                files = [f for f in files if self._keep_or_remove_empty(f, last)]
                present.update(files)
                if files:
                    series.next_seq = int(series.pattern.match(files[-1]).group(1)) + 1
                    self._use(series, files[-1])
            self._compact(force=True, files=present)
            # Files of an older version (made under the umask) or a changed file_mode.
            for name in sorted(present) + [LEDGER, ".lock"]:
                fsmode.ensure_mode(os.path.join(self.dir, name), self.file_mode)
            self._ledger = self._open(LEDGER, "ab")
        except OSError as exc:
            self.close()
            raise WriterError("jsonl: cannot open %s: %s" % (self.dir, exc)) from None

    def _lock(self):
        fd = fsmode.open_fd(os.path.join(self.dir, ".lock"), os.O_RDWR, self.file_mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WriterError("jsonl: %s is used by another writer" % self.dir) from None
        self._lock_fd = fd

    def _read_ledger(self):
        path = os.path.join(self.dir, LEDGER)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return []
        entries, good = [], 0
        for line in data.split(b"\n")[:-1]:
            try:
                entry = _parse_entry(orjson.loads(line))
            except (orjson.JSONDecodeError, ValueError, TypeError):
                break   # a torn or damaged line: it and everything after it never counted
            entries.append(entry)
            good += len(line) + 1
        if good != len(data):
            log.warning("jsonl: dropping %d bytes of an unfinished ledger line", len(data) - good)
            with open(path, "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
        return entries

    def _data_files(self, series=None):
        pattern = (series or self._flows).pattern
        return sorted(n for n in os.listdir(self.dir) if pattern.match(n))

    def _truncate_to(self, name, offset):
        path = os.path.join(self.dir, name)
        size = os.path.getsize(path)
        if size > offset:
            with open(path, "r+b") as fh:
                fh.truncate(offset)
                os.fsync(fh.fileno())
            self.truncated_bytes += size - offset
            log.warning("jsonl: %s: removed %d bytes of a batch that was never recorded", name, size - offset)
        elif size < offset:
            log.warning("jsonl: %s is shorter than recorded (%d < %d bytes)", name, size, offset)

    def _keep_or_remove_empty(self, name, last):
        # A file created just before a crash holds nothing recorded: drop it rather than keep
        # empty files around.
        if name in last or os.path.getsize(os.path.join(self.dir, name)):
            return True
        os.unlink(os.path.join(self.dir, name))
        return False

    def _use(self, series, name):
        series.fh = self._open(name, "ab")
        series.file = name
        series.size = series.fh.tell()
        created = calendar.timegm(time.strptime(series.pattern.match(name).group(2), "%Y%m%dT%H%M%SZ"))
        series.period = self._period_of(created)

    def _period_of(self, t):
        return int(t // (self.rotate_hours * 3600)) if self.rotate_hours else 0

    # -- writing -----------------------------------------------------------------------------

    def write(self, batch_id, rows, events=()):
        """Append the rows and events, then record the batch in the ledger; a known batch id is skipped."""
        if self._ledger is None:
            self.open()
        if batch_id in self._known:
            self.skipped += 1
            return False
        try:
            data = encode_rows(rows)
        except (ValueError, TypeError, orjson.JSONEncodeError) as exc:
            raise WriterError("jsonl: batch %s has a bad row: %s" % (batch_id, exc), permanent=True) from None
        try:
            edata = encode_events(events or ())
        except (ValueError, TypeError, orjson.JSONEncodeError) as exc:
            raise WriterError("jsonl: batch %s has a bad event: %s" % (batch_id, exc), permanent=True) from None
        try:
            now = self.clock()
            self._rotate_if_needed(self._flows, len(data), now)
            if edata:
                # The events series only moves when there are events: no empty files.
                self._rotate_if_needed(self._events, len(edata), now)
            self._append(batch_id, data, edata)
        except OSError as exc:
            raise WriterError("jsonl: cannot write in %s: %s" % (self.dir, exc)) from None
        self._known.add(batch_id)
        self._entries.append((batch_id, self._flows.file, self._flows.size, self._events.file, self._events.size))
        if len(self._entries) > 2 * LEDGER_KEEP:
            self._compact()
        return True

    def _append(self, batch_id, data, edata):
        flows, events = self._flows, self._events
        end, eend = flows.size + len(data), events.size + len(edata)
        line = _dump_entry((batch_id, flows.file, end, events.file, eend))
        written = [(flows.fh, flows.size)] + ([(events.fh, events.size)] if edata else [])
        ledger_start = self._ledger.tell()
        try:
            flows.fh.write(data)
            if edata:
                events.fh.write(edata)
            for fh, _ in written:
                fh.flush()
                os.fsync(fh.fileno())
            # The batch id is only recorded once its rows and events are on disk.
            self._ledger.write(line)
            self._ledger.flush()
            os.fsync(self._ledger.fileno())
        except OSError:
            self._undo(written + [(self._ledger, ledger_start)])
            # Reopen before the next write: open() repairs whatever the undo could not.
            self.close()
            raise
        flows.size, events.size = end, eend

    @staticmethod
    def _undo(undo):
        # Best effort: leave every file as it was so a retry appends cleanly; open() would
        # repair anything this cannot.
        for fh, size in undo:
            try:
                fh.seek(size)
                fh.truncate(size)
            except (OSError, ValueError):
                pass

    def _rotate_if_needed(self, series, nbytes, now):
        if series.fh is not None and not series.size:
            return
        if (series.fh is None or series.size + nbytes > self.max_bytes
                or self._period_of(now) != series.period):
            self._new_file(series, now)

    def _new_file(self, series, now):
        name = "%s-%08d-%s.jsonl" % (series.prefix, series.next_seq,
                                     time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
        fh = self._open(name, "xb")
        # The directory entry must be durable before the ledger can point into the file.
        _fsync_dir(self.dir)
        series.close()
        series.fh, series.file, series.size = fh, name, 0
        series.period = self._period_of(now)
        series.next_seq += 1
        self._enforce_keep(series)

    def _enforce_keep(self, series):
        if not self.keep_files:
            return
        files = self._data_files(series)
        for name in files[:max(0, len(files) - self.keep_files)]:
            os.unlink(os.path.join(self.dir, name))
            log.info("jsonl: removed %s (keep_files=%d)", name, self.keep_files)

    def _compact(self, force=False, files=None):
        # Keep the newest LEDGER_KEEP batch ids, plus the newest entry naming each file still
        # there (its end offset is what open() truncates that file to).
        if files is None:
            files = set(self._data_files(self._flows)) | set(self._data_files(self._events))
        keep, seen = [], set()
        for i in range(len(self._entries) - 1, -1, -1):
            entry = self._entries[i]
            names = {entry[1], entry[3]} & files
            recent = len(self._entries) - i <= LEDGER_KEEP
            if names - seen or recent:
                keep.append(entry)
            seen |= names
        keep.reverse()
        if force and keep == self._entries:
            self._known = {e[0] for e in keep}
            return
        path = os.path.join(self.dir, LEDGER)
        tmp = path + ".tmp"
        try:
            os.unlink(tmp)      # a crash's leftover would keep its mode
        except FileNotFoundError:
            pass
        with fsmode.open_file(tmp, "wb", self.file_mode) as fh:
            fh.write(b"".join(_dump_entry(e) for e in keep))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.dir)
        self._entries = keep
        self._known = {e[0] for e in keep}
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = self._open(LEDGER, "ab")

    def _open(self, name, how):
        # Every file of the dir is created with file_mode, never the umask's mode.
        return fsmode.open_file(os.path.join(self.dir, name), how, self.file_mode)

    def close(self):
        """Close the files and release the dir lock."""
        self._flows.close()
        self._events.close()
        if self._ledger is not None:
            try:
                self._ledger.close()
            except OSError:
                pass
        self._ledger = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def files(self):
        """Names of the flow data files, oldest first."""
        return self._data_files(self._flows)

    def event_files(self):
        """Names of the event data files, oldest first."""
        return self._data_files(self._events)


def _parse_entry(value):
    # Three values before the first events file, five after; anything else is damage.
    if not isinstance(value, list) or len(value) not in (3, 5):
        raise ValueError(value)
    batch_id, name, off, ename, eoff = value + [None, 0] if len(value) == 3 else value
    if not (isinstance(batch_id, str) and isinstance(name, str) and isinstance(off, int)
            and (ename is None or isinstance(ename, str)) and isinstance(eoff, int)):
        raise ValueError(value)
    return batch_id, name, off, ename, eoff


def _dump_entry(entry):
    return orjson.dumps(list(entry[:3]) if entry[3] is None else list(entry)) + b"\n"
