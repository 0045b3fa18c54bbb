"""Push rounds: change detection, the command (failures logged, counted, retried), the state file,
the loop, and the greylist read from a real SQLite store."""
import logging
import os
import signal
import stat
import sys
import threading
import time

import pytest

from myason.cli import main
from myason.greylist.config import parse_push_config
from myason.greylist.push import APPLIED, FAILED, UNCHANGED, GreylistPusher, read_greylist
from tests.support.greylist import idea_event, store_events, write_collector_conf, write_push_conf

# Appends a line to $1 each time it runs: how many times the command was run, and on which file.
COUNT = ["sh", "-c", 'echo "$1" >> "$2"', "count"]


class Rows:
    """A reader of greylist rows the test changes between rounds."""

    def __init__(self, *addresses):
        self.addresses, self.error, self.asked = list(addresses), None, []

    def __call__(self, since):
        self.asked.append(since)
        if self.error:
            raise OSError(self.error)
        return [{"address": a, "events": 1} for a in self.addresses]


def pusher(tmp_path, reader, **options):
    options.setdefault("command", COUNT + ["{file}", str(tmp_path / "runs")])
    cfg = parse_push_config({"file": str(tmp_path / "out" / "greylist.nft"), **options})
    return GreylistPusher(cfg, reader=reader, clock=lambda: 1_000_000.0)


def runs(tmp_path):
    path = tmp_path / "runs"
    return path.read_text().splitlines() if path.exists() else []


def test_the_command_runs_only_when_the_rendered_file_changed(tmp_path, umask022):
    reader = Rows("192.0.2.1")
    p = pusher(tmp_path, reader, since="1h")
    assert p.round() == APPLIED
    out = tmp_path / "out" / "greylist.nft"
    assert runs(tmp_path) == [str(out)] and "\t\t\t192.0.2.1,\n" in out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and reader.asked == [1_000_000.0 - 3600]
    assert p.round() == UNCHANGED and len(runs(tmp_path)) == 1
    reader.addresses.append("2001:db8::5")
    assert p.round() == APPLIED and len(runs(tmp_path)) == 2 and "2001:db8::5," in out.read_text()
    reader.addresses = ["2001:db8::5", "192.0.2.1"]          # the same set in another order
    assert p.round() == UNCHANGED
    reader.addresses = []
    assert p.round() == APPLIED and "192.0.2.1" not in out.read_text()
    assert p.counters == {"rounds": 5, "applied": 3, "unchanged": 2, "store_errors": 0, "write_errors": 0,
                          "command_failures": 0}
    assert not (tmp_path / "out" / "greylist.nft.tmp").exists()


@pytest.mark.parametrize("failing, timeout, logged", [
    ("echo 'Error: Could not process rule: No such file' >&2; exit 3", 30,
     "exit status 3; stderr: Error: Could not process rule: No such file (retried next round)"),
    ("exec sleep 30", 0.2, "timed out after 0.2s"),
    (None, 30, "/nonexistent/nft -f %s cannot run: No such file or directory"),
])
def test_a_failed_command_is_logged_counted_and_retried(tmp_path, caplog, failing, timeout, logged):
    flag = tmp_path / "fixed"
    # Fails until the flag file exists, then applies: the retry must come although nothing changed.
    command = ["/nonexistent/nft", "-f", "{file}"] if failing is None else [
        "sh", "-c", 'if test -e "$1"; then echo "$2" >> "$3"; else %s; fi' % failing, "retry", str(flag),
        "{file}", str(tmp_path / "runs")]
    p = pusher(tmp_path, Rows("192.0.2.1"), command=command, command_timeout=timeout)
    with caplog.at_level(logging.ERROR, logger="myason.greylist"):
        assert p.round() == FAILED
    assert logged.replace("%s", p.cfg.file) in caplog.text
    assert p.counters["command_failures"] == 1 and p.counters["applied"] == 0
    assert p.run(once=True) == 1 and p.counters["command_failures"] == 2
    if failing is not None:
        flag.touch()
        assert p.round() == APPLIED and len(runs(tmp_path)) == 1
        assert p.round() == UNCHANGED


