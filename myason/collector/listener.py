"""The UDP listener: receives datagrams on IPv4 and IPv6 and queues them in batches; nothing else.

Per readable socket it drains everything the kernel holds (non-blocking) and queues one list,
which halves the cost of the hand-over to the processors compared to one put per datagram
(../shared/anchors/collector/RESULTS.md). The kernel's drop counter for each socket comes with
SO_RXQ_OVFL, and each datagram's arrival time with SO_TIMESTAMPNS.
"""
import errno
import logging
import queue
import select
import socket
import struct
import threading
import time

log = logging.getLogger("myason.collector.listener")

# Bytes of datagrams in one list handed to the processors (see Listener.list_max_bytes).
LIST_MAX_BYTES = 1 << 20

SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_U32 = struct.Struct("I")
_TIMESPEC = struct.Struct("qq")
# Room for both control messages that come with a datagram: its arrival time and the drop count.
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_U32.size)
_DRAIN_MAX = 2048


def open_socket(host, port, rcvbuf, reuseport=False):
    """A bound UDP socket with a large receive buffer and the kernel drop counter enabled."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            # Separate IPv4 and IPv6 sockets: the same port on 0.0.0.0 and :: must not clash.
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        got = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2   # Linux reports double
        if got < rcvbuf:
            log.warning("receive buffer for %s:%d is %d bytes, asked for %d: raise net.core.rmem_max "
                        "(or run as root) to avoid drops under load", host, port, got, rcvbuf)
        s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind((host, port))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


class Listener(threading.Thread):
    """Receives on every bound socket and queues lists of (datagram, sender address, time)."""

    def __init__(self, addresses, port, outbox, stop, rcvbuf=16 << 20, max_datagram=16384, reuseport=False,
                 limiter=None, list_max_bytes=LIST_MAX_BYTES):
        super().__init__(name="listener", daemon=True)
        self.outbox, self.stop = outbox, stop
        self.max_datagram = max_datagram
        # A list handed on holds at most this many bytes of datagrams (and _DRAIN_MAX + 1 of
        # them): the listener's own memory stays small however big the datagrams are.
        self.list_max_bytes = list_max_bytes
        # Per-source rate limits (myason.collector.intake.SourceLimiter), before anything else.
        self.limiter = limiter
        self.socks = [open_socket(h, port, rcvbuf, reuseport) for h in addresses]
        self._buf = bytearray(max_datagram + 1)     # +1: a datagram that fills it is oversized
        self._view = memoryview(self._buf)
        self._bufs = [self._buf]
        self.datagrams = 0
        self.bytes = 0
        self.oversized = 0
        self.queue_dropped = 0          # datagrams dropped because the processors were behind
        self.kernel_drops = {}          # socket -> cumulative drops reported by the kernel
        self.error = None

    def addresses(self):
        """(host, port) each socket is bound to (the port is known once bound, also for port 0)."""
        return [s.getsockname()[:2] for s in self.socks]

    def run(self):
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the app's exit code
            self.error = exc
            log.exception("listener failed")
        finally:
            for s in self.socks:
                s.close()

    def _loop(self):
        while not self.stop.is_set():
            try:
                readable, _, _ = select.select(self.socks, [], [], 0.2)
            except InterruptedError:
                continue
            for s in readable:
                batch = self._drain(s)
                if not batch:
                    continue
                self._queue(batch)
        # Stopping: what the kernel already holds was sent to us; take it before closing.
        for s in self.socks:
            for _ in range(64):
                batch = self._drain(s)
                if not batch:
                    break
                self._queue(batch)

    def _queue(self, batch):
        try:
            self.outbox.put_nowait(batch)
        except queue.Full:
            self.queue_dropped += len(batch)

    def _drain(self, s):
        # Everything into one reused buffer: a datagram the limits refuse costs no allocation, so
        # a flood from one source is thrown away at the rate the kernel hands it over.
        batch = []
        now = time.time()
        mv, bufs = self._view, self._bufs
        recv = s.recvmsg_into
        allow = self.limiter.allow if self.limiter is not None else None
        max_datagram, cap = self.max_datagram, self.list_max_bytes
        size = n_in = n_bytes = 0
        fd = s.fileno()
        for _ in range(_DRAIN_MAX + 1):
            if size >= cap:
                break
            try:
                n, anc, _flags, addr = recv(bufs, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if n_in == 0 and exc.errno not in (errno.ECONNREFUSED, errno.ENOBUFS):
                    raise
                break
            n_in += 1
            n_bytes += n
            # The kernel's arrival time: a datagram that waited in the socket's buffer (the
            # collector starved of CPU, or holding its intake under `block`) is judged by when
            # it came, so the token's ttl never turns a backlog into `expired` rejects.
            at = now
            for _level, kind, value in anc:     # SOL_SOCKET only: nothing else is enabled
                if kind == SCM_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    at = sec + nsec * 1e-9
                elif kind == SO_RXQ_OVFL:
                    self.kernel_drops[fd] = _U32.unpack_from(value)[0]
            if n > max_datagram:
                self.oversized += 1
                continue
            if allow is not None and not allow(addr[0], now):
                continue
            batch.append((bytes(mv[:n]), addr[0], at))
            size += n
        self.datagrams += n_in
        self.bytes += n_bytes
        return batch

    def stats(self):
        """Counters for the summary and metrics."""
        limiter = self.limiter
        return {"datagrams": self.datagrams, "bytes": self.bytes, "oversized": self.oversized,
                "queue_dropped": self.queue_dropped, "kernel_drops": sum(self.kernel_drops.values()),
                "rate_limited": limiter.dropped if limiter is not None else 0,
                "rate_limited_by_network": dict(limiter.by_network) if limiter is not None else {}}
