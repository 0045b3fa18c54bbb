"""The exporter: flow rows -> encrypted UDP datagrams to every collector, and/or a record file."""
import logging
import queue
import socket
import threading
import time

log = logging.getLogger("myason.agent.export")

# What producers put in the flow queue when they have finished.
DONE = None


def resolve_collectors(collectors):
    """(host, port) pairs -> sockaddr tuples; a name that does not resolve fails at start."""
    out = []
    for host, port in collectors:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise OSError("collector %s:%d does not resolve: %s" % (host, port, exc)) from exc
        family, _, _, _, addr = infos[0]
        out.append((family, addr))
    return out


class UdpSender:
    """Sends each datagram to every collector; counts what it could not send."""

    def __init__(self, collectors):
        self.targets = resolve_collectors(collectors)
        self.socks = {}
        for family, _ in self.targets:
            if family not in self.socks:
                s = socket.socket(family, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                self.socks[family] = s
        self.datagrams = 0
        self.bytes = 0
        self.errors = 0

    def send(self, datagram):
        """Send one datagram to all collectors."""
        for family, addr in self.targets:
            try:
                self.socks[family].sendto(datagram, addr)
                self.datagrams += 1
                self.bytes += len(datagram)
            except OSError as exc:
                # ECONNREFUSED from a previous ICMP, ENOBUFS under load: count and go on.
                self.errors += 1
                if self.errors in (1, 10, 100, 1000) or self.errors % 10000 == 0:
                    log.warning("export to %s failed (%d failures so far): %s", addr, self.errors, exc)

    def absorb(self, other):
        """Add the counters of a sender this one replaces (reload), so totals keep growing."""
        self.datagrams += other.datagrams
        self.bytes += other.bytes
        self.errors += other.errors

    def close(self):
        """Close the sockets."""
        for s in self.socks.values():
            s.close()


class Exporter(threading.Thread):
    """Drains the flow queue into a wire Batcher (flushed every `interval`) and a record file.

    One exporter serves the whole agent so that the per-agent sequence number has one owner and
    grows by exactly one per datagram. It stops after receiving DONE from each producer.
    A reload hands over a new key, collectors or interval with reconfigure(); the exporter thread
    applies it between two rows, so every datagram is sealed and sent by one consistent setup.
    """

    def __init__(self, inbox, producers, batcher=None, sender=None, record_file=None,
                 interval=1.0, clock=time.monotonic):
        super().__init__(name="exporter", daemon=True)
        self.inbox = inbox
        self.producers = producers
        self.batcher = batcher
        self.sender = sender
        self.record_file = record_file
        self.interval = interval
        self.clock = clock
        self.flows = 0
        self.flow_bytes = 0
        self.unencodable = 0
        self.error = None
        self.remaining = producers
        self._lock = threading.Lock()
        self._pending = None
        self.applied = threading.Event()

    def add_producer(self):
        """One more producer that will send DONE (an interface added by a reload)."""
        with self._lock:
            self.remaining += 1

    def reconfigure(self, make_batcher=None, sender=None, interval=None):
        """Ask the thread to switch setups: make_batcher(next_seq) -> Batcher, a new UdpSender, an interval.

        What is batched is sealed and sent with the old setup first; the sequence goes on unbroken.
        `applied` is set once the thread has switched.
        """
        with self._lock:
            self.applied.clear()
            self._pending = (make_batcher, sender, interval)
        try:
            self.inbox.put_nowait(())      # wakes the thread; an empty batch means nothing else
        except queue.Full:
            pass                           # a full queue wakes it anyway

    def _apply_pending(self):
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        make_batcher, sender, interval = pending
        self._flush()
        if make_batcher is not None and self.batcher is not None:
            self.batcher = make_batcher(self.batcher.next_seq)
        if sender is not None and self.sender is not None:
            old, self.sender = self.sender, sender
            sender.absorb(old)
            old.close()
        if interval is not None:
            self.interval = interval
        self.applied.set()

    def run(self):
        try:
            self._loop()
        except BaseException as exc:  # noqa: B902 - reported by the app, which exits non-zero
            self.error = exc
            log.exception("exporter failed")
            raise

    def _loop(self):
        next_flush = self.clock() + self.interval
        while self.remaining:
            timeout = max(0.0, next_flush - self.clock())
            try:
                rows = self.inbox.get(timeout=timeout)
            except queue.Empty:
                rows = ()
            if rows is DONE:
                with self._lock:
                    self.remaining -= 1
                rows = ()
            if rows:
                self._handle(rows)
            # After the rows already taken: they go out with the setup they were taken under.
            if self._pending is not None:
                self._apply_pending()
                next_flush = min(next_flush, self.clock() + self.interval)
            if self.clock() >= next_flush:
                self._flush()
                next_flush = self.clock() + self.interval
        self._apply_pending()
        self._flush()
        if self.record_file is not None:
            self.record_file.close()

    def _handle(self, rows):
        # rows: a list of rows, or a records.RecordBlock (the fast engine's arrays), which
        # the record file writes as it is and which makes rows only for the batcher.
        self.flows += len(rows)
        total = getattr(rows, "bytes_total", None)
        self.flow_bytes += total if total is not None else sum(r[7] for r in rows)   # FIELDS[7]: bytes
        if self.record_file is not None:
            self.record_file.write(rows)
        if self.batcher is not None:
            if total is not None:
                rows = rows.rows()
            add, send = self.batcher.add, self.sender.send
            for row in rows:
                try:
                    dgrams = add(row)
                except ValueError as exc:
                    # A row that cannot fit a datagram even alone: count it, never stop.
                    self.unencodable += 1
                    log.error("flow not exportable (%d so far): %s", self.unencodable, exc)
                    continue
                for dgram in dgrams:
                    send(dgram)

    def _flush(self):
        if self.batcher is not None:
            for dgram in self.batcher.flush():
                self.sender.send(dgram)
