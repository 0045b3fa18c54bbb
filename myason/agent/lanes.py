"""Live capture lanes: one per interface, a sniffer thread feeding a processor thread.

A lane's capture socket can be replaced while it runs (a reload changed its filter, snaplen,
promiscuous mode or the export exclusion) without touching its flow cache. The new socket is
opened before the old one is closed, so no frame falls in between; frames that reached both
sockets in that overlap are recognised by their kernel timestamp and first bytes (both sockets
get the same skb, hence the same timestamp) and counted once. The sniffer starts remembering
what it reads before the new socket exists (expect_switch), so no overlapping frame escapes.
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


class SnifferThread(threading.Thread):
    """Reads a live source into its packet queue; a full queue drops the batch and counts it.

    `stop` ends every lane (agent shutdown); `retire` ends this one (its interface was removed).
    `lock`, when given, is held while a replaced socket is closed, so that a concurrent reader
    of its counters (the metrics endpoint) never sees it half closed.
    """

    def __init__(self, source, outbox, stop, retire=None, lock=None):
        super().__init__(name="sniffer-%s" % source.ifname, daemon=True)
        self.source, self.outbox, self.stop = source, outbox, stop
        self.retire = retire if retire is not None else threading.Event()
        self.lock = lock if lock is not None else threading.Lock()
        self.retired_sources = []     # sockets replaced by reloads (closed; their totals count)
        self.dropped_packets = 0
        self.dropped_batches = 0
        self.overlap_duplicates = 0
        self.error = None
        self._next = None             # an open source waiting to replace self.source
        self._seen = None             # {(ts, prefix)} read from the old socket since expect_switch
        self._overlap = None          # the same, checked against the new socket's first frames
        self._overlap_until = 0.0

    def expect_switch(self):
        """Start remembering frames read: call before opening the socket that will replace this one."""
        self._seen = set()

    def cancel_switch(self):
        """The replacement was not opened after all (a rejected reload)."""
        self._seen = None

    def replace_source(self, source):
        """Switch to `source` (opened after expect_switch); the thread closes the old one."""
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
                try:
                    self.outbox.put_nowait(batch)
                except queue.Full:
                    self.dropped_batches += 1
                    self.dropped_packets += len(batch)
            if self._next is not None:
                self._switch()        # the old socket is drained below with the new one's frames
            self._drain()
        except BaseException as exc:  # noqa: B902
            self.error = exc
            log.exception("%s failed", self.name)
        finally:
            self.outbox.put(DONE)

    def _drain(self):
        # Frames the kernel already holds at stop were seen on the wire: meter them too, with
        # blocking puts (the processor is still draining). A time bound keeps a busy link from
        # holding shutdown back: frames keep arriving there, and the socket never runs empty.
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            batch = self.source.read_batch(_NOWAIT)
            if self._overlap is not None and batch:
                batch = self._dedupe(batch)
            if not batch:
                return
            self.outbox.put(batch)

    def _remember(self, batch):
        seen = self._seen
        if seen is not None:
            for item in batch:
                seen.add((item[0], item[1][:OVERLAP_PREFIX]))

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
            old.close()
            self.retired_sources.append(old)
            self.source, self._next = new, None
        seen, self._seen = self._seen or set(), None
        if seen:
            self._overlap, self._overlap_until = seen, max(k[0] for k in seen) + 1.0
        log.info("%s: capture socket reopened (%s)", self.name, new.filter_expression or "no filter")

    def _dedupe(self, batch):
        seen = self._overlap
        kept = []
        for item in batch:
            k = (item[0], item[1][:OVERLAP_PREFIX])
            if k in seen:
                seen.discard(k)
                self.overlap_duplicates += 1
            else:
                kept.append(item)
        if not seen or batch[-1][0] > self._overlap_until:
            self._overlap = None
        return kept


class Lane:
    """One live interface: its source, packet queue, processor and their two threads."""

    def __init__(self, iface, source, proc, sniffer, thread):
        self.iface, self.source, self.proc = iface, source, proc
        self.sniffer, self.thread = sniffer, thread

    @property
    def name(self):
        """The interface name."""
        return self.iface.name

    def threads(self):
        """Sniffer then processor."""
        return [self.sniffer, self.thread]

    def retire(self):
        """Stop capturing; the processor flushes this lane's flows and tells the exporter it is done."""
        self.sniffer.retire.set()
