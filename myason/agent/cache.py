"""The flow cache: per-key counters with exact aging rules, stored in compact columns.

One cache serves one interface, so the input ifindex is constant and not part of the stored
key. Keys are opaque hashable values built by the caller (the packet processor packs the
address/port/protocol/ToS fields into one bytes object, which keeps memory per flow low).

Aging rules, in packet time (replay) or wall time (live), all decided per packet and on a tick:
- idle: no packet for more than `inactive` seconds;
- active: a flow lives at most `active` seconds, the next packet starts a new flow;
- fin: the first FIN arms a deadline `fin` seconds later so the rest of the teardown stays in
  the flow; the flow leaves at the deadline (at once when `fin` is 0);
- rst: a RST exports the flow at once;
- cache_full: adding a flow to a full cache exports the least recently updated one first;
- shutdown: flush() exports everything.
A packet that arrives after its flow's deadline or idle limit starts a new flow even if no
tick ran in between, so the records do not depend on tick timing.
"""
import math
from array import array

import numpy as np

from myason.kernels.constants import TCP_FIN as FIN
from myason.kernels.constants import TCP_RST as RST

# Column `state` bits.
ALIVE = 1
FIN_SEEN = 2

# Records handed to the exporter: (key, packets, bytes, first, last, tcp_flags, vlan, end_reason).
EXPIRED_FIELDS = ("key", "packets", "bytes", "first", "last", "tcp_flags", "vlan", "end_reason")

_EVICT_CANDIDATES = 1024
_INITIAL_CAPACITY = 4096


