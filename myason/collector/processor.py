"""The processor stage: datagrams in, batches accepted into every writer's spool at once.

A processor takes lists of received datagrams from its queue, decrypts and validates them
(DatagramProcessor), enriches the rows, feeds its detectors, and every `batch_rows` rows or
`batch_interval` seconds commits a batch of rows and IDEA events through its BatchJournal: into
all the spools or none, together with its agents' sequence state (myason/collector/journal.py).
The same class runs as a thread of the collector or as the main thread of a processor process
(myason/collector/workers.py).

Spool policy (when a spool holds spool_max_bytes or more): `block` stops reading the queue, so
the queue fills, the listener waits, and the kernel's receive buffer takes the rest (its drops
are counted as kernel drops); `reject` drops whole received lists before decoding them, counted
as `spool_dropped`. A batch whose rows were accepted is always committed, so the cap may be
passed by one batch per processor, and at shutdown the queues are drained whatever the cap.
A disk error while committing (ENOSPC, EIO) holds the batch and the intake and retries with
backoff: nothing accepted is lost, and the stall is counted and logged.
"""
import logging
import queue
import threading
import time

from myason.collector.intake import nbytes
from myason.collector.journal import BatchJournal
from myason.collector.spool import batch_name
from myason.logs import RateLimiter
from myason.store.base import encode_batch, writer_class

log = logging.getLogger("myason.collector")

DONE = None
# SIGHUP puts (RELOAD, new config) into every processor's queue: the new keystore and live
# settings apply in order with the datagrams already queued.
RELOAD = "reload"
AGENT_COUNTERS = ("datagrams", "flows", "gaps", "replays", "restarts", "last_seen")
# Retrying a commit that failed on a disk error: first wait, longest wait (seconds).
COMMIT_BACKOFF = (0.1, 5.0)
# How long a shutdown keeps retrying a commit on a failing disk before giving the batch up
# (its datagrams then count as gaps after the restart, since the state was not saved either).
STOP_COMMIT_PATIENCE = 30.0


