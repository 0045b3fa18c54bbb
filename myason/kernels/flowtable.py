"""Kernels of the fast path's phase 2: the flow table of FastFlowCache, with FlowCache's exact rules.

The Python side is myason.agent.fastcache.FastFlowCache; the reference model it matches is
myason.agent.cache.FlowCache. Flows live in numpy columns indexed by slot; an open-addressing
hash table (linear probing, backward-shift deletion) maps the six key words (see
myason.kernels.decode) to slots. Exact LRU for
cache_full keeps FlowCache's method: an update counter per flow and a list of the oldest
candidates, refreshed when used up. Ticks use a lazy min-heap of due times (the earlier of
deadline and last + inactive): a popped flow that FlowCache's own test finds not due is pushed
again with its current due time, so a tick never scans the table.

Kernels return to Python when they need room (a slot, heap entries, output records); the
caller grows the arrays and calls again from the same packet. The arrays, in this order:
K (cap, 6) key words; U (cap, 3) packets, bytes, update counter; F (cap, 3) first, last,
deadline; M (cap, 2) flags | state << 8 | vlan << 16, generation; CA eviction candidates;
HT hash table; HK, HS, HR heap keys, (slot, generation), scratch; FR free slots; I scalar
state (the indexes below); P active, inactive, fin; OK, OU, OF, OS expired records (key,
packets/bytes, first/last, flags | vlan << 8 | reason << 24).
"""
import numpy as np

from myason.kernels.constants import TCP_FIN as FIN
from myason.kernels.constants import TCP_RST as RST
from myason.kernels.registry import helper, kernel, ro
from myason.schema import END_REASONS

# M[s, 0] state bits (shifted left by 8).
ALIVE, FIN_SEEN = 1, 2
# End reasons: indexes into schema.END_REASONS.
R_IDLE, R_ACTIVE, R_FIN, R_RST, R_FULL, R_SHUTDOWN = (
    END_REASONS.index(r) for r in ("idle", "active", "fin", "rst", "cache_full", "shutdown"))
# Indexes into I.
(NALIVE, FREE_TOP, SEQ, CPOS, HEAP_N, PACKETS, CREATED, OUT_N, COUNTS, CAP, LIMIT,
 HMASK, CN) = 0, 1, 2, 3, 4, 5, 6, 7, 8, 14, 15, 16, 17
NSTATE = 18
# Kernel return codes.
DONE, NEED_OUT, NEED_GROW, NEED_HEAP = 0, 1, 2, 3

# Signature of the array tuple T.
T = ("Tuple((uint64[:, ::1], uint64[:, ::1], float64[:, ::1], uint32[:, ::1], uint64[:, ::1], "
     "int32[::1], float64[::1], uint32[:, ::1], int32[::1], int32[::1], int64[::1], float64[::1], "
     "uint64[:, ::1], uint64[:, ::1], float64[:, ::1], uint32[::1]))")


# -- hash table -------------------------------------------------------------------------------

@helper(inline=True)
def _hash(K, s):
    h = (K[s, 0] * np.uint64(0x9E3779B97F4A7C15) + K[s, 1] * np.uint64(0xC2B2AE3D27D4EB4F)
         + K[s, 2] * np.uint64(0x165667B19E3779F9) + K[s, 3] * np.uint64(0x85EBCA77C2B2AE63)
         + K[s, 4] * np.uint64(0x27D4EB2F165667C5) + K[s, 5] * np.uint64(0xFF51AFD7ED558CCD))
    h ^= h >> np.uint64(32)
    h *= np.uint64(0xD6E8FEB86659FD93)
    h ^= h >> np.uint64(29)
    return h


@helper(inline=True)
def _same(K, s, X, i):
    return (K[s, 0] == X[i, 0] and K[s, 1] == X[i, 1] and K[s, 2] == X[i, 2]
            and K[s, 3] == X[i, 3] and K[s, 4] == X[i, 4] and K[s, 5] == X[i, 5])


@helper(inline=True)
def _find(K, HT, mask, X, i):
    """(slot, table position) of key X[i]; slot -1 and the first empty position if absent."""
    p = np.int64(_hash(X, i) & np.uint64(mask))
    while True:
        s = HT[p]
        if s < 0 or _same(K, s, X, i):
            return s, p
        p = (p + 1) & mask


