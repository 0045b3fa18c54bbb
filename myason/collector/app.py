"""Collector wiring: listener -> processors -> one spool per writer -> writer threads.

The listener only receives; it hands each drained list to the processor that owns the sending
agent (by agent id), so one agent's replay window and gap count live in one place. Processors
decrypt, validate and batch rows, then store each batch durably in every writer's spool (the
filer protocol). Writers commit batches exactly once. Shutdown order: stop the listener, let
the processors drain their queues into the spools, let the writers finish, exit 0.
"""
import dataclasses
import logging
import os
import queue
import signal
import socket
import threading
import time

from myason.collector import journal
from myason.collector.capacity import CapacityPlanner
from myason.collector.journal import load_sequences, sequence_file
from myason.collector.intake import ByteBudget, RoutingQueue, SourceLimiter
from myason.collector.listener import LIST_MAX_BYTES, Listener
from myason.collector.processor import DONE, RELOAD, ProcessorThread, build_processor, spool_encoders
from myason.collector.sink import WriterThread
from myason.collector.spool import writer_spool
from myason.collector.workers import LIVE_KEYS, make_reloader, tune_gc
from myason.store.base import writer_class

log = logging.getLogger("myason.collector")

# Metrics that go up and down; everything else in stats() is a counter.
GAUGES = ("writers_latency_seconds", "writers_connected", "spool_waiting", "spool_bytes", "spool_errors",
          "maintenance_rollup_lag_seconds", "maintenance_last_run", "maintenance_busy", "maintenance_connected",
          "maintenance_running_seconds", "capacity_rows_per_second", "capacity_spool_growth_bytes_per_second",
          "capacity_spool_seconds_to_full", "capacity_spool_growing",
          "queue_depth", "queue_bytes", "agents_last_seen", "processors_alive", "processors_blocked", "processors_stalled",
          # A late datagram that fills a gap takes one back: not a counter.
          "agents_gaps")


# Seconds between the capacity planner's samples of spool bytes and rows stored.
CAPACITY_EVERY = 10.0


def _put_while(q, item, alive, step=0.5):
    """q.put(item), giving up when alive() turns false (a dead consumer never makes room)."""
    while True:
        try:
            q.put(item, timeout=step)
            return True
        except queue.Full:
            if not alive():
                return False


