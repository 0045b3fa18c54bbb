"""Between the listener and the processors: per-source limits, byte budgets, routing by agent.

The listener receives anything anyone sends; the first authentication is the processors' HMAC
check. So before a datagram costs a processor anything, and before it takes memory in a queue:

- SourceLimiter: a token bucket per source address (datagrams per second, with a burst), so one
  source flooding forged datagrams cannot take the queues and the processors from the others.
  Memory is bounded (the least recently seen sources are forgotten first; a forgotten source
  starts again with a full bucket). Drops are counted per source network (/24, /64), bounded too.
- ByteBudget: the bytes of datagrams queued for one processor, taken by the listener and given
  back by the processor, whether it is a thread or a process: a stalled processor holds at most
  `queue_max_bytes` of datagrams, whatever their number.
- RoutingQueue: splits each received list by agent (crc32 of the clear agent id) so one agent is
  always handled by the same processor, and applies the spool policy when a queue has no room.
"""
import collections
import ipaddress
import queue
import threading
import time
import zlib

from myason import wire
from myason.errors import WireError

# Source networks kept apart in the drop counters; the rest are counted under OTHER.
MAX_NETWORKS = 256
OTHER = "other"


class SourceLimiter:
    """Token buckets per source address: `rate` datagrams/s, `burst` at once (rate 0: no limit)."""

    def __init__(self, rate, burst=None, max_sources=65536):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else 2 * rate)
        self.max_sources = max_sources
        self._buckets = collections.OrderedDict()      # address -> [tokens, last time]
        self.dropped = 0
        self.by_network = {}

    def allow(self, addr, now):
        """True when `addr` may send one more datagram at time `now` (seconds)."""
        if not self.rate:
            return True
        b = self._buckets.get(addr)
        if b is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
            b = self._buckets[addr] = [self.burst, now, None]
        else:
            self._buckets.move_to_end(addr)
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        self.dropped += 1
        net = b[2]
        if net is None:         # parsed once per source, not once per datagram of a flood
            net = b[2] = network_of(addr)
        if net not in self.by_network and len(self.by_network) >= MAX_NETWORKS:
            net = OTHER
        self.by_network[net] = self.by_network.get(net, 0) + 1
        return False


def network_of(addr):
    """The /24 (IPv4) or /64 (IPv6) holding a source address, as text."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return OTHER
    return str(ipaddress.ip_network("%s/%d" % (ip, 24 if ip.version == 4 else 64), strict=False))


class ByteBudget:
    """Bytes queued for one processor: the listener takes them, the processor gives them back.

    ctx: a multiprocessing context when the processor is a process (the count is then shared
    memory); None for a thread.
    """

    def __init__(self, limit, ctx=None):
        self.limit = int(limit)
        if ctx is not None:
            self._value = ctx.Value("q", 0)
            self._lock = self._value.get_lock()
        else:
            self._value = _Int()
            self._lock = threading.Lock()

    def try_take(self, n):
        """Count n more bytes queued unless that passes the limit; a queue that is empty always
        takes one list, however big (a datagram is at most max_datagram)."""
        with self._lock:
            v = self._value.value
            if v and v + n > self.limit:
                return False
            self._value.value = v + n
            return True

    def give(self, n):
        """The processor took n bytes out of its queue."""
        with self._lock:
            self._value.value -= n

    @property
    def queued(self):
        """Bytes queued now."""
        return self._value.value

    def reset(self):
        """The queue was replaced by an empty one (its processor process died)."""
        with self._lock:
            self._value.value = 0


class _Int:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0


def nbytes(items):
    """Bytes of the datagrams of a received list."""
    return sum(len(d) for d, _, _ in items)


class RoutingQueue:
    """What the listener puts into: routes each datagram to its agent's processor queue.

    With `block` (spool policy block), a processor queue without room (its count of lists or its
    ByteBudget) makes the listener wait, so a backlog waits in the kernel's receive buffer (what
    overflows it is counted as kernel drops) instead of being received and thrown away. Without
    it (spool policy reject), that processor's part of the list is dropped, counted in `dropped`.
    Once `stopping` is set a wait lasts at most STOP_WAIT seconds: a processor that died cannot
    take its part any more.
    """

    STOP_WAIT = 10.0

    def __init__(self, queues, budgets=None, block=False, stopping=None):
        # The lists themselves, not copies: a restarted processor process gets a new queue in it.
        self.queues = queues
        self.budgets = budgets
        self.block = block
        self.stopping = stopping if stopping is not None else threading.Event()
        self.dropped = 0
        self.waited = 0.0           # seconds the listener waited for a processor queue

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
        for i, part in enumerate(parts):
            if part:
                self._put(i, part)

    def _put(self, i, part):
        size = nbytes(part) if self.budgets is not None else 0
        t0 = time.monotonic()
        while True:
            if self._try(i, part, size):
                break
            if not self.block or (self.stopping.is_set() and time.monotonic() - t0 > self.STOP_WAIT):
                self.dropped += len(part)
                break
            time.sleep(0.005)
        self.waited += time.monotonic() - t0

    def _try(self, i, part, size):
        budget = self.budgets[i] if self.budgets is not None else None
        if budget is not None and not budget.try_take(size):
            return False
        try:
            self.queues[i].put_nowait(part)
        except queue.Full:
            if budget is not None:
                budget.give(size)
            return False
        return True
