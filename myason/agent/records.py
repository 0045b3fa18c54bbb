"""Flow records of the fast engine as arrays: what a fast-engine processor hands the exporter.

A RecordBlock is FastFlowCache.take_arrays() plus what the rows need from the processor (agent
id, interface names, time shift, route and ASN annotations). Rows (Python lists) are built only
when something asks for them (export to collectors); `--output` writes blocks without rows
(myason.agent.fastoutput, imported only when a record file is written).
"""
import gc
from itertools import repeat

import numpy as np

from myason.agent.rowvalues import addr_texts, annotate, round6
from myason.schema import END_REASONS


class RecordBlock:
    """Expired flows of a FastFlowCache as arrays, with what their rows need from the processor.

    k: key words (n, 6) uint64; u: packets, bytes (n, 2); f: first, last (n, 2) float64;
    s: tcp_flags | vlan << 8 | end reason index << 24 (n,) uint32 (FastFlowCache.take_arrays).
    Route and ASN annotations, when configured, are looked up here (at take time, as
    take_rows() did), one call per record as in the reference engine.
    """

    __slots__ = ("k", "u", "f", "s", "agent_id", "if_names", "time_shift", "ann")

    def __init__(self, k, u, f, s, agent_id, if_names=None, time_shift=0.0, routes=None, asn=None):
        self.k, self.u, self.f, self.s = k, u, f, s
        self.agent_id = agent_id
        self.if_names = if_names or {}
        self.time_shift = float(time_shift or 0.0)
        self.ann = None
        if (routes is not None or asn is not None) and len(s):
            ver = (k[:, 4] & 0xFF).tolist()
            ann = [annotate(w, v, routes, asn) for w, v in zip(k.tolist(), ver)]
            # out_if, next_hop, src_mask, dst_mask, src_as, dst_as: one tuple per column
            self.ann = tuple(zip(*ann))

    def __len__(self):
        return len(self.s)

    @property
    def bytes_total(self):
        """Sum of the records' byte counts (the exporter's flow_bytes)."""
        col = self.u[:, 1]
        if not len(col):
            return 0
        if int(col.max()) < (1 << 64) // len(col):      # the uint64 sum cannot wrap
            return int(col.sum(dtype=np.uint64))
        return sum(col.tolist())

    def times(self):
        """first and last as exported (time shift added), before rounding."""
        first, last = self.f[:, 0], self.f[:, 1]
        if self.time_shift:
            first, last = first + self.time_shift, last + self.time_shift
        return first, last

    def rows(self):
        """The records as rows (lists in FIELDS order), as the reference engine makes them."""
        n = len(self.s)
        if not n:
            return []
        # ~1e5 new lists at a time: the cyclic GC would rescan them again and again, and rows
        # hold no cycles.
        was = gc.isenabled()
        gc.disable()
        try:
            return self._rows(n)
        finally:
            if was:
                gc.enable()

    def _rows(self, n):
        k, u, s = self.k, self.u, self.s
        misc = k[:, 4]
        ver = misc & 0xFF
        v4 = ver == 4
        src = addr_texts(k[:, 0], k[:, 1], v4)
        dst = addr_texts(k[:, 2], k[:, 3], v4)
        ifx = k[:, 5].tolist()
        names = self.if_names
        name = [names.get(x, "") for x in ifx] if names else repeat("", n)
        reason = np.array(END_REASONS, dtype=object)[s >> 24].tolist()
        first, last = self.times()
        cols = [src, dst, (misc >> 48).tolist(), ((misc >> 32) & 0xFFFF).tolist(),
                ((misc >> 24) & 0xFF).tolist(), ((misc >> 16) & 0xFF).tolist(),
                u[:, 0].tolist(), u[:, 1].tolist(), round6(first), round6(last),
                (s & 0xFF).tolist(), repeat(self.agent_id, n), name, ifx, repeat(0, n),
                ver.tolist(), ((s >> 8) & 0xFFFF).tolist(), repeat("", n), repeat(0, n),
                repeat(0, n), repeat(0, n), repeat(0, n), reason]
        if self.ann is not None:
            cols[14], cols[17], cols[18], cols[19], cols[20], cols[21] = self.ann
        return list(map(list, zip(*cols)))
