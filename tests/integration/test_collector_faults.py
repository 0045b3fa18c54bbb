"""Faults around a running collector: a database that goes away, SIGTERM and SIGKILL mid-stream, and
the InfluxDB writer across a restart. Real processes, real UDP, real servers (tests/support/services.py).

Exactness over a restart needs to know what was sent while a collector was there to receive it:
UDP has no retransmission, so the senders here (a real agent for the PostgreSQL outage, a sender
built on myason.wire for the signal tests) only send while a collector runs.
"""
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from myason import wire
from myason.collector.journal import load_sequences
from myason.schema import FIELDS
from tests.support import trafficgen as gen
from tests.support import collector as col
from tests.support.services import influx_query, influx_rows, pg_start, pg_stop, wait_until
from tests.integration.test_collector_e2e import agent_records
from tests.integration.test_collector_hostile import SummaryCollector, flow_row, free_tcp_port, row_key, scrape, \
    sqlite_rows

AGENT = "ctl-1"
ROWS_PER_DATAGRAM = 20


class Stream:
    """A controlled agent: datagrams of ROWS_PER_DATAGRAM fresh rows, contiguous seq, made with myason.wire."""

    def __init__(self, c, agent=AGENT):
        self.agent, self.port = agent, c.port
        self.fernet = Fernet(c.keys[agent].encode())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rows = {}             # seq -> rows of that datagram
        self.seq = 0

    def send(self, n, pause_every=500, metrics_port=None):
        """Send n datagrams; every pause_every, wait for the collector to have taken them in."""
        total = (lambda: scrape(metrics_port).get(("myason_datagrams_total", None), 0)) if metrics_port else None
        base = total() if total else 0
        for i in range(1, n + 1):
            now = time.time()
            first = self.seq * ROWS_PER_DATAGRAM
            rows = [flow_row(self.agent, first + j, now) for j in range(ROWS_PER_DATAGRAM)]
            self.sock.sendto(wire.encode_datagram(rows, self.agent, self.seq, self.fernet), ("127.0.0.1", self.port))
            self.rows[self.seq] = rows
            self.seq += 1
            if total and i % pause_every == 0:
                wait_until(lambda: total() >= base + i - 100, timeout=30, interval=0.01)

    def expected(self, seqs=None):
        """Counter of row keys of the given datagrams (default: all sent)."""
        seqs = self.rows if seqs is None else seqs
        return Counter(row_key(r) for s in seqs for r in self.rows[s])

    def seq_of(self):
        """row key -> seq of the datagram that carried it."""
        return {row_key(r): s for s, rows in self.rows.items() for r in rows}


def collector(tmp_path, writers, metrics=True, **extra):
    """A SummaryCollector under tmp_path/c (config, keystore, spool) for AGENT and the e2e agent."""
    port = free_tcp_port() if metrics else None
    c = SummaryCollector(tmp_path / "summary.json", tmp_path / "c", writers, agents=(col.AGENT_ID, AGENT),
                         metrics="127.0.0.1:%d" % port if metrics else None, **extra)
    c.metrics_port = port
    return c


def spool_files(c, sub):
    """Batch files in one spool subfolder, over every writer's spool."""
    return sorted(p.name for p in Path(c.dir / "spool").glob("*/%s/*.batch" % sub))


def writer_stats(summary):
    """The counters of the (single) writer thread in a summary."""
    (stats,) = summary["writers"].values()
    return stats


def assert_no_loss_inside(summary):
    """No datagram dropped by the kernel or a full queue, no batch moved to errors/."""
    assert summary["kernel_drops"] == 0 and summary["queue_dropped"] == 0
    assert all(w["failed_batches"] == 0 for w in summary["writers"].values())
    assert all(s["errors"] == 0 for s in summary["spool"].values())


# ---------------------------------------------------------------------------------------------
# PostgreSQL

PG_COLUMNS = ("host(src_ip), host(dst_ip), src_port, dst_port, proto, tos, packets, bytes, "
              "extract(epoch from first)::float8, extract(epoch from last)::float8, tcp_flags, agent, if_name, "
              "in_if, out_if, ip_version, vlan, coalesce(host(next_hop), ''), src_mask, dst_mask, src_as, dst_as, "
              "end_reason")
AGENT_KEY_FIELDS = ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "tos", "packets", "bytes", "tcp_flags",
                    "end_reason")


def pg_reset(dsn):
    """Drop the collector's tables so each test starts from an empty database."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS flows CASCADE")
        conn.execute("DROP TABLE IF EXISTS batches, schema_migrations CASCADE")


def pg_rows(dsn):
    """Every stored flow as a FIELDS-ordered tuple ([] while the server or table is not there)."""
    import psycopg
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            return [tuple(r) for r in conn.execute("SELECT %s FROM flows" % PG_COLUMNS).fetchall()]
    except psycopg.Error:
        return []


def agent_key(row):
    """The e2e test's identity of an agent row (CSV dict or FIELDS-ordered tuple)."""
    if not isinstance(row, dict):
        row = dict(zip(FIELDS, row))
    return tuple(str(row[k]) for k in AGENT_KEY_FIELDS) + (round(float(row["first"]), 6),
                                                         round(float(row["last"]), 6))


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
