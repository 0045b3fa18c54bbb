"""Flow record files: CSV or JSON lines, to a path or to stdout ('-')."""
import csv
import io
import sys

import orjson

from myason import fsmode
from myason.schema import FIELDS


class RecordFile:
    """Writes rows (lists in FIELDS order) as CSV (.csv) or JSON lines (.jsonl, or '-' = stdout).

    On stdout a reader that went away (`| head`) is not an error: `reader_gone` is set, later
    rows are dropped, and the app ends the run as a closed pipe ends other Unix tools.
    """

    def __init__(self, path):
        self.path = path
        self.reader_gone = False
        if path == "-":
            self.format = "jsonl"
            self._fh = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
            self._text = None if self._fh is not None else sys.stdout
            self._own = False
        else:
            if path.endswith(".csv"):
                self.format = "csv"
            elif path.endswith(".jsonl") or path.endswith(".json"):
                self.format = "jsonl"
            else:
                raise ValueError("--output %s: use a .csv or .jsonl file name, or '-' for stdout" % path)
            # Flow records are personal data: mode 0600 whatever the umask.
            self._fh = fsmode.open_file(path, "wb", fsmode.PRIVATE_FILE)
            self._text = None
            self._own = True
        self.rows = 0
        if self.format == "csv":
            self._buf = io.StringIO()
            self._csv = csv.writer(self._buf, lineterminator="\n")
            self._csv.writerow(FIELDS)
            self._drain()

    def _drain(self):
        data = self._buf.getvalue()
        self._buf.seek(0)
        self._buf.truncate()
        self._fh.write(data.encode())

    def write(self, rows):
        """Append rows: a list of rows, or a records.RecordBlock (formatted from its arrays,
        the same bytes as its rows would give)."""
        if not rows or self.reader_gone:
            return
        self.rows += len(rows)
        try:
            if rows.__class__ is not list and hasattr(rows, "bytes_total"):
                from myason.agent.fastoutput import format_block
                self._put(format_block(rows, self.format))
                return
            if self.format == "csv":
                self._csv.writerows(rows)
                self._drain()
                return
            dumps = orjson.dumps
            self._put(b"".join(dumps(dict(zip(FIELDS, r))) + b"\n" for r in rows))
        except BrokenPipeError:
            if self._own:
                raise
            self.reader_gone = True

    def _put(self, data):
        if self._fh is not None:
            self._fh.write(data)
        else:
            self._text.write(data.decode())

    def close(self):
        """Flush and close (stdout is flushed, not closed)."""
        try:
            if self._fh is not None:
                self._fh.flush()
                if self._own:
                    self._fh.close()
            elif self._text is not None:
                self._text.flush()
        except BrokenPipeError:
            if self._own:
                raise
            self.reader_gone = True
