"""Kills aimed at each step of accepting a batch: every store ends up with the same flows.

A processor accepts a batch in steps (myason/collector/journal.py): stage it in each writer's
spool, commit the sequence state that names it, publish it into each spool. The collector runs
under strace, which only slows the steps down (a pause after every rename and fsync, nothing
else changes), so that the test can see which step a batch has reached and SIGKILL the whole
collector right there. After a restart, SQLite, PostgreSQL and InfluxDB must hold exactly the
same flows, and the sequence gaps the collector reports must be exactly the datagrams that no
store holds. Kills at random moments (no strace) check the same.
"""
import os
import random
import shutil
import signal
import threading
import time
from collections import Counter

import pytest

from myason.collector import journal
from myason.store.base import decode_batch_events
from tests.support.services import influx_query, influx_rows, wait_until
from tests.support.collector import spool_files, sqlite_rows
from tests.support.stores import pg_reset, pg_rows
from tests.support.streams import ROWS_PER_DATAGRAM, Stream, collector, row_key

pytestmark = [pytest.mark.root, pytest.mark.slow]

SPOOLS = ("sqlite", "postgresql", "influxdb")        # the writers' order: the order of staging
# Each rename and fsync of the collector is followed by this pause (µs) under strace.
PAUSE_US = 150000
STRACE = ("strace", "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null", "-e", "trace=rename,fsync",
          "-e", "inject=rename,fsync:delay_exit=%d" % PAUSE_US)


def where(c, name):
    """{spool: 'tmp' | 'published' | None} of batch `name`, and whether the state names it."""
    out = {}
    for sp in SPOOLS:
        base = c.dir / "spool" / sp
        if (base / "tmp" / name).exists():
            out[sp] = "tmp"
        elif (base / "incoming" / name).exists() or (base / "pending" / name).exists():
            out[sp] = "published"
        else:
            out[sp] = None
    try:
        _, committed = journal.read_state(journal.sequence_file(str(c.dir / "spool"), 0))
    except (OSError, ValueError):
        committed = None
    return out, committed == name


def phase(c, name):
    """The step batch `name` has reached, by what is on disk."""
    loc, committed = where(c, name)
    a, b, z = (loc[sp] for sp in SPOOLS)
    if not committed:
        if a == "tmp" and z is None:
            return "staged_partial"
        if a == b == z == "tmp":
            return "staged_all"
        return None
    if a == b == z == "tmp":
        return "committed"
    if a != "tmp" and b == z == "tmp":
        return "published_1"
    if a != "tmp" and b != "tmp" and z == "tmp":
        return "published_2"
    return None


def in_flight(c):
    """Names of batches staged in any spool right now."""
    names = set()
    for sp in SPOOLS:
        try:
            names.update(os.listdir(c.dir / "spool" / sp / "tmp"))
        except FileNotFoundError:
            pass
    return sorted(names)


def writers(tmp_path, servers, database):
    influx_query(servers.influx_url, 'DROP DATABASE "%s"' % database, db="")
    pg_reset(servers.pg_dsn)
    return [{"type": "sqlite", "path": str(tmp_path / "flows.db")},
            {"type": "postgresql", "dsn": servers.pg_dsn},
            {"type": "influxdb", "url": servers.influx_url, "api": "v1", "database": database}]


def restart_and_verify(c, s, tmp_path, servers, database):
    """Restart, reveal the gaps with more traffic, drain; every store equal, gaps = missing."""
    killed_at = s.seq
    c.start()
    s.send(20, metrics_port=c.metrics_port)
    seq_of = s.seq_of()
    db = tmp_path / "flows.db"

    def last_stored():
        return any(seq_of[row_key(r)] == s.seq - 1 for r in sqlite_rows(db))
    wait_until(last_stored, timeout=60, interval=0.1)
    wait_until(lambda: not spool_files(c, "incoming") and not spool_files(c, "pending"), timeout=60)
    assert c.stop() == 0, c.log()
    summary = c.summary()
    lite = Counter(row_key(r) for r in sqlite_rows(db))
    pg = Counter(row_key(r) for r in pg_rows(servers.pg_dsn))
    assert lite == pg, "SQLite and PostgreSQL disagree"
    assert max(lite.values()) == 1, "a row stored twice"
    res = influx_rows(influx_query(servers.influx_url, "SELECT sum(bytes), sum(packets), sum(flows) FROM flows",
                                   db=database))
    rows = sqlite_rows(db)
    assert res and (res[0]["sum"], res[0]["sum_1"], res[0]["sum_2"]) == (
        sum(r["bytes"] for r in rows), sum(r["packets"] for r in rows), len(rows)), "InfluxDB disagrees"
    per_seq = Counter(seq_of[k] for k in lite)
    assert set(per_seq.values()) == {ROWS_PER_DATAGRAM}, "a datagram stored in part"
    missing = [q for q in range(s.seq) if q not in per_seq]
    assert all(q < killed_at for q in missing)
    assert summary["kernel_drops"] == 0 and summary["queue_dropped"] == 0
    assert summary["agents"][s.agent]["gaps"] == len(missing), "gaps reported != datagrams no store holds"
    assert spool_files(c, "errors") == []
    return lite, missing


