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

    def local_ports(self):
        """The source ports of the export sockets (bound on first send)."""
        return [s.getsockname()[1] for s in self.socks.values()]

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

    def close(self):
        """Close the sockets."""
        for s in self.socks.values():
            s.close()


class Exporter(threading.Thread):
    """Drains the flow queue into a wire Batcher (flushed every `interval`) and a record file.

    One exporter serves the whole agent so that the per-agent sequence number has one owner and
    grows by exactly one per datagram. It stops after receiving DONE from each producer.
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
        self.unencodable = 0
        self.error = None

    def run(self):
        try:
            self._loop()
        except BaseException as exc:  # noqa: B902 - reported by the app, which exits non-zero
            self.error = exc
            log.exception("exporter failed")
            raise

    def _loop(self):
        remaining = self.producers
        next_flush = self.clock() + self.interval
        while remaining:
            timeout = max(0.0, next_flush - self.clock())
            try:
                rows = self.inbox.get(timeout=timeout)
            except queue.Empty:
                rows = ()
            if rows is DONE:
                remaining -= 1
                rows = ()
            if rows:
                self._handle(rows)
            if self.clock() >= next_flush:
                self._flush()
                next_flush = self.clock() + self.interval
        self._flush()
        if self.record_file is not None:
            self.record_file.close()

    def _handle(self, rows):
        self.flows += len(rows)
        if self.record_file is not None:
            self.record_file.write(rows)
        if self.batcher is not None:
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
