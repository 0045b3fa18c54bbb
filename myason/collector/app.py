"""Collector wiring: listener -> processors -> one spool per writer -> writer threads.

The listener only receives; it hands each drained list to the processor that owns the sending
agent (by agent id), so one agent's replay window and gap count live in one place. Processors
decrypt, validate and batch rows, then store each batch durably in every writer's spool (the
filer protocol). Writers commit batches exactly once. Shutdown order: stop the listener, let
the processors drain their queues into the spools, let the writers finish, exit 0.
"""
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
from myason.collector.spool import Spool, SpoolFull
from myason.errors import WireError
from myason.store.base import encode_batch, writer_class

log = logging.getLogger("myason.collector")

DONE = None
# Metrics that go up and down; everything else in stats() is a counter.
GAUGES = ("writers_latency_seconds", "writers_connected", "spool_waiting", "spool_bytes", "spool_errors",
          "queue_depth")


class ProcessorThread(threading.Thread):
    """Runs a DatagramProcessor over its queue and spools rows in batches."""

    def __init__(self, name, proc, inbox, spools, batch_rows, batch_interval, state_path=None, fsync=False,
                 pipeline=None, detectors=None, detect_clock="wall"):
        super().__init__(name=name, daemon=True)
        self.proc, self.inbox, self.spools = proc, inbox, spools
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
                items = ()
            if items is DONE:
                break
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
            if len(pending) >= self.batch_rows or ((pending or events) and due):
                self._spool(pending, events)
                pending = []
            if due:
                deadline = time.monotonic() + self.batch_interval
        # Shutdown closes every detector window: what was seen so far is still reported.
        events = self.detectors.flush(self._now()) if self.detectors is not None else []
        if pending or events:
            self._spool(pending, events)
        self._save_state()

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
        data = encode_batch(rows, list(events)) if self.pipeline is not None else encode_batch(rows)
        self.events += len(events)
        for spool in self.spools:
            try:
                spool.put(data)
            except SpoolFull:
                self.spool_rejected_rows += len(rows)
                log.error("spool %s full: %d flows not stored for this writer", spool.path, len(rows))
        self.rows += len(rows)
        self.batches += 1
        self._save_state()


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

    def __init__(self, cfg, reuseport=False):
        self.cfg = cfg
        self.reuseport = reuseport
        self.stop_listening = threading.Event()
        self.stop_writers = threading.Event()
        self.summary = {}
        self.listener = None
        self.ready = threading.Event()
        self.queues = []

    def install_signals(self):
        """SIGTERM/SIGINT: stop receiving; everything received is still stored."""
        def handler(signum, _frame):
            log.info("signal %d: stopping", signum)
            self.stop_listening.set()
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _writers(self):
        threads, spools = [], []
        for wcfg in self.cfg.writers:
            opts = dict(wcfg)
            kind = opts.pop("type")
            name = opts.pop("name", kind)
            spool = Spool(os.path.join(self.cfg.spool_dir, name), self.cfg.spool_max_bytes,
                          self.cfg.spool_policy, fsync=self.cfg.fsync)
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
        from myason.collector.process import DatagramProcessor
        from myason.detect import build_detectors
        from myason.enrich import build_pipeline
        keystore = Keystore.load(self.cfg.keystore)
        writers, spools = self._writers()
        queues = self.queues = [queue.Queue(self.cfg.packet_queue) for _ in range(self.cfg.processors_number)]
        procs = []
        state = load_sequences(self.cfg.spool_dir)
        for i, q in enumerate(queues):
            dp = DatagramProcessor(keystore, ttl=self.cfg.token_ttl, window=self.cfg.seq_window)
            if state:
                dp.restore(state)
            # Each processor has its own detector state: an agent always goes to the same one.
            pipeline = build_pipeline(self.cfg.enrich)
            detectors = build_detectors(self.cfg.detect_config()) if self.cfg.detect_enabled else None
            procs.append(ProcessorThread("processor-%d" % i, dp, q, spools, self.cfg.batch_rows,
                                         self.cfg.batch_interval, sequence_file(self.cfg.spool_dir, i),
                                         self.cfg.fsync, pipeline=pipeline, detectors=detectors,
                                         detect_clock=self.cfg.detect_clock))
        if state:
            log.info("sequence numbers of %d agents carried over from the last run", len(state))
        self.listener = Listener(self.cfg.bind_address, self.cfg.bind_port, RoutingQueue(queues),
                                 self.stop_listening, self.cfg.rcvbuf, self.cfg.max_datagram, self.reuseport)
        for t in writers + procs + [self.listener]:
            t.start()
        log.info("collector listening on %s", ", ".join("%s:%d" % a for a in self.listener.addresses()))
        metrics_server = None
        if self.cfg.metrics:
            from myason.metrics import serve
            metrics_server, _ = serve(self.cfg.metrics, lambda: self.stats(procs, writers),
                                      gauges=GAUGES)
        self.ready.set()
        next_stats = time.monotonic() + self.cfg.stats_interval if self.cfg.stats_interval else None
        while not self.stop_listening.is_set():
            self.stop_listening.wait(0.5)
            if next_stats and time.monotonic() >= next_stats:
                log.info("stats %s", self.stats(procs, writers))
                next_stats += self.cfg.stats_interval
        self.listener.join(5)
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
        if metrics_server is not None:
            metrics_server.shutdown()
        failed = [t for t in writers + procs + [self.listener] if t.error]
        return 1 if failed else 0

    def stats(self, procs, writers):
        """Every counter: listener, rejects by reason, per-agent gaps, spools, writers."""
        s = dict(self.listener.stats())
        s["queue_dropped"] += self.listener.outbox.dropped
        rejects, agents = {}, {}
        for p in procs:
            for k, v in p.proc.rejects.items():
                rejects[k] = rejects.get(k, 0) + v
            for agent, st in p.proc.agents.items():
                agents[agent] = {k: getattr(st, k) for k in ("datagrams", "flows", "gaps", "replays", "restarts")}
        s.update(flows_spooled=sum(p.rows for p in procs), events_spooled=sum(p.events for p in procs),
                 rejects=rejects, agents=agents,
                 spool_rejected_flows=sum(p.spool_rejected_rows for p in procs))
        s["writers"] = {w.writer.name: {"batches": w.batches, "rows": w.rows, "events": w.events,
                                        "errors": w.errors,
                                 "failed_batches": w.failed_batches, "latency_seconds": w.latency,
                                 "connected": int(w.connected)}
                        for w in writers}
        s["spool"] = {os.path.basename(sp.path): {"waiting": sp.depth()[0], "bytes": sp.bytes,
                                                  "errors": sp.depth()[2]}
                      for sp in {id(w.spool): w.spool for w in writers}.values()}
        s["queue_depth"] = sum(q.qsize() for q in self.queues)
        return s
