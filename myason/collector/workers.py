"""Processor processes: the processor stage run in child processes (`processors_mode: process`).

Why processes: decrypting, validating, enriching and detecting are pure-Python CPU work, and
threads share one GIL with the listener and the writers; on the 2-core reference machine two
processor threads are slower than one, two processes almost twice as fast (bench/processors.py,
docs/performance.md). Each child owns what a processor thread owns (its agents' sequence state
and detector state, keystore, enrichment) and writes its batches straight into the writers'
spools, which are directories shared by rename (the filer protocol), so rows never travel back
to the parent. The parent sends lists of received datagrams through a bounded queue and gets
counters back every batch interval, plus the children's log records.

Signals: children ignore SIGINT/SIGTERM/SIGHUP (systemd signals the whole cgroup); the parent
drives shutdown (DONE after the last datagram) and reload ((RELOAD, config) in order with the data). A
child dies with its parent (PR_SET_PDEATHSIG), like threads would.
"""
import ctypes
import dataclasses
import logging
import logging.handlers
import multiprocessing as mp
import signal
import threading
import time

from myason.collector import journal
from myason.collector.intake import ByteBudget
from myason.collector.processor import ProcessorThread, build_processor, spool_encoders
from myason.collector.spool import writer_spool

log = logging.getLogger("myason.collector")

_PR_SET_PDEATHSIG = 1
# Seconds the parent waits for a child to drain its queue and exit at shutdown.
JOIN_TIMEOUT = 120.0


def tune_gc():
    """Fewer, cheaper garbage collections for a process that makes millions of short-lived lists.

    Rows are lists (tracked by the cycle collector) that die by reference counting; with the
    default threshold (700) the collector scans every batch under construction over and over,
    which cost 15-60 % on the decode, enrich and spool steps (docs/performance.md). Objects
    alive after start-up are frozen out of every scan.
    """
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 20, 20)


def _die_with_parent():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):       # not Linux: the child outlives a killed parent
        pass


class _PipeHandler(logging.handlers.QueueHandler):
    """Sends log records to the parent over this child's own pipe."""

    def __init__(self, conn, lock):
        super().__init__(None)
        # Not `self.lock`: that is logging.Handler's own lock, held around emit().
        self.conn, self.send_lock = conn, lock

    def enqueue(self, record):
        with self.send_lock:
            self.conn.send(("log", record))


