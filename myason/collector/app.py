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
import zlib

import orjson

from myason import wire
from myason.collector.listener import Listener
from myason.collector.sink import WriterThread
from myason.collector.spool import SpoolFull, writer_spool
from myason.collector.workers import LIVE_KEYS, make_reloader, tune_gc
from myason.errors import WireError
from myason.store.base import encode_batch, writer_class

log = logging.getLogger("myason.collector")

DONE = None
# SIGHUP puts (RELOAD, new config) into every processor's queue: the new keystore and live
# settings apply in order with the datagrams already queued.
RELOAD = "reload"
# Metrics that go up and down; everything else in stats() is a counter.
AGENT_COUNTERS = ("datagrams", "flows", "gaps", "replays", "restarts", "last_seen")
GAUGES = ("writers_latency_seconds", "writers_connected", "spool_waiting", "spool_bytes", "spool_errors",
          "queue_depth", "agents_last_seen", "processors_alive")


class ProcessorThread(threading.Thread):
    """Runs a DatagramProcessor over its queue and spools rows in batches."""

    def __init__(self, name, proc, inbox, spools, batch_rows, batch_interval, state_path=None, fsync=False,
                 pipeline=None, detectors=None, detect_clock="wall", reload=None, report=None, encoders=None):
        super().__init__(name=name, daemon=True)
        self.proc, self.inbox, self.spools = proc, inbox, spools
        # reload(worker): what RELOAD does; report(snapshot): called every batch interval and
        # at the end (processor processes send their counters to the parent this way).
        self.reload, self.report = reload, report
        self._carried = []          # events of replaced detectors, spooled with the next batch
        # Per spool: the writer's spool_encoder (None = the JSON batch every writer reads).
        self.encoders = list(encoders) if encoders is not None else [None] * len(spools)
        # Enrichment makes the batches format v2 (enriched rows + events); without it, v1.
        self.pipeline, self.detectors, self.detect_clock = pipeline, detectors, detect_clock
        self.events = 0
        self.state_path, self.fsync = state_path, fsync
        self.batch_rows, self.batch_interval = batch_rows, batch_interval
        self.rows = 0
        self.batches = 0
        self.spool_rejected_rows = 0
        self.error = None

    def run(self):
        try:
            self._loop()
        except BaseException as exc:  # noqa: B902
            self.error = exc
            log.exception("%s failed", self.name)

    def _loop(self):
        pending = []
        deadline = time.monotonic() + self.batch_interval
        handle = self.proc.handle
        enrich = self.pipeline.enrich if self.pipeline is not None else None
        feed = self.detectors.feed_rows if self.detectors is not None else None
        while True:
            try:
                items = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                items = []
            if items is DONE:
                break
            if isinstance(items, tuple):
                if items[0] == RELOAD and self.reload is not None:
                    self._reload(items[1])
                items = []
            for data, addr, received in items:
                rows = handle(data, addr, received)
                if rows:
                    if enrich is not None:
                        enrich(rows)
                    if feed is not None:
                        feed(rows)
                    pending.extend(rows)
            due = time.monotonic() >= deadline
            events = self._poll() if due else []
            if self._carried and due:
                events, self._carried = self._carried + events, []
            if len(pending) >= self.batch_rows or ((pending or events) and due):
                self._spool(pending, events)
                pending = []
            if due:
                deadline = time.monotonic() + self.batch_interval
                if self.report is not None:
                    self.report(self.snapshot())
        # Shutdown closes every detector window: what was seen so far is still reported.
        events = self.detectors.flush(self._now()) if self.detectors is not None else []
        events = self._carried + events
        if pending or events:
            self._spool(pending, events)
        self._save_state()
        if self.report is not None:
            self.report(self.snapshot())

    def _encode(self, encoder, rows, events):
        if encoder is not None:
            try:
                return encoder(rows, events)
            except Exception as exc:  # noqa: BLE001 - the writer then judges the rows itself
                log.warning("%s: cannot prepare a batch for its writer (%s): spooled as JSON", self.name, exc)
        return encode_batch(rows, events) if self.pipeline is not None else encode_batch(rows)

    def _reload(self, cfg):
        try:
            self.reload(self, cfg)
        except Exception as exc:  # noqa: BLE001 - a bad new config keeps the old one running
            log.error("%s: reload failed, keeping the previous configuration: %s", self.name, exc)

    def replace_detectors(self, detectors):
        """Use new detectors (or none); the old ones' open windows become events now."""
        if self.detectors is not None:
            try:
                self._carried.extend(self.detectors.flush(self._now()))
            except Exception:  # noqa: BLE001 - a detector bug must not stop the reload
                log.exception("%s: flushing the old detectors failed", self.name)
        self.detectors = detectors

    def snapshot(self):
        """Counters of this processor as plain data (what stats() and the metrics read)."""
        agents = {agent: {k: getattr(st, k) for k in AGENT_COUNTERS}
                  for agent, st in list(self.proc.agents.items())}
        return {"rows": self.rows, "events": self.events, "batches": self.batches,
                "spool_rejected_rows": self.spool_rejected_rows, "rejects": dict(self.proc.rejects),
                "agents": agents}

    def _now(self):
        # "flow": the newest flow time seen (replays of old captures); "wall": the clock.
        if self.detect_clock == "flow":
            return self.detectors.watermark
        return time.time()

    def _poll(self):
        if self.detectors is None:
            return []
        try:
            return self.detectors.poll(self._now())
        except Exception:  # noqa: BLE001 - a detector bug must not stop flow storage
            log.exception("%s: detector poll failed", self.name)
            return []

    def _save_state(self):
        # Written after the rows are in the spools, so after a crash the saved sequence numbers
        # never claim more than was spooled: what was lost shows up as gaps after the restart.
        if not self.state_path:
            return
        tmp = self.state_path + ".tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps(self.proc.snapshot()))
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
        except OSError as exc:
            # Only gap accounting across a restart suffers; the flows are already spooled.
            log.warning("%s: cannot save sequence state: %s", self.name, exc)

    def _spool(self, rows, events=()):
        events = list(events)
        encoded = {}            # encoder -> bytes: each format made once per batch
        self.events += len(events)
        for spool, encoder in zip(self.spools, self.encoders):
            data = encoded.get(encoder)
            if data is None:
                data = encoded[encoder] = self._encode(encoder, rows, events)
            try:
                spool.put(data)
            except SpoolFull:
                self.spool_rejected_rows += len(rows)
                log.error("spool %s full: %d flows not stored for this writer", spool.path, len(rows))
        self.rows += len(rows)
        self.batches += 1
        self._save_state()