def batch_number(name):
    """The per-process counter in a batch name: 0 for the first batch a collector makes."""
    return int(name.rsplit("-", 1)[1].split(".")[0])


@pytest.mark.parametrize("mode,nth", [("thread", 0), ("process", 0), ("thread", 3), ("process", 3)])
@pytest.mark.parametrize("target", ["staged_partial", "staged_all", "committed", "published_1", "published_2"])
def test_a_kill_at_each_step_of_accepting_a_batch(tmp_path, servers, target, mode, nth):
    """Kill when a batch (the first one, or one after three accepted) reaches `target`."""
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: scripts/install.sh installs it")
    database = "myason_crash_%s_%s_%d" % (target, mode, nth)
    c = collector(tmp_path, writers(tmp_path, servers, database), fsync=True, processors_mode=mode,
                  processors_number=1)
    s = Stream(c)
    c.start(prefix=STRACE)
    hit = None
    try:
        deadline = time.monotonic() + 90
        next_send = 0.0
        while hit is None and time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                s.send(10)
                next_send = time.monotonic() + 0.5
            for name in in_flight(c):
                if batch_number(name) >= nth and phase(c, name) == target:
                    c.kill_group()
                    hit = name
                    break
            else:
                time.sleep(0.005)
    finally:
        if c.proc is not None:
            c.kill_group()
    assert hit is not None, "the collector never reached %s within 90 s:\n%s" % (target, c.log())
    assert phase(c, hit) == target              # what the kill left on disk
    # The batch's rows, from SQLite's copy (JSON) wherever the kill left it.
    copies = [c.dir / "spool" / SPOOLS[0] / sub / hit for sub in ("tmp", "incoming", "pending")]
    batch_rows, _ = next((decode_batch_events(p.read_bytes()) for p in copies if p.exists()), ([], []))
    stored, missing = restart_and_verify(c, s, tmp_path, servers, database)
    batch = {row_key(r) for r in batch_rows}
    if target.startswith("staged"):
        # Not accepted: in no store at all, and counted among the gaps.
        assert batch and not batch & set(stored)
    else:
        # Accepted: in every store, whichever spools it had reached.
        if batch:
            assert batch <= set(stored)
    print("%s/%s: batch %s; %d datagrams missing, all reported as gaps" % (mode, target, hit, len(missing)))


@pytest.mark.parametrize("run", range(4))
def test_kills_at_random_moments(tmp_path, servers, run):
    rnd = random.Random(run)
    mode = "process" if run % 2 else "thread"
    database = "myason_random_%d" % run
    c = collector(tmp_path, writers(tmp_path, servers, database), fsync=True, processors_mode=mode,
                  processors_number=1, batch_rows=rnd.choice([200, 1000, 5000]))
    s = Stream(c)
    c.start()
    sender = threading.Thread(target=s.send, args=(3000,))
    sender.start()
    # Somewhere after the first batch went in: the stores then hold some of the stream.
    wait_until(lambda: spool_files(c, "incoming") or spool_files(c, "pending") or sqlite_rows(tmp_path / "flows.db"),
               timeout=30, interval=0.005)
    time.sleep(rnd.uniform(0.0, 0.6))
    c.stop(signal.SIGKILL)
    sender.join(60)
    _, missing = restart_and_verify(c, s, tmp_path, servers, database)
    print("random kill %d (%s): %d datagrams missing, all reported as gaps" % (run, mode, len(missing)))