def child_main(index, cfg, inbox, conn, log_level, state, stopping, budget):
    """Entry point of processor process `index` (spawned): run one processor until DONE.

    `conn` is this child's own pipe to the parent (counters and log records): a child that is
    killed while writing to it can only break its own pipe, never another child's.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    lock = threading.Lock()
    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(conn, lock)]
    root.setLevel(log_level)
    name = "processor-%d" % index
    try:
        dp, pipeline, detectors = build_processor(cfg, state)

        def report(snapshot):
            with lock:
                conn.send(("stats", snapshot))

        worker = ProcessorThread(name, dp, inbox, [writer_spool(cfg, w, True) for w in cfg.writers],
                                 cfg.batch_rows, cfg.batch_interval, journal.sequence_file(cfg.spool_dir, index),
                                 cfg.fsync, pipeline=pipeline, detectors=detectors, detect_clock=cfg.detect_clock,
                                 reload=make_reloader(cfg), report=report, encoders=spool_encoders(cfg),
                                 policy=cfg.spool_policy, stopping=stopping, budget=budget)
        tune_gc()
        worker.run()            # in this process's main thread
        if pipeline is not None:
            pipeline.close()
        final = worker.snapshot()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which sets the exit code
        log.exception("%s failed", name)
        final = {"error": repr(exc)}
    with lock:
        conn.send(("stats", dict(final, final=True)))
        conn.close()


# Keys a SIGHUP applies to running processors; any other change needs a restart.
LIVE_KEYS = ("keystore", "token_ttl", "clock_skew", "enrich", "detect", "detect_enabled", "detect_clock",
             "node_name")


def make_reloader(cfg):
    """The RELOAD action of one processor: apply a new config's live keys, or keep the old one.

    Everything new is built first (keystore, enrichment, detectors), so a failure changes
    nothing. Replaced detectors are flushed: their open windows still become events.
    """
    state = {"cfg": cfg}

    def reload(worker, new):
        from myason.collector.keystore import Keystore
        from myason.detect import build_detectors
        from myason.enrich import build_pipeline
        old = state["cfg"]
        keystore = Keystore.load(new.keystore)
        pipeline = build_pipeline(new.enrich) if new.enrich != old.enrich else None
        new_detect = (new.detect_config(), new.detect_enabled) != (old.detect_config(), old.detect_enabled)
        detectors = build_detectors(new.detect_config()) if new_detect and new.detect_enabled else None
        worker.proc.keystore = keystore
        worker.proc.limits = dataclasses.replace(worker.proc.limits, ttl=new.token_ttl, clock_skew=new.clock_skew)
        if pipeline is not None:
            if worker.pipeline is not None:
                worker.pipeline.close()
            worker.pipeline = pipeline
        if new_detect:
            worker.replace_detectors(detectors)
        worker.detect_clock = new.detect_clock
        state["cfg"] = new
        log.info("%s: reloaded (keystore: %d agents)", worker.name, len(keystore.agents))
    return reload


# In a processor's snapshot: what describes its state now rather than what it counted so far.
_STATE_KEYS = ("blocked", "stalled", "uncommitted")


def add_snapshots(base, new):
    """Counters of two processor lifetimes in a row (a dead child's and its replacement's)."""
    out = {k: v for k, v in new.items() if k in _STATE_KEYS}
    for k in set(base) | set(new):
        if k in _STATE_KEYS or k in ("rejects", "agents"):
            continue
        a, b = base.get(k, 0), new.get(k, 0)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            out[k] = a + b
    rejects = dict(base.get("rejects", {}))
    for k, v in new.get("rejects", {}).items():
        rejects[k] = rejects.get(k, 0) + v
    agents = {a: dict(st) for a, st in base.get("agents", {}).items()}
    for agent, st in new.get("agents", {}).items():
        cur = agents.setdefault(agent, {})
        for k, v in st.items():
            if k in ("last_seen", "last_seq"):
                cur[k] = v if k == "last_seq" else max(v, cur.get(k, v))
            else:
                cur[k] = cur.get(k, 0) + v
    out.update(rejects=rejects, agents=agents)
    return out


class ProcessorProcess:
    """The parent's handle on one processor process: looks like a ProcessorThread to the app."""

    def __init__(self, index, cfg, inbox, state, ctx, stopping, budget):
        self.index, self.cfg, self.inbox = index, cfg, inbox
        self.name = "processor-%d" % index
        self.pipeline = None            # lives in the child
        self.error = None
        self.final = False
        self._snap = {"rows": 0, "events": 0, "batches": 0, "rejects": {}, "agents": {}}
        # Counters of the children this one replaced: a new child counts from zero again.
        self.base = None
        self.conn, child_conn = ctx.Pipe(duplex=False)
        level = logging.getLogger("myason").getEffectiveLevel()
        self.process = ctx.Process(target=child_main, name=self.name, daemon=True,
                                   args=(index, cfg, inbox, child_conn, level, state, stopping, budget))
        self._child_conn = child_conn

    def start(self):
        """Spawn the child."""
        self.process.start()
        self._child_conn.close()        # the child's end lives in the child now

    def is_alive(self):
        """True while the child runs."""
        return self.process.is_alive()

    def receive(self):
        """Handle one message from the child; False when its pipe is closed."""
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            return False
        if kind == "log":
            logging.getLogger(payload.name).handle(payload)
        elif kind == "stats":
            if payload.get("error"):
                self.error = payload["error"]
            if payload.get("final"):
                self.final = True
            if "rows" in payload:
                self._snap = payload
        return True

    def snapshot(self):
        """The child's latest counters, added to those of the children it replaced."""
        return self._snap if self.base is None else add_snapshots(self.base, self._snap)

    def join(self, timeout=JOIN_TIMEOUT):
        """Wait for the child to drain and exit; a child that does not is killed (error)."""
        self.process.join(timeout)
        if self.process.is_alive():
            log.error("%s did not stop within %.0f s: killed", self.name, timeout)
            self.process.kill()
            self.process.join(5)
            self.error = self.error or "did not stop"
        elif self.process.exitcode != 0 and not self.error:
            self.error = "exit code %s" % self.process.exitcode


