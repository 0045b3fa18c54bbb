"""Collector health in the database: what the query API's /stats and Grafana's pipeline-health
dashboard read, since neither can reach into a running collector.

Every `health_interval` seconds the collector upserts one `health_collectors` row (itself),
one `health_agents` row per agent, and appends its cumulative counters to `health_samples`
(kept HEALTH_RETENTION), in every SQL store it writes flows to (tables: migrations
postgresql/004 and sqlite/003, docs/rollups.md). A store that is down only delays health
rows: failures are logged rate-limited and retried at the next interval, never raised.
"""
import logging
import os
import socket
import threading
import time

from myason.logs import RateLimiter

log = logging.getLogger("myason.collector.health")

HEALTH_RETENTION = 7 * 86400.0
SQL_TYPES = ("postgresql", "sqlite")


def instance_name(cfg):
    """The `node` this collector reports under: `instance`, or host:port."""
    return cfg.instance or "%s:%d" % (socket.gethostname(), cfg.bind_port)


def health_rows(stats, spools, spool_dir, now):
    """(collector row dict, [agent row dicts], [(agent, metric, value)]) from a stats() snapshot."""
    rejects = sum(stats.get("rejects", {}).values())
    spool_files = sum(v["waiting"] for v in stats.get("spool", {}).values())
    spool_bytes = sum(v["bytes"] for v in stats.get("spool", {}).values())
    lag = max((sp.oldest_age(now) for sp in spools), default=0.0)
    try:
        st = os.statvfs(spool_dir)
        disk_free = st.f_bavail * st.f_frsize
    except OSError:
        disk_free = None
    flows = stats.get("flows_spooled", 0)
    coll = {"datagrams": stats.get("datagrams", 0), "flows": flows, "rejects": rejects,
            "queue_dropped": stats.get("queue_dropped", 0), "kernel_drops": stats.get("kernel_drops", 0),
            "spool_files": spool_files, "spool_bytes": spool_bytes, "writer_lag": lag, "disk_free": disk_free}
    agents = []
    for agent, a in sorted(stats.get("agents", {}).items()):
        agents.append({"agent": agent, "last_datagram": a.get("last_seen") or None,
                       "datagrams": a.get("datagrams", 0), "flows": a.get("flows", 0),
                       "gaps": a.get("gaps", 0), "restarts": a.get("restarts", 0),
                       "rejects": a.get("replays", 0)})
    samples = [("", k, float(coll[k])) for k in ("datagrams", "flows", "rejects", "queue_dropped",
                                                  "kernel_drops", "spool_files", "spool_bytes", "writer_lag")]
    samples += [("", "reject:" + reason, float(n)) for reason, n in sorted(stats.get("rejects", {}).items())]
    for a in agents:
        samples += [(a["agent"], k, float(a[k])) for k in ("datagrams", "flows", "gaps", "restarts")]
    return coll, agents, samples


class HealthThread(threading.Thread):
    """Writes health rows every cfg.health_interval seconds until stop()."""

    def __init__(self, cfg, stats_fn, spools=(), clock=time.time):
        super().__init__(name="health", daemon=True)
        self.cfg, self.stats_fn, self.spools, self.clock = cfg, stats_fn, list(spools), clock
        self.node = instance_name(cfg)
        self.started = clock()
        self.targets = [dict(w) for w in cfg.writers if w.get("type") in SQL_TYPES]
        self._halt = threading.Event()
        self._limiter = RateLimiter(60.0)
        self.writes = 0
        self.errors = 0
        self.error = None

    def run(self):
        # The interval is read each time: SIGHUP may change it (0 = pause).
        while not self._halt.wait(self.cfg.health_interval or 1.0):
            if self.cfg.health_interval:
                self.write_once()

    def stop(self):
        """Write the final figures once more and stop."""
        self._halt.set()
        self.join(10)
        self.write_once()

    def write_once(self):
        """One round of health rows into every SQL store; returns how many stores took them."""
        try:
            now = self.clock()
            rows = health_rows(self.stats_fn(), self.spools, self.cfg.spool_dir, now)
        except Exception as exc:  # noqa: BLE001 - health must never take the collector down
            self._warn("health: cannot read the counters: %s", exc)
            return 0
        ok = 0
        for target in self.targets:
            try:
                if target["type"] == "sqlite":
                    _write_sqlite(target["path"], self.node, self.started, now, *rows)
                else:
                    _write_postgresql(target["dsn"], self.node, self.started, now, *rows)
                ok += 1
            except Exception as exc:  # noqa: BLE001 - a store that is down only delays health rows
                self.errors += 1
                self._warn("health: cannot write to %s: %s", target["type"], exc)
        self.writes += 1
        return ok

    def _warn(self, msg, *args):
        if self._limiter.allow(msg):
            log.warning(msg, *args)


