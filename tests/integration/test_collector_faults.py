"""Faults around a running collector: a database that goes away, SIGTERM and SIGKILL mid-stream, and
the InfluxDB writer across a restart. Real processes, real UDP, real servers (tests/support/services.py).

Exactness over a restart needs to know what was sent while a collector was there to receive it:
UDP has no retransmission, so the senders here (a real agent for the PostgreSQL outage, a sender
built on myason.wire for the signal tests) only send while a collector runs.
"""
import signal
import sqlite3
import threading
from collections import Counter

import pytest

from myason.collector.journal import load_sequences
from myason.schema import FIELDS
from tests.support import trafficgen as gen
from tests.support import collector as col
from tests.support.collector import assert_no_loss_inside, scrape, spool_files, sqlite_rows
from tests.support.services import influx_query, influx_rows, pg_start, pg_stop, wait_until
from tests.support.stores import pg_reset, pg_rows
from tests.support.streams import AGENT, ROWS_PER_DATAGRAM, Stream, agent_key, agent_records, collector, row_key


def writer_stats(summary):
    """The counters of the (single) writer thread in a summary."""
    (stats,) = summary["writers"].values()
    return stats


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.mark.root
def test_postgresql_stopped_mid_stream_every_flow_lands_once(tmp_path, servers):
    """pg_stop while the agent exports, two agent runs while it is down, pg_start, one more run.

    Every flow of the three runs' --output CSVs is in PostgreSQL exactly once; the writer counted
    errors while the server was away; nothing went to errors/.
    """
    pg_reset(servers.pg_dsn)
    pcaps = []
    for seed in (21, 22, 23):
        pcaps.append(tmp_path / ("s%d.pcap" % seed))
        gen.write_pcap(pcaps[-1], gen.scenario(seed=seed))
    c = collector(tmp_path, [{"type": "postgresql", "dsn": servers.pg_dsn, "connect_timeout": 2}])
    outs = [tmp_path / ("agent%d.csv" % i) for i in range(3)]
    stopped = False
    try:
        with c:
            # The writer is connected and writing when the server goes away.
            s = Stream(c)
            s.send(20)
            wait_until(lambda: len(pg_rows(servers.pg_dsn)) == 20 * ROWS_PER_DATAGRAM, timeout=30, interval=0.1)
            conf = c.agent_conf(max_datagram=512)
            errors = []

            def agents_while_down():
                try:
                    for pcap, out in zip(pcaps[:2], outs[:2]):
                        col.run_agent(conf, [pcap], output=out, timeout=120)
                except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                    errors.append(exc)
            t = threading.Thread(target=agents_while_down)
            t.start()
            try:
                pg_stop(servers)
                stopped = True
            finally:
                t.join(240)
            assert not errors, errors[0]
            first = sum(len(agent_records(o)[0]) for o in outs[:2])
            # Everything the two runs sent is spooled and waiting; the writer keeps failing meanwhile.
            def metric(name, key=None):
                return scrape(c.metrics_port).get((name, key), 0)
            wait_until(lambda: metric("myason_flows_spooled_total") >= first, timeout=30)
            wait_until(lambda: metric("myason_writers_errors_total", "postgresql") > 0, timeout=30)
            assert metric("myason_spool_waiting", "postgresql") > 0
            pg_start(servers)
            stopped = False
            col.run_agent(conf, [pcaps[2]], output=outs[2], timeout=120)
            expected = Counter(agent_key(r) for rows in s.rows.values() for r in rows)
            for o in outs:
                expected += agent_records(o)[1]
            total = sum(expected.values())
            wait_until(lambda: len(pg_rows(servers.pg_dsn)) >= total, timeout=60, interval=0.2)
            assert c.stop() == 0, c.log()
    finally:
        if stopped:   # never leave the session's server down
            pg_start(servers)
    summary = c.summary()
    stored = pg_rows(servers.pg_dsn)
    assert Counter(agent_key(r) for r in stored) == expected
    assert Counter(row_key(r) for r in stored if r[FIELDS.index("agent")] == AGENT) == s.expected()
    assert writer_stats(summary)["errors"] > 0
    assert writer_stats(summary)["rows"] == total
    assert_no_loss_inside(summary)
    assert spool_files(c, "errors") == [] and spool_files(c, "incoming") == [] and spool_files(c, "pending") == []


# ---------------------------------------------------------------------------------------------
# SIGTERM


