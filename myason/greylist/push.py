"""Greylist push rounds: read the greylist from the SQL store, render it, and when the rendered
file differs from the one last applied, write it atomically and run the configured command.

A failed round (store unreadable, file not written, command failed or timed out) is logged,
counted and retried on the next round: what was applied is only remembered once the command
succeeded. The firewall never sees half a set: nft applies the script as one transaction, ipset
swaps a filled set in (myason.greylist.render).
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import threading
import time

from myason.fsmode import dir_mode_for, make_dirs, open_file
from myason.greylist.config import PushConfig, describe
from myason.greylist.render import STAT_KEYS, render, select
from myason.store.query import fetch_events, greylist

log = logging.getLogger("myason.greylist")

APPLIED, UNCHANGED, FAILED = "applied", "unchanged", "failed"
COUNTERS = ("rounds", "applied", "unchanged", "store_errors", "write_errors", "command_failures")
# Stored sources dropped in the last round, by reason (a warning names them when they change).
_LOSSES = tuple(k for k in STAT_KEYS if k != "rows")
_STDERR_CHARS = 500


def read_greylist(writer: dict, since: float) -> list:
    """Greylist rows of the events stored by `writer` (a SQL writer config) since `since`, as
    `myason greylist` reads them; OSError when the store cannot be read."""
    return greylist(fetch_events(writer, since))


def write_atomically(path, data: bytes, mode):
    """Replace the file at path with data: readers see the old file or the new one, never a part."""
    make_dirs(os.path.dirname(os.path.abspath(path)), dir_mode_for(mode))
    tmp = "%s.tmp" % path
    with open_file(tmp, "wb", mode) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def digest(text: str) -> str:
    """The change-detection key of a rendered file."""
    return hashlib.sha256(text.encode()).hexdigest()


class GreylistPusher:
    """Rounds of the push of one config, reading the store of one SQL writer config.

    `reader(since)` gives greylist rows (read_greylist by default); `clock` the current Unix time.
    """

    def __init__(self, cfg: PushConfig, writer: dict | None = None, reader=None, clock=time.time):
        self.cfg = cfg
        self.reader = reader or (lambda since: read_greylist(writer, since))
        self.clock = clock
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.selection = None
        self.stop_event = threading.Event()
        self.applied = self._load_state()

    def _load_state(self):
        # Only with a state file does "unchanged" outlive the process; keep it where the kernel's
        # sets go too (/run is emptied at boot), so a reboot pushes again (docs/greylist.md).
        if not self.cfg.state_file:
            return None
        try:
            with open(self.cfg.state_file, encoding="ascii") as fh:
                return fh.read().strip() or None
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("greylist push: cannot read state file %s (%s): pushing again", self.cfg.state_file, exc)
            return None

    def round(self) -> str:
        """One push: APPLIED, UNCHANGED or FAILED (logged and counted)."""
        self.counters["rounds"] += 1
        try:
            rows = self.reader(self.clock() - self.cfg.since[1])
        except OSError as exc:
            self.counters["store_errors"] += 1
            log.error("greylist push: cannot read the greylist: %s", exc)
            return FAILED
        selection = select(rows, self.cfg)
        self._report(selection)
        text = render(selection, self.cfg)
        key = digest(text)
        if key == self.applied:
            self.counters["unchanged"] += 1
            return UNCHANGED
        try:
            write_atomically(self.cfg.file, text.encode(), self.cfg.file_mode)
        except OSError as exc:
            self.counters["write_errors"] += 1
            log.error("greylist push: cannot write %s: %s", self.cfg.file, exc)
            return FAILED
        if self.cfg.command and not self._run_command():
            self.counters["command_failures"] += 1
            return FAILED
        self.applied = key
        if self.cfg.state_file:
            try:
                write_atomically(self.cfg.state_file, (key + "\n").encode(), 0o600)
            except OSError as exc:
                # Applied all the same; a later process just pushes once more.
                log.warning("greylist push: cannot write state file %s: %s", self.cfg.state_file, exc)
        self.counters["applied"] += 1
        log.info("greylist push: applied %d IPv4 and %d IPv6 elements (%s)", len(selection.v4),
                 len(selection.v6), self.cfg.file)
        return APPLIED

    def _report(self, selection):
        losses = {k: selection.stats[k] for k in _LOSSES if selection.stats[k]}
        before = self.selection
        self.selection = selection
        if before is not None and losses == {k: before.stats[k] for k in _LOSSES if before.stats[k]}:
            return
        if selection.stats["truncated"]:
            log.warning("greylist push: %d sources past max_elements (%d) left out (the busiest are kept)",
                        selection.stats["truncated"], self.cfg.max_elements)
        if selection.stats["invalid"]:
            log.warning("greylist push: %d stored sources are not an address or network and were left out",
                        selection.stats["invalid"])
        other = {k: v for k, v in losses.items() if k not in ("truncated", "invalid")}
        if other:
            log.info("greylist push: left out %s", ", ".join("%s %d" % kv for kv in sorted(other.items())))

    def _run_command(self) -> bool:
        argv = [arg.replace("{file}", self.cfg.file) for arg in self.cfg.command]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self.cfg.command_timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            self._command_failed(argv, "timed out after %gs" % self.cfg.command_timeout, exc.stderr)
            return False
        except OSError as exc:
            self._command_failed(argv, "cannot run: %s" % (exc.strerror or exc), b"")
            return False
        if proc.returncode != 0:
            self._command_failed(argv, "exit status %d" % proc.returncode, proc.stderr)
            return False
        return True

    def _command_failed(self, argv, why, stderr):
        text = " ".join((stderr or b"").decode("utf-8", "replace").split())
        if len(text) > _STDERR_CHARS:
            text = text[:_STDERR_CHARS] + "..."
        log.error("greylist push: %s %s; stderr: %s (retried next round)", " ".join(argv), why, text or "-")

    def loops(self, once=False) -> bool:
        """True when run(once) keeps pushing every interval (the caller then installs the signals)."""
        return not once and bool(self.cfg.interval)

    def run(self, once=False) -> int:
        """Push once (once, or interval 0): exit code 0 unless the round failed; else a round every
        interval seconds until stop() (SIGTERM, SIGINT), then 0."""
        log.info("greylist push: %s", describe(self.cfg))
        if not self.loops(once):
            return 1 if self.round() == FAILED else 0
        while not self.stop_event.is_set():
            self.round()
            self.stop_event.wait(self.cfg.interval)
        last = self.selection.stats if self.selection else {}
        log.info("greylist push stopped: %s; last round's sources: %s",
                 ", ".join("%s %d" % kv for kv in self.counters.items()),
                 ", ".join("%s %d" % kv for kv in last.items()) or "none read")
        return 0

    def stop(self, *_):
        """Ends run()'s loop after the current round."""
        self.stop_event.set()

    def install_signals(self):
        """SIGTERM and SIGINT stop the loop."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