class ProcessGroup:
    """Starts the processor processes and relays their counters and log records to the parent."""

    def __init__(self, cfg, queue_size, state, spools):
        self.ctx = mp.get_context("spawn")
        self.cfg = cfg
        self.queue_size = queue_size
        self.spools = spools
        # Set at shutdown: the children then drain their queues whatever the spools' cap.
        self.stopping = self.ctx.Event()
        self.queues = [self.ctx.Queue(queue_size) for _ in range(cfg.processors_number)]
        # Bytes queued per child, in shared memory: the parent's listener takes, the child gives.
        self.budgets = [ByteBudget(cfg.queue_max_bytes, self.ctx) for _ in self.queues]
        self.procs = [ProcessorProcess(i, cfg, q, state, self.ctx, self.stopping, self.budgets[i])
                      for i, q in enumerate(self.queues)]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._relay = threading.Thread(target=self._relay_loop, name="processor-relay", daemon=True)

    def start(self):
        """Spawn every child and the relay thread."""
        for p in self.procs:
            p.start()
        self._relay.start()

    def respawn_dead(self, state_loader):
        """Start a new child for each one that died unexpectedly; returns how many.

        The new child gets a new queue: the dead one may have died holding the old queue's
        lock. What waited in the old queue is lost, like a SIGKILL of a processor thread, and
        shows as the agents' sequence gaps.
        """
        n = 0
        for i, p in enumerate(self.procs):
            if p.is_alive() or p.final or self._stop.is_set():
                continue
            log.error("%s died (exit code %s): starting it again", p.name, p.process.exitcode)
            # What it committed goes into every spool; what it only staged goes nowhere.
            journal.recover(self.cfg.spool_dir, self.spools, index=i)
            for spool in self.spools:
                spool.discard_staged_by(p.process.pid)
            old = self.queues[i]
            self.queues[i] = self.ctx.Queue(self.queue_size)    # the listener routes by this list
            old.cancel_join_thread()
            old.close()
            self.budgets[i].reset()         # what waited in the old queue is gone with it
            new = ProcessorProcess(i, self.cfg, self.queues[i], state_loader(), self.ctx, self.stopping,
                                   self.budgets[i])
            new.base = p.snapshot()         # counters continue, totals never go backwards
            with self._lock:
                self.procs[i] = new
            new.start()
            n += 1
        return n

    def _relay_loop(self):
        from multiprocessing.connection import wait
        while not self._stop.is_set():
            with self._lock:
                live = {p.conn: p for p in self.procs if not p.conn.closed}
            if not live:
                time.sleep(0.2)
                continue
            for conn in wait(list(live), timeout=0.2):
                if not live[conn].receive():
                    conn.close()

    def stop(self, done):
        """Send `done` to every child, wait for them to drain, stop the relay."""
        self.stopping.set()
        for q, p in zip(self.queues, self.procs):
            if p.is_alive():
                q.put(done)
        for p in self.procs:
            p.join()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(not p.final and not p.conn.closed for p in self.procs):
            time.sleep(0.05)        # the relay reads the children's last messages
        self._stop.set()
        self._relay.join(5)
        for p in self.procs:
            if not p.final and not p.error:
                p.error = "exited without a final report"
        for q in self.queues:
            q.cancel_join_thread()      # a dead child leaves data nobody will read
            q.close()