@pytest.mark.parametrize("db_locked,mode", [(False, "thread"), (True, "thread"), (False, "process")],
                         ids=["db-free", "db-locked", "processes"])
def test_sigterm_mid_stream_and_restart_nothing_lost_or_duplicated(tmp_path, db_locked, mode):
    """SIGTERM right after a burst (the collector is still decoding and writing), then a restart.

    The sender pauses while no collector runs (UDP loses what nobody receives), so the
    expectation is exact: stored + gaps == sent, with gaps == 0 on loopback. With `db-locked` the
    test holds SQLite's write lock across the SIGTERM, so the batches cannot be written before
    exit: they stay in the spool and the restarted collector delivers them, once.
    """
    db = tmp_path / "flows.db"
    c = collector(tmp_path, [{"type": "sqlite", "path": str(db), "busy_timeout": 0.2}],
                  processors_mode=mode, processors_number=2 if mode == "process" else 1)
    s = Stream(c)
    lock = None
    with c:
        s.send(50)
        wait_until(lambda: len(sqlite_rows(db)) == 50 * ROWS_PER_DATAGRAM, timeout=30)
        if db_locked:
            lock = sqlite3.connect(str(db), isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
        s.send(1500)
        # Pause the sender, stop the collector at once: its queues, spool and writer are busy.
        assert c.stop() == 0, c.log()
    first = c.summary()
    assert_no_loss_inside(first)
    assert first["datagrams"] == 1550
    assert first["flows_spooled"] == 1550 * ROWS_PER_DATAGRAM
    assert first["agents"][AGENT]["gaps"] == 0
    left = first["spool"]["sqlite"]["waiting"]
    print("SIGTERM: %d of %d flows written before exit, %d batches left in the spool"
          % (writer_stats(first)["rows"], first["flows_spooled"], left))
    if db_locked:
        assert left > 0 and writer_stats(first)["errors"] > 0
        lock.execute("ROLLBACK")
        lock.close()
    c.start()
    wait_until(lambda: not spool_files(c, "incoming") and not spool_files(c, "pending"), timeout=30)
    s.send(500)
    wait_until(lambda: len(sqlite_rows(db)) >= 2050 * ROWS_PER_DATAGRAM, timeout=30, interval=0.1)
    assert c.stop() == 0, c.log()
    second = c.summary()
    assert_no_loss_inside(second)
    assert second["agents"][AGENT]["gaps"] == 0
    assert writer_stats(first)["rows"] + writer_stats(second)["rows"] == 2050 * ROWS_PER_DATAGRAM
    assert Counter(row_key(r) for r in sqlite_rows(db)) == s.expected()
    assert spool_files(c, "errors") == []


# ---------------------------------------------------------------------------------------------
# SIGKILL


def stored_rows(store, db, dsn):
    """FIELDS-ordered stored rows of the SIGKILL test's store."""
    if store == "sqlite":
        return [row_key(r) for r in sqlite_rows(db)]
    return [row_key(r) for r in pg_rows(dsn)]


@pytest.mark.parametrize("store,mode", [("sqlite", "thread"), ("sqlite", "process"),
                                        pytest.param("postgresql", "thread", marks=pytest.mark.root)])
def test_sigkill_loses_only_unspooled_datagrams_and_shows_them_as_gaps(tmp_path, store, mode, request):
    """SIGKILL right after a burst, restart, more traffic: loss is exact and visible.

    How the test knows what was accepted at the kill: each processor saves its agents' sequence
    state (top sequence number) beside the spool as the commit step of every batch
    (spool_dir/sequences-N.json, myason/collector/journal.py); the test reads it after the kill
    and before the restart (`saved_top`). Ground truth comes from the database after the
    restart has delivered the spool: every row carries the seq of its datagram here (the sender
    keeps the mapping).

    Checks: no row is stored twice; datagrams are stored whole or not at all; the stored ones
    before the kill are exactly 0..saved_top (a batch is accepted together with the state that
    counts it); the missing ones are exactly saved_top+1..N-1 (N = first seq after the restart),
    i.e. what was received or queued but not yet accepted; and the restarted collector reports
    exactly those as sequence gaps.
    """
    db = tmp_path / "flows.db"
    dsn = None
    if store == "sqlite":
        writer = {"type": "sqlite", "path": str(db)}
    else:
        dsn = request.getfixturevalue("servers").pg_dsn
        pg_reset(dsn)
        writer = {"type": "postgresql", "dsn": dsn}
    batch_rows = 2000
    c = collector(tmp_path, [writer], batch_rows=batch_rows, processors_mode=mode)
    s = Stream(c)
    with c:
        s.send(50)
        wait_until(lambda: len(stored_rows(store, db, dsn)) == 50 * ROWS_PER_DATAGRAM, timeout=30, interval=0.1)
        s.send(3000)
        assert c.stop(signal.SIGKILL) == -signal.SIGKILL
    killed_at = s.seq
    saved = load_sequences(str(c.dir / "spool"))
    saved_top = saved[AGENT]["top"]
    assert not c.summary_json.exists()
    c.start()
    wait_until(lambda: not spool_files(c, "incoming") and not spool_files(c, "pending"), timeout=60)
    s.send(100, metrics_port=c.metrics_port)
    seq_of = s.seq_of()
    wait_until(lambda: any(seq_of[k] == s.seq - 1 for k in stored_rows(store, db, dsn)), timeout=30, interval=0.1)
    assert c.stop() == 0, c.log()
    summary = c.summary()
    assert_no_loss_inside(summary)
    stored = Counter(stored_rows(store, db, dsn))
    assert max(stored.values()) == 1, "a row stored twice"
    assert set(stored) <= set(seq_of)
    per_seq = Counter(seq_of[k] for k in stored)
    assert set(per_seq.values()) == {ROWS_PER_DATAGRAM}, "a datagram stored in part"
    before = sorted(q for q in per_seq if q < killed_at)
    top = before[-1]
    assert before == list(range(top + 1))
    assert top == saved_top
    missing = [q for q in range(s.seq) if q not in per_seq]
    assert missing == list(range(top + 1, killed_at))
    assert sorted(per_seq) == before + list(range(killed_at, s.seq))
    assert summary["agents"][AGENT]["gaps"] == killed_at - saved_top - 1
    assert summary["agents"][AGENT]["replays"] == 0
    assert sum(stored.values()) == s.seq * ROWS_PER_DATAGRAM - len(missing) * ROWS_PER_DATAGRAM
    print("%s: %d of %d datagrams before the kill were not spooled yet (gaps reported: %d)"
          % (store, len(missing), killed_at, summary["agents"][AGENT]["gaps"]))


# ---------------------------------------------------------------------------------------------
# InfluxDB across a restart


@pytest.mark.root
def test_influxdb_sums_equal_stored_flows_across_a_kill_and_a_restart(tmp_path, servers):
    """InfluxDB (v1 /write) beside SQLite; SIGKILL mid-stream, restart, SIGTERM, restart again.

    Batches redelivered after the kill must not be counted twice: the sums of bytes, packets and
    flows in InfluxDB equal those of the flows stored in SQLite (the same spooled batches).
    """
    database = "myason_faults"
    influx_query(servers.influx_url, 'DROP DATABASE "%s"' % database, db="")
    db = tmp_path / "flows.db"
    writers = [{"type": "sqlite", "path": str(db)},
               {"type": "influxdb", "url": servers.influx_url, "api": "v1", "database": database}]
    c = collector(tmp_path, writers, batch_rows=2000)
    s = Stream(c)
    with c:
        s.send(1000)
        assert c.stop(signal.SIGKILL) == -signal.SIGKILL
    carried = {sp: len(list((c.dir / "spool" / sp).glob("*/*.batch"))) for sp in ("sqlite", "influxdb")}
    print("batches left in the spools at the kill: %s" % carried)
    c.start()
    s.send(300, metrics_port=c.metrics_port)
    assert c.stop() == 0, c.log()
    c.start()
    s.send(300, metrics_port=c.metrics_port)

    def drained():
        return not spool_files(c, "incoming") and not spool_files(c, "pending")
    wait_until(drained, timeout=60, interval=0.1)
    assert c.stop() == 0, c.log()
    assert_no_loss_inside(c.summary())
    rows = sqlite_rows(db)
    assert max(Counter(row_key(r) for r in rows).values()) == 1
    res = influx_rows(influx_query(servers.influx_url, "SELECT sum(bytes), sum(packets), sum(flows) FROM flows",
                                   db=database))
    assert res and (res[0]["sum"], res[0]["sum_1"], res[0]["sum_2"]) == (
        sum(r["bytes"] for r in rows), sum(r["packets"] for r in rows), len(rows))
    assert len(rows) >= 600 * ROWS_PER_DATAGRAM
