"""Live capture lanes: one per interface, each worker a sniffer thread feeding a processor thread.

The reference engine has one worker per interface (a LiveSource); the ring engine has one per
socket of the interface's RingCapture (`workers`, joined in a PACKET_FANOUT group), each with
its own packet queue, processor and flow cache. Every processor feeds the agent's one exporter.

A lane's capture socket can be replaced while it runs (a reload changed its filter, snaplen,
promiscuous mode or the export exclusion) without touching its flow cache. The new socket is
opened before the old one is closed, so no frame falls in between; frames that reached both
sockets in that overlap are recognised by their kernel timestamp and first bytes (both sockets
get the same skb, hence the same timestamp; ring sockets give a digest of both, see myason.kernels.ring)
and counted once. The sniffer starts remembering what it reads before the new socket exists
(expect_switch), so no overlapping frame escapes. With several workers, worker i's old and new
sockets are member i of their fanout groups: same size, same join order, so the kernel's flow
hash sends a frame to the same worker in both groups.
"""
import logging
import queue
import threading
import time

from myason.agent.export import DONE

log = logging.getLogger("myason.agent")

# How long a sniffer keeps reading what its socket holds after a stop signal.
DRAIN_SECONDS = 2.0
# Bytes of a frame compared (with its timestamp) to recognise one seen on both sockets.
OVERLAP_PREFIX = 64

_NOWAIT = threading.Event()
_NOWAIT.set()   # read_batch(stop_event) does not wait when the event is set


def batch_size(batch):
    """Frames in a batch: a list of (ts, frame) tuples or a fastdecode.Chunk."""
    return len(batch) if batch.__class__ is list else batch.n


def _identities(batch):
    """(identity of each frame, their timestamps) for the overlap check, or None when unknown."""
    if batch.__class__ is list:
        return [(item[0], item[1][:OVERLAP_PREFIX]) for item in batch], [item[0] for item in batch]
    digest = getattr(batch, "digest", None)
    if digest is None:
        return None
    return digest.tolist(), batch.ts.tolist()


class SnifferThread(threading.Thread):
    """Reads a live source into its packet queue; a full queue drops the batch and counts it.

    A source with `blocking` set (a ring) is not dropped from: the thread waits for room, the
    ring fills meanwhile, and what the kernel cannot store it counts as kernel_drops.

    `stop` ends every lane (agent shutdown); `retire` ends this one (its interface was removed).
    `lock`, when given, is held while a replaced socket is closed, so that a concurrent reader
    of its counters (the metrics endpoint) never sees it half closed.
    """

    def __init__(self, source, outbox, stop, retire=None, lock=None, name=None, consumer=None):
        super().__init__(name=name or "sniffer-%s" % source.ifname, daemon=True)
        self.source, self.outbox, self.stop = source, outbox, stop
        self.consumer = consumer      # the thread draining outbox (a blocking put gives up if it died)
        self.retire = retire if retire is not None else threading.Event()
        self.lock = lock if lock is not None else threading.Lock()
        self.retired_sources = []     # sockets replaced by reloads (closed; their totals count)
        self.dropped_packets = 0
        self.dropped_batches = 0
        self.overlap_duplicates = 0
        self.error = None
        self._next = None             # an open source waiting to replace self.source
        self._seen = None             # {identity: ts} read from the old socket since expect_switch
        self._overlap = None          # the same, checked against the new socket's first frames
        self._overlap_until = 0.0

    def expect_switch(self):
        """Start remembering frames read: call before opening the socket that will replace this one."""
        self._seen = {}
        self.source.want_digests = True

    def cancel_switch(self):
        """The replacement was not opened after all (a rejected reload)."""
        self._seen = None
        self.source.want_digests = False

    def replace_source(self, source):
        """Switch to `source` (opened after expect_switch); the thread closes the old one."""
        source.want_digests = True
        self._next = source

    def sources(self):
        """Every source this thread has read or will read (for counters and closing)."""
        pending = [self._next] if self._next is not None else []
        return self.retired_sources + [self.source] + pending

    def run(self):
        try:
            while not (self.stop.is_set() or self.retire.is_set()):
                if self._next is not None:
                    self._switch()
                batch = self.source.read_batch(self.stop)
                if not batch:
                    continue
                if self._seen is not None:
                    self._remember(batch)
                elif self._overlap is not None:
                    batch = self._dedupe(batch)
                    if not batch:
                        continue
                if getattr(self.source, "blocking", False):
                    self._put(batch)
                    continue
                try:
                    self.outbox.put_nowait(batch)
                except queue.Full:
                    self.dropped_batches += 1
                    self.dropped_packets += batch_size(batch)
            if self._next is not None:
                self._switch()        # the old socket is drained below with the new one's frames
            self._drain()
            if self.retire.is_set() and not self.stop.is_set():
                # The interface left the configuration: its socket goes now (its totals stay),
                # rather than filling up and counting drops until the agent stops.
                with self.lock:
                    getattr(self.source, "release", self.source.close)()
        except BaseException as exc:  # noqa: B902
            self.error = exc
            log.exception("%s failed", self.name)
        finally:
            self.outbox.put(DONE)

    def _put(self, batch):
        """Queue a batch, waiting for room as long as the processor runs."""
        while True:
            try:
                self.outbox.put(batch, timeout=0.5)
                return
            except queue.Full:
                if self.consumer is not None and not self.consumer.is_alive():
                    self.dropped_batches += 1
                    self.dropped_packets += batch_size(batch)
                    return

    def _drain(self):
        # Frames the kernel already holds at stop were seen on the wire: meter them too, with
        # blocking puts (the processor is still draining). A time bound keeps a busy link from
        # holding shutdown back: frames keep arriving there, and the socket never runs empty.
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            batch = self.source.read_batch(_NOWAIT)
            if not batch:
                return
            if self._overlap is not None:
                batch = self._dedupe(batch)
                if not batch:
                    continue
            self.outbox.put(batch)

    def _remember(self, batch):
        seen = self._seen
        if seen is not None:
            ids = _identities(batch)
            if ids:
                seen.update(zip(*ids))

    def _switch(self):
        new, old = self._next, self.source
        deadline = time.monotonic() + DRAIN_SECONDS
        # Everything the old socket holds now was accepted under the old setup: meter it.
        while time.monotonic() < deadline:
            batch = old.read_batch(_NOWAIT)
            if not batch:
                break
            self._remember(batch)
            self.outbox.put(batch)
        with self.lock:
            # A ring socket of a fanout group stays in its group, muted, until every worker
            # has switched (RingSource.release); any other socket is closed now.
            getattr(old, "release", old.close)()
            self.retired_sources.append(old)
            self.source, self._next = new, None
        seen, self._seen = self._seen or {}, None
        old.want_digests = False
        if seen:
            self._overlap, self._overlap_until = seen, max(seen.values()) + 1.0
        else:
            new.want_digests = False
        log.info("%s: capture socket reopened (%s)", self.name, new.filter_expression or "no filter")

    def _dedupe(self, batch):
        seen = self._overlap
        ids = _identities(batch)
        if ids is None:         # pragma: no cover - a ring source asked for digests gives them
            self._overlap = None
            return batch
        keep = []
        for j, k in enumerate(ids[0]):
            if k in seen:
                del seen[k]
                self.overlap_duplicates += 1
            else:
                keep.append(j)
        if not seen or (ids[1] and max(ids[1]) > self._overlap_until):
            self._overlap = None
            self.source.want_digests = False
        if len(keep) == len(ids[0]):
            return batch
        if batch.__class__ is list:
            return [batch[j] for j in keep]
        return batch.select(keep) if keep else []