def build_processor(cfg, state):
    """(DatagramProcessor, enrichment pipeline, detectors or None) for one processor."""
    from myason.collector.keystore import Keystore
    from myason.collector.process import DatagramProcessor
    from myason.detect import build_detectors
    from myason.enrich import build_pipeline
    dp = DatagramProcessor(Keystore.load(cfg.keystore), ttl=cfg.token_ttl, window=cfg.seq_window)
    if state:
        dp.restore(state)
    # Each processor has its own detector state: an agent always goes to the same one.
    pipeline = build_pipeline(cfg.enrich)
    detectors = build_detectors(cfg.detect_config()) if cfg.detect_enabled else None
    return dp, pipeline, detectors


def spool_encoders(cfg):
    """Per configured writer, the function that prepares its spool batches (None: JSON)."""
    out = []
    for wcfg in cfg.writers:
        opts = {k: v for k, v in wcfg.items() if k not in ("type", "name")}
        out.append(writer_class(wcfg["type"]).spool_encoder(opts))
    return out


def sequence_file(spool_dir, i):
    """Where processor i keeps the sequence state of its agents between runs."""
    return os.path.join(spool_dir, "sequences-%d.json" % i)


def load_sequences(spool_dir):
    """Merged per-agent sequence state of every processor of the last run ({} if none).

    Merged because the number of processors may have changed, which moves agents between them;
    for an agent found in several files the newest (highest sent time) wins.
    """
    merged = {}
    try:
        names = sorted(n for n in os.listdir(spool_dir) if n.startswith("sequences-") and n.endswith(".json"))
    except FileNotFoundError:
        return merged
    for name in names:
        try:
            with open(os.path.join(spool_dir, name), "rb") as fh:
                state = orjson.loads(fh.read())
            if not isinstance(state, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            log.warning("ignoring sequence state %s: %s", name, exc)
            continue
        for agent, st in state.items():
            try:
                sent = float(st["max_sent"])
            except (KeyError, TypeError, ValueError):
                continue
            if agent not in merged or sent > merged[agent]["max_sent"]:
                merged[agent] = dict(st, max_sent=sent)
    return merged


class RoutingQueue:
    """What the listener puts into: routes each datagram to its agent's processor queue.

    A full processor queue drops only that processor's part of a drained list, counted in
    `dropped` (the listener adds it to its queue_dropped counter).
    """

    def __init__(self, queues):
        self.queues = queues
        self.dropped = 0

    def put_nowait(self, batch):
        """Split a drained list by agent (crc32 of the id) and queue the parts; never raises."""
        n = len(self.queues)
        if n == 1:
            parts = [batch]
        else:
            parts = [[] for _ in self.queues]
            for item in batch:
                try:
                    agent = wire.peek_agent(item[0])
                except WireError:
                    agent = ""          # the processor counts it by reason
                parts[zlib.crc32(agent.encode()) % n].append(item)
        for q, part in zip(self.queues, parts):
            if part:
                try:
                    q.put_nowait(part)
                except queue.Full:
                    self.dropped += len(part)


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

    def _writers(self):
        threads, spools = [], []
        for wcfg in self.cfg.writers:
            opts = dict(wcfg)
            kind = opts.pop("type")
            name = opts.pop("name", kind)
            spool = writer_spool(self.cfg, wcfg, shared=self.cfg.process_mode)
            moved = spool.recover()
            if moved:
                log.info("spool %s: %d batches from the last run are delivered again", name, moved)
            spools.append(spool)
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
        """Run until a signal; returns the exit code."""
        from myason.collector.keystore import Keystore
        Keystore.load(self.cfg.keystore)        # fail at start, not in a processor
        writers, spools = self._writers()
        state = load_sequences(self.cfg.spool_dir)
        group = None
        if self.cfg.process_mode:
            from myason.collector.workers import ProcessGroup
            group = ProcessGroup(self.cfg, self.cfg.packet_queue, state)
            queues = group.queues
        else:
            queues = [queue.Queue(self.cfg.packet_queue) for _ in range(self.cfg.processors_number)]
            procs = []
            for i, q in enumerate(queues):
                dp, pipeline, detectors = build_processor(self.cfg, state)
                procs.append(ProcessorThread("processor-%d" % i, dp, q, spools, self.cfg.batch_rows,
                                             self.cfg.batch_interval, sequence_file(self.cfg.spool_dir, i),
                                             self.cfg.fsync, pipeline=pipeline, detectors=detectors,
                                             detect_clock=self.cfg.detect_clock,
                                             reload=make_reloader(self.cfg),
                                             encoders=spool_encoders(self.cfg)))
        self.queues = queues
        if state:
            log.info("sequence numbers of %d agents carried over from the last run", len(state))
        self.listener = Listener(self.cfg.bind_address, self.cfg.bind_port, RoutingQueue(queues),
                                 self.stop_listening, self.cfg.rcvbuf, self.cfg.max_datagram, self.reuseport)
        if group is not None:
            group.start()
        for t in writers + ([] if group else procs) + [self.listener]:
            t.start()
        log.info("collector listening on %s (%d processor %ss)",
                 ", ".join("%s:%d" % a for a in self.listener.addresses()), self.cfg.processors_number,
                 "process" if self.cfg.process_mode else "thread")

        def stats():
            return self.stats(group.procs if group else procs, writers)
        metrics_server = None
        if self.cfg.metrics:
            from myason.metrics import serve
            metrics_server, _ = serve(self.cfg.metrics, stats, gauges=GAUGES)
        health = self._start_health(stats, spools)
        tune_gc()
        self.ready.set()
        next_stats = time.monotonic() + self.cfg.stats_interval if self.cfg.stats_interval else None
        while not self.stop_listening.is_set():
            self.stop_listening.wait(0.5)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload(queues, health)
                if self.cfg.stats_interval and not next_stats:
                    next_stats = time.monotonic() + self.cfg.stats_interval
            if group is not None:
                group.respawn_dead(lambda: load_sequences(self.cfg.spool_dir))
            if next_stats and time.monotonic() >= next_stats:
                log.info("stats %s", stats())
                next_stats = time.monotonic() + self.cfg.stats_interval if self.cfg.stats_interval else None
        self.listener.join(5)
        if group is not None:
            group.stop(DONE)
            procs = group.procs
        else:
            for q in queues:
                q.put(DONE)
            for p in procs:
                p.join()
                if p.pipeline is not None:
                    p.pipeline.close()
        self.stop_writers.set()
        for w in writers:
            w.join()
        self.summary = self.stats(procs, writers)
        if health is not None:
            health.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        failed = [t for t in writers + procs + [self.listener] if t.error]
        return 1 if failed else 0

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
                 spool_rejected_flows=sum(p["spool_rejected_rows"] for p in snaps))
        s["writers"] = {w.writer.name: {"batches": w.batches, "rows": w.rows, "events": w.events,
                                        "errors": w.errors,
                                 "failed_batches": w.failed_batches, "latency_seconds": w.latency,
                                 "connected": int(w.connected)}
                        for w in writers}
        s["spool"] = {os.path.basename(sp.path): {"waiting": sp.depth()[0], "bytes": sp.current_bytes(),
                                                  "errors": sp.depth()[2]}
                      for sp in {id(w.spool): w.spool for w in writers}.values()}
        s["queue_depth"] = sum(_qsize(q) for q in self.queues)
        s["processors_alive"] = sum(1 for p in procs if p.is_alive())
        return s


def _qsize(q):
    try:
        return q.qsize()
    except NotImplementedError:     # multiprocessing queues where sem_getvalue is missing
        return 0
