"""The packet processor: decoded frames -> flow cache -> flow rows ready for export.

Two engines give identical records: "python" (FlowCache, one frame at a time: the reference
and the live path) and "fast" (numba: fastdecode chunks into FastFlowCache, used by replay).
"""
import logging
import socket
import struct

import numpy as np

from myason import kernels
from myason.agent import decode as dec
from myason.agent.cache import FlowCache
from myason.agent.records import RecordBlock

log = logging.getLogger("myason.agent.process")

_KEY_TAIL = struct.Struct("!HHBBI")
_AF = {4: socket.AF_INET, 16: socket.AF_INET6}

# Non-first fragments are attributed to their first fragment's ports for this long.
FRAG_TTL = 30.0
FRAG_TABLE_MAX = 65536


def fast_engine_available(live=False):
    """True when the fast path's compiled kernels can be loaded (see myason.kernels.load); for
    live capture also the ring walker, which only numba provides (the C kernels serve replays)."""
    k = kernels.load()
    if k is None:
        return False
    if live:
        try:
            return callable(k.walk_blocks)
        except RuntimeError:
            return False
    return True


def pack_key(src, dst, sport, dport, proto, tos, ifindex):
    """The compact flow key: packed addresses then ports, protocol, ToS and ifindex."""
    return src + dst + _KEY_TAIL.pack(sport, dport, proto, tos, ifindex)


def unpack_key(key):
    """Inverse of pack_key: (src, dst, sport, dport, proto, tos, ifindex) with packed addresses."""
    alen = (len(key) - _KEY_TAIL.size) // 2
    return (key[:alen], key[alen:2 * alen]) + _KEY_TAIL.unpack_from(key, 2 * alen)