def members(source):
    """The sockets of a source: a RingCapture's members, or the source itself."""
    return list(getattr(source, "members", None) or [source])


class Worker:
    """One capture socket of a lane with its packet queue, processor and their two threads."""

    __slots__ = ("source", "proc", "sniffer", "thread")

    def __init__(self, source, proc, sniffer, thread):
        self.source, self.proc, self.sniffer, self.thread = source, proc, sniffer, thread


class Lane:
    """One live interface: its source (a LiveSource, or a RingCapture of `workers` ring sockets)
    and a Worker per socket."""

    def __init__(self, iface, source, workers):
        self.iface, self.source = iface, source
        self.workers = list(workers)

    @property
    def name(self):
        """The interface name."""
        return self.iface.name

    @property
    def sniffers(self):
        """Every worker's sniffer thread."""
        return [w.sniffer for w in self.workers]

    @property
    def processors(self):
        """Every worker's processor thread."""
        return [w.thread for w in self.workers]

    # The first worker's, for a lane of one (the reference engine's).
    sniffer = property(lambda self: self.workers[0].sniffer)
    thread = property(lambda self: self.workers[0].thread)
    proc = property(lambda self: self.workers[0].proc)

    def threads(self):
        """Sniffers then processors."""
        return self.sniffers + self.processors

    def retire(self):
        """Stop capturing; the processors flush this lane's flows and tell the exporter they are done."""
        for s in self.sniffers:
            s.retire.set()

    def expect_switch(self):
        """Every sniffer starts remembering what it reads (a new source is about to be opened)."""
        for s in self.sniffers:
            s.expect_switch()

    def cancel_switch(self):
        """The new source was not opened after all."""
        for s in self.sniffers:
            s.cancel_switch()

    def can_replace(self, source):
        """True when `source` can take over in place: same device, link type and number of sockets."""
        cur = self.source
        return ((source.ifindex, source.linktype, len(members(source)))
                == (cur.ifindex, cur.linktype, len(members(cur))))

    def replace_source(self, source):
        """Hand each sniffer its socket of `source` (opened after expect_switch)."""
        for w, m in zip(self.workers, members(source)):
            w.sniffer.replace_source(m)
            w.source = m
        self.source = source