_COLL_COLS = ("datagrams", "flows", "rejects", "queue_dropped", "kernel_drops", "spool_files", "spool_bytes",
              "writer_lag", "disk_free")
_AGENT_COLS = ("last_datagram", "datagrams", "flows", "gaps", "restarts", "rejects")


def _write_sqlite(path, node, started, now, coll, agents, samples):
    import sqlite3
    conn = sqlite3.connect(path, timeout=10.0)
    try:
        with conn:
            conn.execute("INSERT INTO health_collectors (node, updated, started, %s) VALUES (?, ?, ?, %s) "
                         "ON CONFLICT (node) DO UPDATE SET updated = excluded.updated, started = excluded.started, %s"
                         % (", ".join(_COLL_COLS), ", ".join("?" * len(_COLL_COLS)),
                            ", ".join("%s = excluded.%s" % (c, c) for c in _COLL_COLS)),
                         (node, now, started) + tuple(coll[c] for c in _COLL_COLS))
            conn.executemany("INSERT INTO health_agents (node, agent, updated, %s) VALUES (?, ?, ?, %s) "
                             "ON CONFLICT (node, agent) DO UPDATE SET updated = excluded.updated, %s"
                             % (", ".join(_AGENT_COLS), ", ".join("?" * len(_AGENT_COLS)),
                                ", ".join("%s = excluded.%s" % (c, c) for c in _AGENT_COLS)),
                             [(node, a["agent"], now) + tuple(a[c] for c in _AGENT_COLS) for a in agents])
            conn.executemany("INSERT INTO health_samples (ts, node, agent, metric, value) VALUES (?, ?, ?, ?, ?)",
                             [(now, node, agent, metric, value) for agent, metric, value in samples])
            conn.execute("DELETE FROM health_samples WHERE ts < ?", (now - HEALTH_RETENTION,))
    finally:
        conn.close()


def _write_postgresql(dsn, node, started, now, coll, agents, samples):
    import psycopg
    ts = "to_timestamp(%s)"
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.execute("INSERT INTO health_collectors (node, updated, started, %s) VALUES (%%s, %s, %s, %s) "
                     "ON CONFLICT (node) DO UPDATE SET updated = excluded.updated, started = excluded.started, %s"
                     % (", ".join(_COLL_COLS), ts, ts, ", ".join(["%s"] * len(_COLL_COLS)),
                        ", ".join("%s = excluded.%s" % (c, c) for c in _COLL_COLS)),
                     (node, now, started) + tuple(coll[c] for c in _COLL_COLS))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO health_agents (node, agent, updated, %s) VALUES (%%s, %%s, %s, %s, %s) "
                            "ON CONFLICT (node, agent) DO UPDATE SET updated = excluded.updated, %s"
                            % (", ".join(_AGENT_COLS), ts, ts, ", ".join(["%s"] * (len(_AGENT_COLS) - 1)),
                               ", ".join("%s = excluded.%s" % (c, c) for c in _AGENT_COLS)),
                            [(node, a["agent"], now) + tuple(a[c] for c in _AGENT_COLS) for a in agents])
            cur.executemany("INSERT INTO health_samples (ts, node, agent, metric, value) "
                            "VALUES (to_timestamp(%s), %s, %s, %s, %s)",
                            [(now, node, agent, metric, value) for agent, metric, value in samples])
        conn.execute("DELETE FROM health_samples WHERE ts < to_timestamp(%s)", (now - HEALTH_RETENTION,))