@helper(inline=True)
def _unhash(K, HT, mask, s):
    """Remove slot s from the table, shifting later entries of the run back."""
    p = np.int64(_hash(K, s) & np.uint64(mask))
    while HT[p] != s:
        p = (p + 1) & mask
    j = p
    while True:
        j = (j + 1) & mask
        t = HT[j]
        if t < 0:
            break
        home = np.int64(_hash(K, t) & np.uint64(mask))
        # t may move into the hole at p unless its home lies cyclically in (p, j].
        if (p <= j and (home <= p or home > j)) or (p > j and home <= p and home > j):
            HT[p] = t
            p = j
    HT[p] = -1


@kernel("none(uint64[:, ::1], uint32[:, ::1], int32[::1], int64)")
def rehash(K, M, HT, cap):
    """Rebuild the hash table HT (all empty on entry) from the alive slots."""
    mask = HT.shape[0] - 1
    for s in range(cap):
        if (M[s, 0] >> 8) & ALIVE:
            p = np.int64(_hash(K, s) & np.uint64(mask))
            while HT[p] >= 0:
                p = (p + 1) & mask
            HT[p] = s


# -- heap of due times ------------------------------------------------------------------------

@helper(inline=True)
def _heap_set(HK, HS, j, key, s, gen):
    HK[j] = key
    HS[j, 0] = s
    HS[j, 1] = gen


@helper(inline=True)
def _push(HK, HS, I, key, s, gen):
    j = I[HEAP_N]
    I[HEAP_N] = j + 1
    while j > 0:
        parent = (j - 1) >> 1
        if HK[parent] <= key:
            break
        _heap_set(HK, HS, j, HK[parent], HS[parent, 0], HS[parent, 1])
        j = parent
    _heap_set(HK, HS, j, key, s, gen)


@helper(inline=True)
def _pop(HK, HS, I):
    """Remove the top entry; returns its (slot, gen)."""
    s, gen = HS[0, 0], HS[0, 1]
    n = I[HEAP_N] - 1
    I[HEAP_N] = n
    key, ls, lg = HK[n], HS[n, 0], HS[n, 1]
    j = 0
    while True:
        c = 2 * j + 1
        if c >= n:
            break
        if c + 1 < n and HK[c + 1] < HK[c]:
            c += 1
        if HK[c] >= key:
            break
        _heap_set(HK, HS, j, HK[c], HS[c, 0], HS[c, 1])
        j = c
    _heap_set(HK, HS, j, key, ls, lg)
    return s, gen


# -- flows ------------------------------------------------------------------------------------

@helper(inline=True)
def _reason(F, M, P, s):
    # The rule whose time came first names the end (FlowCache._reason).
    if F[s, 1] + P[1] < F[s, 2]:
        return R_IDLE
    return R_FIN if (M[s, 0] >> 8) & FIN_SEEN else R_ACTIVE


@helper()
def _refill(U, M, CA, I):
    """The oldest flows by last update, oldest first, as eviction candidates (touched, slot).

    The oldest candidate not updated since is the global LRU: every other flow was newer than
    all candidates when they were chosen, or has been updated after that.
    """
    cap = I[CAP]
    n = I[NALIVE]
    slots = np.empty(n, np.int64)
    n = 0
    for s in range(cap):
        if (M[s, 0] >> 8) & ALIVE:
            slots[n] = s
            n += 1
    touched = np.empty(n, np.uint64)
    for j in range(n):
        touched[j] = U[slots[j], 2]
    k = min(CA.shape[0], n)
    if k < n:
        bound = np.partition(touched, k - 1)[k - 1]
        m = 0
        for j in range(n):
            if touched[j] <= bound:   # update counters are unique: exactly k
                slots[m] = slots[j]
                touched[m] = touched[j]
                m += 1
        slots, touched = slots[:k], touched[:k]
    order = np.argsort(touched)
    for j in range(k):
        CA[j, 0] = touched[order[j]]
        CA[j, 1] = slots[order[j]]
    I[CPOS] = 0
    I[CN] = k


@helper()
def _expire(K, U, F, M, HT, FR, I, OK, OU, OF, OS, s, reason):
    o = I[OUT_N]
    for w in range(6):
        OK[o, w] = K[s, w]
    OU[o, 0] = U[s, 0]
    OU[o, 1] = U[s, 1]
    OF[o, 0] = F[s, 0]
    OF[o, 1] = F[s, 1]
    m = M[s, 0]
    OS[o] = (m & 0xFF) | ((m >> 16) << 8) | (reason << 24)
    I[OUT_N] = o + 1
    I[COUNTS + reason] += 1
    _unhash(K, HT, I[HMASK], s)
    M[s, 0] = 0
    M[s, 1] += 1      # heap entries of this flow are stale from now on
    FR[I[FREE_TOP]] = s
    I[FREE_TOP] += 1
    I[NALIVE] -= 1


