"""FastFlowCache: FlowCache's API and exact aging rules over the kernels of myason.kernels.flowtable.

add_packets() applies a decoded chunk (fastdecode) with its packet-clock ticks in one kernel
call; the per-packet API (add/tick/flush/take/..., keys packed by process.pack_key) is kept so
that the live path and the tests can use either cache. myason.agent.cache.FlowCache stays the
reference model the differential tests compare against.
"""
import math
import struct

import numpy as np

from myason import kernels
from myason.kernels.flowtable import (ALIVE, CAP, COUNTS, CREATED, DONE, FREE_TOP, HEAP_N, HMASK,
                                      LIMIT, NALIVE, NEED_GROW, NEED_HEAP, NEED_OUT, NSTATE,
                                      OUT_N, PACKETS)
from myason.schema import END_REASONS

_INITIAL_CAPACITY = 4096     # as FlowCache: the columns double from here up to the limit
_INITIAL_OUT = 8192          # expired records buffered inside the kernels
_CANDIDATES = 1024           # LRU eviction candidates per refill, as FlowCache
_PENDING = 4096              # add() calls applied in one kernel call
_U64 = 0xFFFFFFFFFFFFFFFF
_KEY_TAIL = struct.Struct("!HHBBI")   # as process.pack_key


def _table_size(cap):
    size = 16
    while size < 2 * cap:
        size <<= 1
    return size