def test_a_store_error_or_an_unwritable_file_fails_the_round_and_is_retried(tmp_path, caplog):
    reader = Rows("192.0.2.1")
    reader.error = "cannot open /var/lib/myason/flows.db: unable to open database file"
    p = pusher(tmp_path, reader)
    with caplog.at_level(logging.ERROR, logger="myason.greylist"):
        assert p.round() == FAILED
    assert "cannot read the greylist: cannot open /var/lib/myason/flows.db" in caplog.text
    assert p.counters["store_errors"] == 1 and runs(tmp_path) == []
    reader.error = None
    assert p.round() == APPLIED
    (tmp_path / "blocker").write_text("a file where a directory should be")
    q = GreylistPusher(parse_push_config({"file": str(tmp_path / "blocker" / "g.nft"), "command": ["true"]}),
                       reader=reader)
    assert q.round() == FAILED and q.counters["write_errors"] == 1


def test_the_state_file_carries_what_was_applied_to_the_next_process(tmp_path):
    state = tmp_path / "run" / "greylist.state"
    assert pusher(tmp_path, Rows("192.0.2.1"), state_file=str(state)).round() == APPLIED
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert pusher(tmp_path, Rows("192.0.2.1"), state_file=str(state)).round() == UNCHANGED
    assert pusher(tmp_path, Rows("192.0.2.2"), state_file=str(state)).round() == APPLIED
    state.unlink()                      # a reboot empties /run: push again
    assert pusher(tmp_path, Rows("192.0.2.2"), state_file=str(state)).round() == APPLIED
    # Without a state file each process applies once.
    assert pusher(tmp_path, Rows("192.0.2.2")).round() == APPLIED
    assert len(runs(tmp_path)) == 4


def test_selection_losses_are_warned_when_they_change_not_every_round(tmp_path, caplog):
    reader = Rows("192.0.2.1", "192.0.2.2", "not-an-address")
    p = pusher(tmp_path, reader, max_elements=1)
    with caplog.at_level(logging.INFO, logger="myason.greylist"):
        p.round()
        p.round()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["greylist push: 1 sources past max_elements (1) left out (the busiest are kept)",
                        "greylist push: 1 stored sources are not an address or network and were left out"]
    assert p.selection.stats["truncated"] == 1 and p.selection.stats["invalid"] == 1


def test_the_loop_runs_a_round_every_interval_until_stopped(tmp_path):
    reader = Rows("192.0.2.1")
    p = pusher(tmp_path, reader, interval=0.01)
    rounds = []

    def read(since):
        rounds.append(since)
        if len(rounds) == 2:
            reader.addresses.append("192.0.2.2")
        if len(rounds) == 4:
            p.stop()
        return reader(since)

    p.reader = read
    done = []
    thread = threading.Thread(target=lambda: done.append(p.run()))
    thread.start()
    thread.join(timeout=30)
    assert done == [0] and p.counters["rounds"] == 4
    assert p.counters["applied"] == 2 and p.counters["unchanged"] == 2 and len(runs(tmp_path)) == 2


def test_sigterm_ends_the_loop(tmp_path):
    p = pusher(tmp_path, Rows("192.0.2.1"), interval=3600)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        p.install_signals()
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        assert p.run() == 0 and p.counters["rounds"] == 1
        timer.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_the_greylist_comes_from_the_store_the_writer_filled(tmp_path):
    db = tmp_path / "flows.db"
    now = time.time()
    store_events(db, [idea_event("192.0.2.1", now - 7200), idea_event("192.0.2.1", now - 60),
                      idea_event("2001:db8::5", now - 60)])
    rows = read_greylist({"type": "sqlite", "path": str(db)}, now - 3600)
    assert [(r["address"], r["events"]) for r in rows] == [("192.0.2.1", 1), ("2001:db8::5", 1)]
    with pytest.raises(OSError):
        read_greylist({"type": "sqlite", "path": str(tmp_path / "missing.db")}, 0)


def test_the_cli_pushes_once_from_the_collector_configs_store(tmp_path, capsys):
    db = tmp_path / "flows.db"
    store_events(db, [idea_event("192.0.2.1", time.time() - 60)])
    cc = write_collector_conf(tmp_path / "c.yaml", db)
    out = tmp_path / "greylist.ipset"
    push = write_push_conf(tmp_path / "p.yaml", file=str(out), format="ipset", command=["true"], interval=60)
    assert main(["greylist", "-cc", cc, "--push", push, "--once"]) == 0
    assert "add myason-greylist4-new 192.0.2.1\n" in out.read_text()
    # Nothing on stdout: the file is the output.
    assert capsys.readouterr().out == ""
    push = write_push_conf(tmp_path / "p.yaml", file=str(out), command=[sys.executable, "-c", "raise SystemExit(4)"])
    assert main(["greylist", "-cc", cc, "--push", push, "--since", "1h"]) == 1