class FlowCache:
    """Flows of one interface with idle/active/FIN/RST/cache-full aging; expired flows go to `out`."""

    def __init__(self, limit, active=1800.0, inactive=15.0, fin=2.0):
        if limit < 1:
            raise ValueError("cache limit must be >= 1")
        self.limit = int(limit)
        self.active = float(active)
        self.inactive = float(inactive)
        self.fin = float(fin)
        self.out = []              # expired records waiting for the caller to take them
        self.index = {}            # key -> slot
        self.keys = []             # slot -> key (None when free)
        self.free = []             # free slots, reused before the columns grow
        self.seq = 0               # update counter: the LRU order
        self._candidates = []      # eviction candidates: (touched, slot), oldest last
        self.counts = {r: 0 for r in ("idle", "active", "fin", "rst", "cache_full", "shutdown")}
        self.packets = 0
        self.flows_created = 0
        cap = min(self.limit, _INITIAL_CAPACITY)
        self._cap = 0
        self.c_packets = array("Q")
        self.c_bytes = array("Q")
        self.c_first = array("d")
        self.c_last = array("d")
        self.c_deadline = array("d")
        self.c_touched = array("Q")
        self.c_flags = array("B")
        self.c_state = array("B")
        self.c_vlan = array("H")
        self._grow(cap)

    def __len__(self):
        return len(self.index)

    def _columns(self):
        return (self.c_packets, self.c_bytes, self.c_first, self.c_last, self.c_deadline,
                self.c_touched, self.c_flags, self.c_state, self.c_vlan)

    def _grow(self, newcap):
        add = newcap - self._cap
        for col in self._columns():
            col.extend(array(col.typecode, bytes(add * col.itemsize)))
        self.keys.extend([None] * add)
        # Pop from the end: lowest slots first keeps the columns dense.
        self.free.extend(range(newcap - 1, self._cap - 1, -1))
        self._cap = newcap

    # -- per packet ---------------------------------------------------------------------------

    def add(self, ts, key, length, flags=0, vlan=0):
        """Account one packet of `key` at time `ts` with IP length `length` and TCP `flags`."""
        self.packets += 1
        s = self.index.get(key)
        if s is not None and (ts > self.c_deadline[s] or ts - self.c_last[s] > self.inactive
                              or self.c_first[s] - ts > self.inactive):
            # The last test: a packet from far in the past (clock stepped back, or the next of
            # several replayed files) does not join a flow it cannot belong to.
            self._expire(s, self._reason(s))
            s = None
        if s is None:
            s = self._new(key, ts, vlan)
        self.c_packets[s] += 1
        self.c_bytes[s] += length
        # first/last are the earliest and latest packet times, also when packets come out of
        # order, so first <= last always holds.
        if ts > self.c_last[s]:
            self.c_last[s] = ts
        elif ts < self.c_first[s]:
            self.c_first[s] = ts
        self.c_flags[s] |= flags
        self.c_touched[s] = self.seq
        self.seq += 1
        if flags & (FIN | RST):
            if flags & RST:
                self._expire(s, "rst")
            elif not self.c_state[s] & FIN_SEEN:
                self.c_state[s] |= FIN_SEEN
                if self.fin <= 0:
                    self._expire(s, "fin")
                else:
                    deadline = ts + self.fin
                    if deadline < self.c_deadline[s]:
                        self.c_deadline[s] = deadline
        return s

    def _new(self, key, ts, vlan):
        if len(self.index) >= self.limit:
            self._evict_lru()
        if not self.free:
            self._grow(min(self.limit, max(self._cap * 2, _INITIAL_CAPACITY)))
        s = self.free.pop()
        self.index[key] = s
        self.keys[s] = key
        self.c_packets[s] = 0
        self.c_bytes[s] = 0
        self.c_first[s] = ts
        self.c_last[s] = ts
        self.c_deadline[s] = ts + self.active
        self.c_flags[s] = 0
        self.c_state[s] = ALIVE
        self.c_vlan[s] = vlan
        self.flows_created += 1
        return s

    def _expire(self, s, reason):
        key = self.keys[s]
        self.out.append((key, self.c_packets[s], self.c_bytes[s], self.c_first[s], self.c_last[s],
                         self.c_flags[s], self.c_vlan[s], reason))
        self.counts[reason] += 1
        del self.index[key]
        self.keys[s] = None
        self.c_state[s] = 0
        self.free.append(s)

    def _evict_lru(self):
        """Export the least recently updated flow (exact LRU, amortised O(1))."""
        touched = self.c_touched
        while True:
            if not self._candidates:
                self._refill_candidates()
            t, s = self._candidates.pop()
            # A candidate updated (or freed and reused) since it was chosen is stale.
            if self.c_state[s] & ALIVE and touched[s] == t:
                self._expire(s, "cache_full")
                return

    def _refill_candidates(self):
        # Among the k oldest flows, the oldest not touched since is the global LRU: every other
        # flow was newer than all k at selection time or has been updated after it.
        n = self._cap
        state = np.frombuffer(self.c_state, dtype=np.uint8, count=n)
        touched = np.frombuffer(self.c_touched, dtype=np.uint64, count=n)
        alive = np.flatnonzero(state & ALIVE)
        t = touched[alive]
        k = min(_EVICT_CANDIDATES, len(alive))
        if k < len(alive):
            part = np.argpartition(t, k - 1)[:k]
            alive, t = alive[part], t[part]
        order = np.argsort(t)[::-1]
        self._candidates = list(zip(t[order].tolist(), alive[order].tolist()))
        del state, touched

    # -- timers -------------------------------------------------------------------------------

    def tick(self, now):
        """Export every flow whose FIN/active deadline or idle limit has passed at `now`."""
        if not self.index:
            return 0
        n = self._cap
        state = np.frombuffer(self.c_state, dtype=np.uint8, count=n)
        deadline = np.frombuffer(self.c_deadline, dtype=np.float64, count=n)
        last = np.frombuffer(self.c_last, dtype=np.float64, count=n)
        due = (state & ALIVE).astype(bool) & ((deadline < now) | ((now - last) > self.inactive))
        slots = np.flatnonzero(due).tolist()
        # The numpy views must be gone before _expire can grow the columns again.
        del state, deadline, last, due
        for s in slots:
            self._expire(s, self._reason(s))
        return len(slots)

    def _reason(self, s):
        # The rule whose time came first names the end.
        if self.c_last[s] + self.inactive < self.c_deadline[s]:
            return "idle"
        return "fin" if self.c_state[s] & FIN_SEEN else "active"

    def flush(self, reason="shutdown"):
        """Export every flow (end of replay, shutdown)."""
        for s in sorted(self.index.values(), key=self.c_first.__getitem__):
            self._expire(s, reason)

    def take(self):
        """Hand over the expired records collected so far."""
        out, self.out = self.out, []
        return out

    def next_deadline(self):
        """Earliest time at which tick() would export something (inf when empty)."""
        if not self.index:
            return math.inf
        n = self._cap
        state = np.frombuffer(self.c_state, dtype=np.uint8, count=n).astype(bool)
        deadline = np.frombuffer(self.c_deadline, dtype=np.float64, count=n)[state]
        last = np.frombuffer(self.c_last, dtype=np.float64, count=n)[state]
        return float(min(deadline.min(), last.min() + self.inactive))

    def memory_bytes(self):
        """Approximate bytes held by the cache's own structures (columns, index, key objects)."""
        import sys
        cols = sum(c.buffer_info()[1] * c.itemsize for c in self._columns())
        keys = sum(sys.getsizeof(k) for k in self.index)
        return cols + sys.getsizeof(self.index) + sys.getsizeof(self.keys) + keys + \
            sys.getsizeof(self.free) + 32 * len(self.index)