class FastFlowCache:
    """FlowCache's API and aging rules over numba kernels; keys are process.pack_key bytes."""

    def __init__(self, limit, active=1800.0, inactive=15.0, fin=2.0):
        self._k = kernels.load()
        if self._k is None:
            raise RuntimeError("numba is not installed: use myason.agent.cache.FlowCache")
        if limit < 1:
            raise ValueError("cache limit must be >= 1")
        self.limit = int(limit)
        self.active = float(active)
        self.inactive = float(inactive)
        self.fin = float(fin)
        self._pending = []      # add() calls not yet applied: (ts, key, length, flags, vlan)
        self._records = []      # output blocks drained from the kernels, not yet taken
        I = self._I = np.zeros(NSTATE, np.int64)
        I[LIMIT] = self.limit
        self._P = np.array([self.active, self.inactive, self.fin], np.float64)
        cap = min(self.limit, _INITIAL_CAPACITY)
        self._K = np.zeros((0, 6), np.uint64)
        self._U = np.zeros((0, 3), np.uint64)     # packets, bytes, update counter (LRU)
        self._F = np.zeros((0, 3), np.float64)
        self._M = np.zeros((0, 2), np.uint32)
        self._CA = np.zeros((_CANDIDATES, 2), np.uint64)
        self._FR = np.zeros(0, np.int32)
        self._resize(cap)
        self._set_heap(2 * cap)
        self._set_out(_INITIAL_OUT)

    # -- storage --------------------------------------------------------------------------

    def _pack(self):
        self._T = (self._K, self._U, self._F, self._M, self._CA, self._HT, self._HK, self._HS,
                   self._HR, self._FR, self._I, self._P, self._OK, self._OU, self._OF, self._OS)

    def _resize(self, newcap):
        I = self._I
        old = int(I[CAP])

        def grown(a):
            b = np.zeros((newcap,) + a.shape[1:], a.dtype)
            b[:old] = a[:old]
            return b
        self._K, self._U, self._F = grown(self._K), grown(self._U), grown(self._F)
        self._M = grown(self._M)
        top = int(I[FREE_TOP])
        fr = np.empty(newcap, np.int32)
        fr[:top] = self._FR[:top]
        # Popped from the top: the lowest new slot first keeps the columns dense.
        fr[top:top + newcap - old] = np.arange(newcap - 1, old - 1, -1, dtype=np.int32)
        self._FR = fr
        I[FREE_TOP] = top + newcap - old
        I[CAP] = newcap
        self._HT = np.full(_table_size(newcap), -1, np.int32)
        I[HMASK] = len(self._HT) - 1
        self._k.rehash(self._K, self._M, self._HT, old)
        if hasattr(self, "_OK"):
            self._pack()

    def _set_heap(self, hcap):
        n = int(self._I[HEAP_N])
        hk, hs = np.empty(hcap, np.float64), np.empty((hcap, 2), np.uint32)
        if n:
            hk[:n], hs[:n] = self._HK[:n], self._HS[:n]
        self._HK, self._HS, self._HR = hk, hs, np.empty(hcap, np.int32)

    def _set_out(self, ocap):
        self._drain()
        self._OK = np.empty((ocap, 6), np.uint64)
        self._OU = np.empty((ocap, 2), np.uint64)
        self._OF = np.empty((ocap, 2), np.float64)
        self._OS = np.empty(ocap, np.uint32)
        self._pack()

    def _drain(self):
        if not hasattr(self, "_OK"):
            return
        n = int(self._I[OUT_N])
        if n:
            self._records.append((self._OK[:n].copy(), self._OU[:n].copy(), self._OF[:n].copy(),
                                  self._OS[:n].copy()))
            self._I[OUT_N] = 0

    def _room(self, need):
        """Output room for `need` more records."""
        if len(self._OK) - self._I[OUT_N] < need:
            self._drain()
            if len(self._OK) < need:
                self._set_out(need)

    def _handle(self, code):
        I = self._I
        if code == NEED_OUT:
            self._drain()
        elif code == NEED_GROW:
            self._resize(min(self.limit, max(2 * int(I[CAP]), _INITIAL_CAPACITY)))
        elif code == NEED_HEAP:
            if I[HEAP_N] > 2 * I[NALIVE] + 64:
                self._k.rebuild_heap(self._T)
            if I[HEAP_N] + 2 > len(self._HK):
                self._set_heap(2 * len(self._HK))
                self._pack()

    # -- packets --------------------------------------------------------------------------

    def add_packets(self, ts, kw, iplen, flags, vlan, status, tick_idx=None, tick_now=None):
        """Apply a chunk of decoded packets in order: ts, key words (n, 6), IP length, TCP
        flags, VLAN and status (0 = metered, else skipped); FlowCache.tick(tick_now[j]) runs
        just before packet tick_idx[j] (ascending)."""
        self._apply_pending()
        c = np.ascontiguousarray     # the compiled kernels take exactly these array types
        ts, kw, iplen = c(ts, np.float64), c(kw, np.uint64), c(iplen, np.int64)
        flags, vlan, status = c(flags, np.uint8), c(vlan, np.uint16), c(status, np.uint8)
        if tick_idx is None:
            tick_idx, tick_now = np.empty(0, np.int64), np.empty(0, np.float64)
        tick_idx, tick_now = c(tick_idx, np.int64), c(tick_now, np.float64)
        i, tp, n = 0, 0, len(ts)
        while True:
            i, tp, code = self._k.run(self._T, ts, kw, iplen, flags, vlan, status, i, n,
                                      tick_idx, tick_now, tp)
            if code == DONE:
                return
            self._handle(code)

    def add(self, ts, key, length, flags=0, vlan=0):
        """Account one packet of packed `key` at `ts` (applied in batches, before any read)."""
        self._pending.append((ts, key, length, flags, vlan))
        if len(self._pending) >= _PENDING:
            self._apply_pending()

    def _apply_pending(self):
        pend = self._pending
        if not pend:
            return
        self._pending = []
        n = len(pend)
        words = []
        for _, key, _, _, _ in pend:
            alen = (len(key) - 10) // 2
            s = int.from_bytes(key[:alen], "big")
            d = int.from_bytes(key[alen:2 * alen], "big")
            sport, dport, proto, tos, ifx = _KEY_TAIL.unpack_from(key, 2 * alen)
            words.append((s >> 64, s & _U64, d >> 64, d & _U64,
                          (sport << 48) | (dport << 32) | (proto << 24) | (tos << 16)
                          | (4 if alen == 4 else 6), ifx))
        self.add_packets(np.array([p[0] for p in pend], np.float64), np.array(words, np.uint64),
                         np.array([p[2] for p in pend], np.int64),
                         np.array([p[3] for p in pend], np.uint8),
                         np.array([p[4] for p in pend], np.uint16), np.zeros(n, np.uint8))

    # -- timers ---------------------------------------------------------------------------

    def tick(self, now):
        """Export every flow whose FIN/active deadline or idle limit has passed at `now`."""
        self._apply_pending()
        before = self._exported()
        self.add_packets(np.empty(0, np.float64), np.empty((0, 6), np.uint64), np.empty(0, np.int64),
                         np.empty(0, np.uint8), np.empty(0, np.uint16), np.empty(0, np.uint8),
                         np.zeros(1, np.int64), np.array([now], np.float64))
        return self._exported() - before

    def _exported(self):
        return int(self._I[COUNTS:COUNTS + 6].sum())

    def flush(self, reason="shutdown"):
        """Export every flow (end of replay, shutdown)."""
        self._apply_pending()
        self._room(int(self._I[NALIVE]))       # in one go: flush exports oldest first
        self._k.flush_all(self._T, END_REASONS.index(reason))

    def next_deadline(self):
        """Earliest time at which tick() would export something (inf when empty)."""
        self._apply_pending()
        if not self._I[NALIVE]:
            return math.inf
        cap = int(self._I[CAP])
        alive = ((self._M[:cap, 0] >> 8) & ALIVE).astype(bool)
        f = self._F[:cap][alive]
        return float(min(f[:, 2].min(), f[:, 1].min() + self.inactive))

    # -- results --------------------------------------------------------------------------

    def take_arrays(self):
        """Expired records so far as arrays: (key words (n, 6), packets/bytes (n, 2),
        first/last (n, 2), flags | vlan << 8 | reason << 24 (n,))."""
        self._apply_pending()
        self._drain()
        recs, self._records = self._records, []
        if not recs:
            return (np.empty((0, 6), np.uint64), np.empty((0, 2), np.uint64),
                    np.empty((0, 2), np.float64), np.empty(0, np.uint32))
        if len(recs) == 1:
            return recs[0]
        return tuple(np.concatenate(parts) for parts in zip(*recs))

    def take(self):
        """Hand over the expired records as FlowCache does: (key, packets, bytes, first, last,
        tcp_flags, vlan, end_reason) with packed bytes keys."""
        k, u, f, s = self.take_arrays()
        out = []
        for w, (pk, by), (first, last), st in zip(k.tolist(), u.tolist(), f.tolist(), s.tolist()):
            out.append((key_bytes(w), pk, by, first, last, st & 0xFF, (st >> 8) & 0xFFFF,
                        END_REASONS[st >> 24]))
        return out

    # -- counters -------------------------------------------------------------------------

    def __len__(self):
        self._apply_pending()
        return int(self._I[NALIVE])

    @property
    def counts(self):
        """Exported flows by end reason."""
        self._apply_pending()
        return {r: int(self._I[COUNTS + j]) for j, r in enumerate(END_REASONS)}

    @property
    def packets(self):
        """Packets accounted."""
        self._apply_pending()
        return int(self._I[PACKETS])

    @property
    def flows_created(self):
        """Flows created."""
        self._apply_pending()
        return int(self._I[CREATED])

    def memory_bytes(self):
        """Bytes held by the cache's arrays (columns, hash table, heap, output buffer)."""
        self._apply_pending()
        return sum(a.nbytes for a in self._T)

    def __repr__(self):
        return "<FastFlowCache %d flows, capacity %d, limit %d>" % (
            self._I[NALIVE], self._I[CAP], self.limit)


def key_bytes(w):
    """process.pack_key bytes of six key words."""
    misc = w[4]
    if misc & 0xFF == 4:
        src, dst = (w[1] & 0xFFFFFFFF).to_bytes(4, "big"), (w[3] & 0xFFFFFFFF).to_bytes(4, "big")
    else:
        src = ((w[0] << 64) | w[1]).to_bytes(16, "big")
        dst = ((w[2] << 64) | w[3]).to_bytes(16, "big")
    return src + dst + _KEY_TAIL.pack(misc >> 48, (misc >> 32) & 0xFFFF, (misc >> 24) & 0xFF,
                                      (misc >> 16) & 0xFF, w[5])