class CollectorApp:
    """The collector daemon."""

    def __init__(self, cfg, reuseport=None, config_path=None):
        self.cfg = cfg
        self.reuseport = cfg.reuseport if reuseport is None else reuseport
        # Where SIGHUP reads the configuration again (None: only the keystore is re-read).
        self.config_path = config_path
        self.reload_requested = threading.Event()
        self.stop_listening = threading.Event()
        self.stop_writers = threading.Event()
        self.summary = {}
        self.listener = None
        self.ready = threading.Event()
        self.queues = []
        self.maintenance = []
        self.capacity = None

    def install_signals(self):
        """SIGTERM/SIGINT: stop receiving; everything received is still stored. SIGHUP: reload."""
        def handler(signum, _frame):
            log.info("signal %d: stopping", signum)
            self.stop_listening.set()

        def hup(_signum, _frame):
            self.reload_requested.set()
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, hup)

    def _maintenance(self):
        """A MaintenanceThread for each SQL writer, with a writer instance of its own."""
        from myason.collector.maintenance import MaintenanceThread
        out = []
        for wcfg in self.cfg.writers:
            opts = dict(wcfg)
            kind = opts.pop("type")
            name = opts.pop("name", kind)
            cls = writer_class(kind)
            if hasattr(cls, "maintain"):
                out.append(MaintenanceThread(name, cls(**opts), self.stop_writers))
        return out

    def _writers(self):
        threads, spools = [], []
        spools = [writer_spool(self.cfg, wcfg, shared=self.cfg.process_mode) for wcfg in self.cfg.writers]
        # First the batches a crash left committed but not yet in every spool, then each spool's
        # own leftovers (claimed batches back to incoming/, uncommitted staged files deleted).
        journal.recover(self.cfg.spool_dir, spools)
        for wcfg, spool in zip(self.cfg.writers, spools):
            opts = dict(wcfg)
            kind = opts.pop("type")
            name = opts.pop("name", kind)
            moved = spool.recover()
            if moved:
                log.info("spool %s: %d batches from the last run are delivered again", name, moved)
            cls = writer_class(kind)
            for i in range(self.cfg.writers_number):
                wopts = dict(opts)
                if kind == "jsonl" and self.cfg.writers_number > 1:
                    # A JSON-lines directory has one owner (it is locked): one per thread.
                    wopts["dir"] = os.path.join(wopts.get("dir", ""), "writer-%d" % i)
                if kind == "influxdb":
                    # Its exactly-once bookkeeping lives beside the spool, one file and one
                    # `collector` tag value per writer thread so their points never collide.
                    wopts.setdefault("state_file", os.path.join(spool.path, "influxdb-%d.state" % i))
                    if self.cfg.writers_number > 1:
                        wopts["instance"] = "%s-%d" % (wopts.get("instance") or socket.gethostname(), i)
                w = cls(**wopts)
                w.name = name if self.cfg.writers_number == 1 else "%s-%d" % (name, i)
                threads.append(WriterThread(w, spool, self.stop_writers))
        return threads, spools

    def run(self):
        """Run until a signal, or until a stage dies; returns the exit code."""
        from myason.collector.keystore import Keystore
        Keystore.load(self.cfg.keystore)        # fail at start, not in a processor
        writers, spools = self._writers()
        maintenance = self._maintenance()
        self.maintenance = maintenance
        state = load_sequences(self.cfg.spool_dir)
        block = self.cfg.spool_policy == "block"
        group = None
        if self.cfg.process_mode:
            from myason.collector.workers import ProcessGroup
            group = ProcessGroup(self.cfg, self.cfg.packet_queue, state, spools)
            queues, budgets = group.queues, group.budgets
        else:
            queues = [queue.Queue(self.cfg.packet_queue) for _ in range(self.cfg.processors_number)]
            budgets = [ByteBudget(self.cfg.queue_max_bytes) for _ in queues]
            procs = []
            for i, q in enumerate(queues):
                dp, pipeline, detectors = build_processor(self.cfg, state)
                procs.append(ProcessorThread("processor-%d" % i, dp, q, spools, self.cfg.batch_rows,
                                             self.cfg.batch_interval, sequence_file(self.cfg.spool_dir, i),
                                             self.cfg.fsync, pipeline=pipeline, detectors=detectors,
                                             detect_clock=self.cfg.detect_clock,
                                             reload=make_reloader(self.cfg),
                                             encoders=spool_encoders(self.cfg), policy=self.cfg.spool_policy,
                                             stopping=self.stop_listening, budget=budgets[i]))
        self.queues, self.budgets = queues, budgets
        if state:
            log.info("sequence numbers of %d agents carried over from the last run", len(state))
        router = RoutingQueue(queues, budgets, block=block, stopping=self.stop_listening)
        limiter = SourceLimiter(self.cfg.source_rate, self.cfg.source_burst) if self.cfg.source_rate else None
        self.listener = Listener(self.cfg.bind_address, self.cfg.bind_port, router, self.stop_listening,
                                 self.cfg.rcvbuf, self.cfg.max_datagram, self.reuseport, limiter=limiter,
                                 list_max_bytes=min(LIST_MAX_BYTES, self.cfg.queue_max_bytes // 8))
        if group is not None:
            group.start()
        for t in writers + maintenance + ([] if group else procs) + [self.listener]:
            t.start()
        log.info("collector listening on %s (%d processor %ss)",
                 ", ".join("%s:%d" % a for a in self.listener.addresses()), self.cfg.processors_number,
                 "process" if self.cfg.process_mode else "thread")

        def stats():
            return self.stats(group.procs if group else procs, writers)

        def status():
            return self.status(group.procs if group else procs, writers, spools)
        metrics_server = None
        if self.cfg.metrics:
            from myason.metrics import serve
            metrics_server, _ = serve(self.cfg.metrics, stats, gauges=GAUGES, status_fn=status)
        health = self._start_health(stats, spools)
        self.capacity = CapacityPlanner(self.cfg.spool_max_bytes)
        next_capacity = 0.0
        tune_gc()
        self.ready.set()
        next_stats = time.monotonic() + self.cfg.stats_interval if self.cfg.stats_interval else None
        dead = []
        while not self.stop_listening.is_set():
            self.stop_listening.wait(0.5)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload(queues, health)
                if self.cfg.stats_interval and not next_stats:
                    next_stats = time.monotonic() + self.cfg.stats_interval
            if group is not None:
                group.respawn_dead(lambda: load_sequences(self.cfg.spool_dir))
            dead = [t for t in writers + maintenance + ([] if group else procs) + [self.listener]
                    if not t.is_alive()]
            if dead:
                # A stage that died stops the flow of data for good: stop in order and exit
                # non-zero, so that the supervisor (systemd) starts the collector again.
                log.critical("%s stopped unexpectedly (%s): stopping the collector",
                             ", ".join(t.name for t in dead), "; ".join(repr(t.error) for t in dead))
                self.stop_listening.set()
            if time.monotonic() >= next_capacity:
                self._observe_capacity(writers)
                next_capacity = time.monotonic() + CAPACITY_EVERY
            if next_stats and time.monotonic() >= next_stats:
                log.info("stats %s", stats())
                next_stats = time.monotonic() + self.cfg.stats_interval if self.cfg.stats_interval else None
        if group is not None:
            group.stopping.set()        # children drain whatever the spools' cap, so the listener can too
        self.listener.join(RoutingQueue.STOP_WAIT + 5)
        if group is not None:
            group.stop(DONE)
            procs = group.procs
        else:
            for q, p in zip(queues, procs):
                _put_while(q, DONE, p.is_alive)
            for p in procs:
                p.join()
                if p.pipeline is not None:
                    p.pipeline.close()
        self.stop_writers.set()
        for w in writers:
            w.join()
        for m in maintenance:
            m.join(60)
        self.summary = self.stats(procs, writers)
        if health is not None:
            health.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        failed = [t for t in writers + maintenance + procs + [self.listener] if t.error]
        return 1 if failed or dead else 0

    @staticmethod
    def _spool_writers(writers):
        """{spool name: (spool, [writer threads])}: a spool's writers store into the same store."""
        out = {}
        for w in writers:
            name = os.path.basename(w.spool.path)
            out.setdefault(name, (w.spool, []))[1].append(w)
        return out

    def _observe_capacity(self, writers):
        for name, (spool, threads) in self._spool_writers(writers).items():
            self.capacity.observe(name, spool.current_bytes(), sum(t.rows for t in threads))

    def _start_health(self, stats, spools):
        if not self.cfg.health_interval:
            return None
        from myason.collector.health import HealthThread
        h = HealthThread(self.cfg, stats, spools)
        h.start()
        return h

    def _reload(self, queues, health=None):
        """SIGHUP: read the config file and keystore again; send the live keys to every processor."""
        from myason.collector.config import load_collector_config
        from myason.collector.keystore import Keystore
        try:
            new = load_collector_config(self.config_path) if self.config_path else self.cfg
            Keystore.load(new.keystore)
        except Exception as exc:  # noqa: BLE001 - a broken file keeps the running config
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        old = self.cfg.to_dict()
        changed = sorted(k for k, v in new.to_dict().items() if v != old.get(k))
        live = [k for k in changed if k in LIVE_KEYS or k in ("stats_interval", "health_interval")]
        later = [k for k in changed if k not in live]
        if later:
            log.warning("reload: %s changed: takes effect at the next restart", ", ".join(later))
        self.cfg = dataclasses.replace(self.cfg, **{k: getattr(new, k) for k in live})
        if health is not None:
            health.cfg = self.cfg
        for q in queues:
            q.put((RELOAD, self.cfg))   # in order with the queued datagrams; blocks only while a queue is full
        log.info("reload: keystore %s%s sent to %d processors", self.cfg.keystore,
                 " and " + ", ".join(live) if live else "", len(queues))

    def status(self, procs, writers, spools):
        """What /status and /healthz answer: each stage's state, and whether all is stored.

        healthy: every stage runs. drained: nothing received is waiting anywhere (processor
        queues, processors' open batches, spools), i.e. every accepted flow is in its stores.
        """
        stages = {"listener": "running" if self.listener.is_alive() else "stopped"}
        uncommitted = 0
        for p in procs:
            snap = p.snapshot()
            uncommitted += snap.get("uncommitted", 0)
            if not p.is_alive():
                stages[p.name] = "stopped"
            else:
                stages[p.name] = ("stalled" if snap.get("stalled") else "blocked" if snap.get("blocked")
                                  else "running")
        for w in writers:
            stages[w.name] = ("stopped" if not w.is_alive() else "running" if w.connected else "retrying")
        for m in getattr(self, "maintenance", ()):
            stages[m.name] = ("stopped" if not m.is_alive() else "running" if m.connected else "retrying")
        waiting = {}
        for sp in spools:
            incoming, pending, _ = sp.depth()
            waiting[os.path.basename(sp.path)] = incoming + pending + len(os.listdir(os.path.join(sp.path, "tmp")))
        queued = sum(_qsize(q) for q in self.queues)
        ready = self.ready.is_set()
        return {"ready": ready, "healthy": ready and all(v != "stopped" for v in stages.values()),
                "stopping": self.stop_listening.is_set(), "stages": stages, "queued_lists": queued,
                "uncommitted_datagrams": uncommitted, "spool_batches": waiting,
                "drained": queued == 0 and uncommitted == 0 and not any(waiting.values())}

    def stats(self, procs, writers):
        """Every counter: listener, rejects by reason, per-agent gaps, spools, writers."""
        s = dict(self.listener.stats())
        s["queue_dropped"] += self.listener.outbox.dropped
        rejects, agents = {}, {}
        snaps = [p.snapshot() for p in procs]
        for snap in snaps:
            for k, v in snap["rejects"].items():
                rejects[k] = rejects.get(k, 0) + v
            for agent, st in snap["agents"].items():
                if agent not in agents or st["last_seen"] > agents[agent]["last_seen"]:
                    agents[agent] = st
        s.update(flows_spooled=sum(p["rows"] for p in snaps), events_spooled=sum(p["events"] for p in snaps),
                 rejects=rejects, agents=agents,
                 spool_dropped=sum(p.get("spool_dropped", 0) for p in snaps),
                 intake_blocked_seconds=round(sum(p.get("blocked_seconds", 0.0) for p in snaps), 3),
                 listener_waited_seconds=round(self.listener.outbox.waited, 3),
                 spool_commit_errors=sum(p.get("commit_errors", 0) for p in snaps),
                 processors_blocked=sum(p.get("blocked", 0) for p in snaps),
                 processors_stalled=sum(p.get("stalled", 0) for p in snaps))
        s["writers"] = {w.writer.name: {"batches": w.batches, "rows": w.rows, "events": w.events,
                                        "errors": w.errors,
                                 "failed_batches": w.failed_batches, "latency_seconds": w.latency,
                                 "write_seconds": round(w.write_seconds, 3), "connected": int(w.connected)}
                        for w in writers}
        if self.capacity is not None:
            s["capacity"] = {name: self.capacity.figures(name) for name in self._spool_writers(writers)}
        s["spool"] = {os.path.basename(sp.path): {"waiting": sp.depth()[0], "bytes": sp.current_bytes(),
                                                  "errors": sp.depth()[2]}
                      for sp in {id(w.spool): w.spool for w in writers}.values()}
        s["maintenance"] = {m.name[len("maintenance-"):]: m.snapshot() for m in getattr(self, "maintenance", ())}
        s["queue_depth"] = sum(_qsize(q) for q in self.queues)
        s["queue_bytes"] = sum(b.queued for b in getattr(self, "budgets", ()))
        s["processors_alive"] = sum(1 for p in procs if p.is_alive())
        return s


def _qsize(q):
    try:
        return q.qsize()
    except NotImplementedError:     # multiprocessing queues where sem_getvalue is missing
        return 0