class PacketProcessor:
    """Owns one flow cache; turns batches of frames into flow rows (lists in FIELDS order)."""

    def __init__(self, cfg, agent_id, if_names=None, routes=None, asn=None, packet_clock=True,
                 engine="python", time_shift=0.0):
        cache_class = FlowCache
        if engine == "fast":
            from myason.agent.fastcache import FastFlowCache as cache_class
        elif engine != "python":
            raise ValueError("engine must be 'python' or 'fast', not %r" % (engine,))
        self.engine = engine
        self.cache = cache_class(cfg.cache_limit, cfg.cache_active_timeout,
                                 cfg.cache_inactive_timeout, cfg.cache_fin_timeout)
        self.agent_id = agent_id
        self.if_names = dict(if_names or {})      # ifindex -> name
        self.routes = routes
        self.asn = asn
        self.rejects = {}                          # decoder reason -> count
        self.frames = 0
        self.fragments = 0
        self.fragments_unmatched = 0
        self.linktypes_skipped = {}
        self._frags = {}                           # (src, dst, proto, ident) -> (sport, dport, flags, ts)
        self.now = 0.0                             # packet clock: the latest timestamp seen
        # Replay runs the timers on the packets' own clock, checked per packet; live capture
        # leaves ticking to its thread, on the wall clock.
        self.packet_clock = packet_clock
        self.tick_every = cfg.tick
        self.next_tick = None
        # Replay --time-shift: added to first/last as rows are made, so aging (which runs on the
        # packets' own clock) is untouched, and both engines shift the same values the same way.
        self.time_shift = float(time_shift)

    def process(self, batch, default_linktype=dec.LINKTYPE_ETHERNET, ifindex=0):
        """Account a batch of (ts, frame[, linktype, ifindex, ...]) tuples."""
        decode = dec.decode
        add = self.cache.add
        rejects = self.rejects
        now = self.now
        next_tick = self.next_tick if self.next_tick is not None else -1.0
        for item in batch:
            ts = item[0]
            if len(item) > 2:
                linktype, ifx = item[2], item[3]
            else:
                linktype, ifx = default_linktype, ifindex
            p = decode(item[1], linktype)
            if p.__class__ is str:
                rejects[p] = rejects.get(p, 0) + 1
                if p == "unsupported_linktype":
                    self._skip_linktype(linktype)
                continue
            src, dst, sport, dport, proto, tos, length, flags, _ver, vlan, frag = p
            if frag:
                sport, dport = self._fragment(ts, src, dst, proto, sport, dport, frag)
            if ts > now:
                now = ts
                if self.packet_clock and now >= next_tick:
                    next_tick = self._clock_tick(now)
            add(ts, src + dst + _KEY_TAIL.pack(sport, dport, proto, tos, ifx), length, flags, vlan)
        self.frames += len(batch)
        self.now = now

    def _skip_linktype(self, linktype):
        if linktype not in self.linktypes_skipped:
            log.warning("link type %d is not supported: its frames are counted and skipped", linktype)
        self.linktypes_skipped[linktype] = self.linktypes_skipped.get(linktype, 0) + 1

    def process_chunk(self, chunk):
        """Account a fastdecode.Chunk (engine "fast"): the same results as process() on its frames.

        Order of events as in process(): a fragment's ports are attributed before the tick its
        packet may trigger; ticks run before that packet enters the cache.
        """
        rejects = self.rejects
        for _, reason, linktype in chunk.rejects:
            rejects[reason] = rejects.get(reason, 0) + 1
            if reason == "unsupported_linktype":
                self._skip_linktype(linktype)
        n = chunk.n
        tick_idx, tick_now = np.empty(n, np.int64), np.empty(n, np.float64)
        if self.packet_clock:
            started = self.next_tick is not None
            k, now, next_tick, started = kernels.load().tick_schedule(
                chunk.ts, chunk.status, float(self.now), float(self.next_tick) if started else -1.0,
                started, float(self.tick_every), tick_idx, tick_now)
            tick_idx, tick_now = tick_idx[:k], tick_now[:k]
            self.next_tick = next_tick if started else None
        else:
            valid = chunk.ts[chunk.status == 0]
            now = max(self.now, float(valid.max())) if len(valid) else self.now
            tick_idx, tick_now = tick_idx[:0], tick_now[:0]
        self._attribute_fragments(chunk, tick_idx.tolist(), tick_now.tolist())
        self.cache.add_packets(chunk.ts, chunk.kw, chunk.iplen, chunk.flags, chunk.vlan, chunk.status,
                               tick_idx, tick_now)
        self.frames += n
        self.now = now

    def _attribute_fragments(self, chunk, tick_idx, tick_now):
        """Fragment ports in packet order, with the table pruned at each tick as tick() does."""
        j, nt = 0, len(tick_idx)
        ts, kw = chunk.ts, chunk.kw
        for i, src, dst, proto, sport, dport, frag in chunk.frags:
            while j < nt and tick_idx[j] < i:
                self._prune_fragments(tick_now[j])
                j += 1
            sport, dport = self._fragment(float(ts[i]), src, dst, proto, sport, dport, frag)
            kw[i, 4] = (sport << 48) | (dport << 32) | (int(kw[i, 4]) & 0xFFFFFFFF)
        while j < nt:
            self._prune_fragments(tick_now[j])
            j += 1

    def _clock_tick(self, now):
        if self.next_tick is not None:
            self.tick(now)
        self.next_tick = now + self.tick_every
        return self.next_tick

    def _fragment(self, ts, src, dst, proto, sport, dport, frag):
        ident, offset, more = frag
        self.fragments += 1
        fkey = (src, dst, proto, ident)
        if offset == 0:
            if len(self._frags) >= FRAG_TABLE_MAX:
                # Oldest first: dicts keep insertion order.
                del self._frags[next(iter(self._frags))]
            self._frags[fkey] = (sport, dport, ts)
            return sport, dport
        first = self._frags.get(fkey)
        if first is None or ts - first[2] > FRAG_TTL:
            self.fragments_unmatched += 1
            return 0, 0
        # Entries stay until FRAG_TTL even after the last fragment: fragments may arrive out
        # of order, and an id is not reused within that time in practice.
        return first[0], first[1]

    def tick(self, now=None):
        """Run the cache timers at `now` (packet clock when None)."""
        self.cache.tick(self.now if now is None else now)
        self._prune_fragments(self.now if now is None else now)

    def _prune_fragments(self, now):
        if len(self._frags) > 1024:
            cutoff = now - FRAG_TTL
            for k in [k for k, v in self._frags.items() if v[2] < cutoff]:
                del self._frags[k]

    def flush(self, reason="shutdown"):
        """Export every cached flow."""
        self.cache.flush(reason)

    def take_rows(self):
        """Expired flows as rows in myason.schema.FIELDS order."""
        if self.engine == "fast":
            return self._rows_from_arrays(*self.cache.take_arrays())
        rows = []
        agent = self.agent_id
        names = self.if_names
        routes, asn = self.routes, self.asn
        ntop = socket.inet_ntop
        shift = self.time_shift
        for key, packets, nbytes, first, last, flags, vlan, reason in self.cache.take():
            if shift:
                first, last = first + shift, last + shift
            src, dst, sport, dport, proto, tos, ifx = unpack_key(key)
            af = _AF[len(src)]
            out_if, next_hop, src_mask, dst_mask = routes.annotate(src, dst) if routes else (0, "", 0, 0)
            rows.append([
                ntop(af, src), ntop(af, dst), sport, dport, proto, tos, packets, nbytes,
                round(first, 6), round(last, 6), flags,
                agent, names.get(ifx, ""), ifx, out_if, 4 if len(src) == 4 else 6, vlan, next_hop,
                src_mask, dst_mask, asn.lookup(src) if asn else 0, asn.lookup(dst) if asn else 0,
                reason,
            ])
        return rows

    def _rows_from_arrays(self, k, u, f, s):
        """take_rows() for FastFlowCache's record arrays: the same rows, built column-wise."""
        return self._block(k, u, f, s).rows()

    def _block(self, k, u, f, s):
        return RecordBlock(k, u, f, s, self.agent_id, self.if_names, self.time_shift, self.routes, self.asn)

    def take_batch(self):
        """What the processor hands the exporter: take_rows(), or with the fast engine a
        records.RecordBlock of the same records (rows are made only if export asks;
        --output writes the arrays directly). Empty: an empty list."""
        if self.engine != "fast":
            return self.take_rows()
        k, u, f, s = self.cache.take_arrays()
        return self._block(k, u, f, s) if len(s) else []

    def stats(self):
        """Counters for logging and the summary."""
        c = self.cache
        return {
            "frames": self.frames, "packets_metered": c.packets, "flows_cached": len(c),
            "flows_created": c.flows_created, "fragments": self.fragments,
            "fragments_unmatched": self.fragments_unmatched,
            "rejects": dict(self.rejects), "exported_by_reason": dict(c.counts),
        }