class ProcessorThread(threading.Thread):
    """Runs a DatagramProcessor over its queue and commits rows and events in batches."""

    def __init__(self, name, proc, inbox, spools, batch_rows, batch_interval, state_path=None, fsync=False,
                 pipeline=None, detectors=None, detect_clock="wall", reload=None, report=None, encoders=None,
                 policy="block", stopping=None, budget=None):
        super().__init__(name=name, daemon=True)
        self.proc, self.inbox, self.spools = proc, inbox, list(spools)
        self.journal = BatchJournal(self.spools, state_path, fsync)
        # reload(worker): what RELOAD does; report(snapshot): called every batch interval and
        # at the end (processor processes send their counters to the parent this way).
        self.reload, self.report = reload, report
        self.policy = policy
        # The bytes queued for this processor (intake.ByteBudget): given back as lists are taken.
        self.budget = budget
        # Set when the collector stops: the queue is then drained whatever the spools' cap.
        self.stopping = stopping if stopping is not None else threading.Event()
        self._carried = []          # events of replaced detectors, committed with the next batch
        # Per spool: the writer's spool_encoder (None = the JSON batch every writer reads).
        self.encoders = list(encoders) if encoders is not None else [None] * len(self.spools)
        # Enrichment makes the batches format v2 (enriched rows + events); without it, v1.
        self.pipeline, self.detectors, self.detect_clock = pipeline, detectors, detect_clock
        self.batch_rows, self.batch_interval = batch_rows, batch_interval
        self.rows = 0
        self.events = 0
        self.batches = 0
        self.spool_dropped = 0      # datagrams dropped undecoded under `reject` (full spool)
        self.blocked_seconds = 0.0  # time the intake was held under `block` (full spool)
        self.blocked = False
        self.commit_errors = 0      # commits that failed on a disk error (then retried)
        self.stalled = False        # a commit is failing right now
        self._uncommitted = 0       # datagrams handled since the last commit
        self._committed = proc.snapshot()   # the sequence state as last saved (restored at start)
        self._limiter = RateLimiter(10.0)
        self.error = None

    def run(self):
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the app sees .error and stops non-zero
            self.error = exc
            log.exception("%s failed", self.name)

    def _loop(self):
        pending = []
        deadline = time.monotonic() + self.batch_interval
        while True:
            items = self._intake(max(0.0, deadline - time.monotonic()))
            if items is DONE:
                break
            if isinstance(items, tuple):
                if items[0] == RELOAD and self.reload is not None:
                    self._reload(items[1])
                items = []
            if items:
                pending.extend(self._handle(items))
            due = time.monotonic() >= deadline
            events = self._poll() if due else []
            if self._carried and due:
                events, self._carried = self._carried + events, []
            if len(pending) >= self.batch_rows or ((pending or events) and due):
                self._commit(pending, events)
                pending = []
            elif due and self._uncommitted:
                self._commit([], [])        # datagrams without rows still move the sequence state
            if due:
                deadline = time.monotonic() + self.batch_interval
                if self.report is not None:
                    self.report(self.snapshot())
        # Shutdown closes every detector window: what was seen so far is still reported.
        events = self.detectors.flush(self._now()) if self.detectors is not None else []
        events = self._carried + events
        self._commit(pending, events)
        if self.report is not None:
            self.report(self.snapshot())

    def _intake(self, timeout):
        """The next item of the queue (list, DONE or a RELOAD tuple), or [] when none is due."""
        if self.policy == "block":
            full = self._full()
            if full is not None:
                # Hold the intake: the queue fills, then the listener waits, then the kernel buffers.
                t0 = time.monotonic()
                self.blocked = True
                if self._limiter.allow("blocked"):
                    log.warning("%s: spool %s is full (%d bytes): holding the intake until its writer "
                                "catches up", self.name, full.path, full.current_bytes())
                full.wait_room(min(timeout, 0.2))
                self.blocked_seconds += time.monotonic() - t0
                return []
            self.blocked = False
        try:
            items = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return []
        if self.budget is not None and isinstance(items, list):
            self.budget.give(nbytes(items))
        if self.policy == "reject" and isinstance(items, list):
            full = self._full()
            if full is not None:
                # Lost for every store alike; the agents' sequence numbers show them as gaps.
                self.spool_dropped += len(items)
                if self._limiter.allow("rejected"):
                    log.error("%s: spool %s is full: dropping received datagrams (%d so far)",
                              self.name, full.path, self.spool_dropped)
                return []
        return items

    def _full(self):
        """The first spool at its cap, or None (always None once the collector is stopping)."""
        if self.stopping.is_set():
            return None
        return next((s for s in self.spools if s.full()), None)

    def _handle(self, items):
        fresh = not self._uncommitted
        # Counted before decoding, so /status never sees these datagrams nowhere.
        self._uncommitted += len(items)
        if fresh and self.report is not None:
            self.report(self.snapshot())    # a child tells its parent at once that data is in hand
        handle = self.proc.handle
        enrich = self.pipeline.enrich if self.pipeline is not None else None
        feed = self.detectors.feed_rows if self.detectors is not None else None
        out = []
        for data, addr, received in items:
            rows = handle(data, addr, received)
            if rows:
                if enrich is not None:
                    enrich(rows)
                if feed is not None:
                    feed(rows)
                out.extend(rows)
        if self.proc.new_runs:
            self._save_new_runs()
        return out

    def _save_new_runs(self):
        """Save that new agent runs began, before any of their rows are accepted.

        Without this, a crash before the first batch of a new agent (or of an agent's restart)
        would leave no trace of that run: after the restart its next datagram would open a
        fresh window and the lost ones would not be counted. Saved as "nothing accepted below
        the first sequence number seen" (top = first - 1), everything else as last committed.
        """
        runs, self.proc.new_runs = self.proc.new_runs, []
        state = dict(self._committed)
        for agent, seq, sent in runs:
            state[agent] = {"top": seq - 1, "max_sent": sent}
        self._retrying(lambda: self.journal.commit(None, [], state), "a new agent's sequence state")
        self._committed = state

    def _encode(self, encoder, rows, events, columns):
        if encoder is not None:
            try:
                return encoder(rows, events, columns=columns)
            except Exception as exc:  # noqa: BLE001 - the writer then judges the rows itself
                log.warning("%s: cannot prepare a batch for its writer (%s): spooled as JSON", self.name, exc)
        return encode_batch(rows, events) if self.pipeline is not None else encode_batch(rows)

    def _commit(self, rows, events):
        """Accept rows and events into every spool with the sequence state; retries disk errors."""
        events = list(events)
        name, datas = None, []
        if rows or events:
            encoded = {}            # encoder -> bytes: each format made once per batch
            # Transposed once for every encoder (each would otherwise do it: ~0.5 µs a flow).
            columns = list(zip(*rows)) if rows and any(self.encoders) else None
            for encoder in self.encoders:
                if encoder not in encoded:
                    encoded[encoder] = self._encode(encoder, rows, events, columns)
                datas.append(encoded[encoder])
            name = batch_name()
        state = self.proc.snapshot()
        if not self._retrying(lambda: self.journal.commit(name, datas, state),
                              "%d flows and %d events" % (len(rows), len(events))):
            return
        self._committed = state
        self.proc.new_runs = []         # the state just saved has them
        self._uncommitted = 0
        if name is not None:
            self.rows += len(rows)
            self.events += len(events)
            self.batches += 1
        if self.report is not None:
            self.report(self.snapshot())

    def _retrying(self, commit, what):
        """Run a journal commit until it succeeds; False if a shutdown gave up on a failing disk."""
        delay, first_error = COMMIT_BACKOFF[0], None
        while True:
            try:
                commit()
                break
            except OSError as exc:
                self.commit_errors += 1
                self.stalled = True
                now = time.monotonic()
                first_error = first_error or now
                if self.stopping.is_set() and now - first_error > STOP_COMMIT_PATIENCE:
                    log.error("%s: stopping without accepting %s: %s (the agents' sequence numbers "
                              "show them as gaps after the restart)", self.name, what, exc)
                    return False
                if self._limiter.allow("commit"):
                    log.error("%s: cannot write to the spools (%s): holding %s and the intake, retrying "
                              "(%d failures so far)", self.name, exc, what, self.commit_errors)
                if self.report is not None:
                    self.report(self.snapshot())    # a child's parent learns of the stall now, not after it
                time.sleep(delay)
                delay = min(delay * 2, COMMIT_BACKOFF[1])
        if first_error is not None:
            log.warning("%s: spools writable again after %.1f s", self.name, time.monotonic() - first_error)
        self.stalled = False
        return True

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
                "spool_dropped": self.spool_dropped, "blocked_seconds": round(self.blocked_seconds, 3),
                "blocked": int(self.blocked), "commit_errors": self.commit_errors, "stalled": int(self.stalled),
                "uncommitted": self._uncommitted,
                "rejects": dict(self.proc.rejects), "agents": agents}

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


def build_processor(cfg, state):
    """(DatagramProcessor, enrichment pipeline, detectors or None) for one processor."""
    from myason.collector.keystore import Keystore
    from myason.collector.datagram import DatagramProcessor
    from myason.collector.validate import Limits
    from myason.detect import build_detectors
    from myason.enrich import build_pipeline
    dp = DatagramProcessor(Keystore.load(cfg.keystore), ttl=cfg.token_ttl, window=cfg.seq_window,
                           limits=Limits(clock_skew=cfg.clock_skew))
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