@helper()
def _evict(K, U, F, M, CA, HT, FR, I, OK, OU, OF, OS):
    """Export the least recently updated flow (cache_full)."""
    while True:
        if I[CPOS] >= I[CN]:
            _refill(U, M, CA, I)
        t, s = CA[I[CPOS], 0], np.int64(CA[I[CPOS], 1])
        I[CPOS] += 1
        # A candidate updated (or freed and reused) since it was chosen is stale.
        if (M[s, 0] >> 8) & ALIVE and U[s, 2] == t:
            _expire(K, U, F, M, HT, FR, I, OK, OU, OF, OS, s, R_FULL)
            return


@helper()
def _new(K, U, F, M, CA, HT, HK, HS, FR, I, P, OK, OU, OF, OS, ts, X, i, vlan, p, moved):
    """A new flow for key X[i] (FlowCache._new); p is its table position unless moved."""
    if I[NALIVE] >= I[LIMIT]:
        _evict(K, U, F, M, CA, HT, FR, I, OK, OU, OF, OS)
        moved = True
    if moved:
        s, p = _find(K, HT, I[HMASK], X, i)   # deleting shifted entries of the table
    I[FREE_TOP] -= 1
    s = FR[I[FREE_TOP]]
    HT[p] = s
    for w in range(6):
        K[s, w] = X[i, w]
    U[s, 0] = 0
    U[s, 1] = 0
    F[s, 0] = ts
    F[s, 1] = ts
    F[s, 2] = ts + P[0]
    M[s, 0] = (ALIVE << 8) | (np.uint32(vlan) << 16)
    I[NALIVE] += 1
    I[CREATED] += 1
    _push(HK, HS, I, min(F[s, 2], ts + P[1]), s, M[s, 1])
    return s


@helper()
def _fin_rst(K, U, F, M, HT, HK, HS, FR, I, P, OK, OU, OF, OS, ts, s, fl):
    """The FIN/RST rules of FlowCache.add for flow s."""
    if fl & RST:
        _expire(K, U, F, M, HT, FR, I, OK, OU, OF, OS, s, R_RST)
    elif not (M[s, 0] >> 8) & FIN_SEEN:
        M[s, 0] |= np.uint32(FIN_SEEN << 8)
        if P[2] <= 0:
            _expire(K, U, F, M, HT, FR, I, OK, OU, OF, OS, s, R_FIN)
        else:
            d = ts + P[2]
            if d < F[s, 2]:
                F[s, 2] = d
                _push(HK, HS, I, min(d, F[s, 1] + P[1]), s, M[s, 1])


@helper()
def _tick(T, now):
    """FlowCache.tick: export every flow whose deadline or idle limit has passed at now.

    Returns False when the output filled up first: calling again at the same `now` after
    draining the output finishes the tick with the same result.
    """
    K, U, F, M, CA, HT, HK, HS, HR, FR, I, P, OK, OU, OF, OS = T
    inactive = P[1]
    # Due times are rounded sums; the slack covers that rounding (timestamps >= 0), the
    # exact test below decides.
    lim = now + 1e-12 * (abs(now) + inactive + 1.0)
    nre = 0
    done = True
    while I[HEAP_N] > 0 and HK[0] <= lim:
        if I[OUT_N] == OK.shape[0]:
            done = False
            break
        s, gen = _pop(HK, HS, I)
        if not (M[s, 0] >> 8) & ALIVE or M[s, 1] != gen:
            continue
        if F[s, 2] < now or (now - F[s, 1]) > inactive:
            _expire(K, U, F, M, HT, FR, I, OK, OU, OF, OS, s, _reason(F, M, P, s))
        else:
            HR[nre] = s
            nre += 1
    for j in range(nre):
        s = HR[j]
        _push(HK, HS, I, min(F[s, 2], F[s, 1] + inactive), s, M[s, 1])
    return done


@kernel("UniTuple(int64, 3)(%s, %s, %s, %s, %s, %s, %s, int64, int64, %s, %s, int64)"
        % (T, ro("float64"), ro("uint64", 2), ro("int64"), ro("uint8"), ro("uint16"), ro("uint8"),
           ro("int64"), ro("float64")))
def run(T, ts, X, iplen, fl, vlan, status, i, n, tidx, tnow, tp):
    """Apply packets i..n-1 (status 0 only) in order, with the ticks tnow[tp:] before packets
    tidx[tp:]; returns (next packet, next tick, code): DONE or what to grow before resuming."""
    K, U, F, M, CA, HT, HK, HS, HR, FR, I, P, OK, OU, OF, OS = T
    ocap = OK.shape[0]
    hcap = HK.shape[0]
    nt = tidx.shape[0]
    inactive = P[1]
    mask = I[HMASK]
    # FlowCache.add, with its hot path here rather than in a helper: numba counts references
    # to arrays handed to inlined helpers, per packet.
    while i < n:
        while tp < nt and tidx[tp] <= i:
            if not _tick(T, tnow[tp]):
                return i, tp, NEED_OUT
            tp += 1
        if status[i] == 0:
            if ocap - I[OUT_N] < 3:
                return i, tp, NEED_OUT
            if I[FREE_TOP] == 0 and I[CAP] < I[LIMIT]:
                return i, tp, NEED_GROW
            if I[HEAP_N] + 2 > hcap:
                return i, tp, NEED_HEAP
            t = ts[i]
            I[PACKETS] += 1
            s, p = _find(K, HT, mask, X, i)
            if s < 0:
                s = _new(K, U, F, M, CA, HT, HK, HS, FR, I, P, OK, OU, OF, OS, t, X, i, vlan[i], p, False)
            elif t > F[s, 2] or t - F[s, 1] > inactive or F[s, 0] - t > inactive:
                # The last test: a packet from far in the past does not join a flow it cannot
                # belong to.
                _expire(K, U, F, M, HT, FR, I, OK, OU, OF, OS, s, _reason(F, M, P, s))
                s = _new(K, U, F, M, CA, HT, HK, HS, FR, I, P, OK, OU, OF, OS, t, X, i, vlan[i], p, True)
            U[s, 2] = I[SEQ]      # the LRU order
            I[SEQ] += 1
            U[s, 0] += np.uint64(1)
            U[s, 1] += np.uint64(iplen[i])
            # first/last are the earliest and latest packet times, also out of order.
            if t > F[s, 1]:
                F[s, 1] = t
            elif t < F[s, 0]:
                F[s, 0] = t
            f = fl[i]
            M[s, 0] |= np.uint32(f)
            if f & (FIN | RST):
                _fin_rst(K, U, F, M, HT, HK, HS, FR, I, P, OK, OU, OF, OS, t, s, f)
        i += 1
    while tp < nt:
        if not _tick(T, tnow[tp]):
            return i, tp, NEED_OUT
        tp += 1
    return i, tp, DONE


@kernel("int64(%s, int64)" % T)
def flush_all(T, reason):
    """Export every flow, oldest first (FlowCache.flush); the output has room for all."""
    K, U, F, M, CA, HT, HK, HS, HR, FR, I, P, OK, OU, OF, OS = T
    cap = I[CAP]
    alive = np.empty(I[NALIVE], np.int64)
    n = 0
    for s in range(cap):
        if (M[s, 0] >> 8) & ALIVE:
            alive[n] = s
            n += 1
    firsts = np.empty(n, np.float64)
    for j in range(n):
        firsts[j] = F[alive[j], 0]
    order = np.argsort(firsts, kind="mergesort")
    for j in range(n):
        _expire(K, U, F, M, HT, FR, I, OK, OU, OF, OS, alive[order[j]], reason)
    return n


@kernel("none(%s)" % T)
def rebuild_heap(T):
    """Replace the heap by one entry per alive flow (drops stale entries)."""
    K, U, F, M, CA, HT, HK, HS, HR, FR, I, P, OK, OU, OF, OS = T
    I[HEAP_N] = 0
    for s in range(I[CAP]):
        if (M[s, 0] >> 8) & ALIVE:
            _push(HK, HS, I, min(F[s, 2], F[s, 1] + P[1]), s, M[s, 1])


@kernel("Tuple((int64, float64, float64, boolean))(%s, %s, float64, float64, boolean, float64, "
        "int64[::1], float64[::1])" % (ro("float64"), ro("uint8")))
def tick_schedule(ts, status, now, next_tick, started, every, tidx, tnow):
    """PacketProcessor's packet clock over accepted packets: a tick at `now` before the packet
    that moves the clock past next_tick. Returns (ticks, now, next_tick, started)."""
    k = 0
    for i in range(ts.shape[0]):
        if status[i] != 0:
            continue
        t = ts[i]
        if t > now:
            now = t
            if now >= next_tick:
                if started:
                    tidx[k] = i
                    tnow[k] = now
                    k += 1
                next_tick = now + every
                started = True
    return k, now, next_tick, started
