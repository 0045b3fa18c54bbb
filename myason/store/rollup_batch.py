"""What one stored batch adds to the rollups, computed from the batch itself (docs/rollups.md).

Rollups are kept incrementally so that their cost does not depend on how many flows the tables
already hold, and so that no scan of raw flows competes with ingest: each batch a SQL writer
stores carries, in the same transaction,

- its exact 1-minute totals per (bucket, agent, if_name, proto, direction), added to rollup_1m
  and to the enclosing 15m, 1h and 1d rows (an upsert that adds), and
- its top-N candidates: per (1m bucket, agent, dimension) the `top` keys with the most bytes in
  this batch, with their bytes, packets and flows, and the same over all the batch's agents
  (agent '*'), inserted into rollup_cand.

The maintenance later sums the candidates of each closed minute with the list already stored,
ranks and keeps `top` (myason.store.rollup). A listed key's figures are therefore lower bounds,
short at most by the values cut off in the batches where the key did not make the batch's list
(exact whenever no batch held more than `top` keys of that dimension in that minute).

Pure functions over the rows (or their columns); numpy does the grouping, so this costs about
a microsecond per flow in the processors, where the batch is encoded anyway.
"""
from __future__ import annotations

from myason.schema import ENRICHED_ROW_FIELDS, INDEX as _I
from myason.store.rollup import DIMENSIONS, PORT_PROTOCOLS, RESOLUTIONS, service_ports

# The top-N dimensions (myason.store.rollup.DIMENSIONS) and how a row gives each key.
_STR_DIMS = ("src_ip", "dst_ip", "src_country", "dst_country")
_INT_DIMS = ("src_port", "dst_port", "src_asn", "dst_asn")


def _dims():
    return DIMENSIONS


def minute_buckets(np, first, kind):
    """1m bucket start (Unix seconds, int64) of each `first`, as `kind` ('postgresql'/'sqlite') stores it.

    PostgreSQL keeps microseconds (COPY rounds half to even, as numpy's rint does on the same
    products); SQLite keeps the float and buckets its whole seconds.
    """
    if kind == "postgresql":
        return np.floor_divide(np.rint(first * 1e6).astype(np.int64), 60_000_000) * 60
    return np.floor_divide(first.astype(np.int64), 60) * 60


def _codes(np, values):
    """(dense int64 codes in first-seen order, the distinct values by code) of hashable values."""
    distinct = list(dict.fromkeys(values))          # C-level passes, first-seen order
    if len(distinct) == 1:
        return np.zeros(len(values), dtype=np.int64), distinct
    index = {v: i for i, v in enumerate(distinct)}
    return np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values)), distinct


def _minute_codes(np, minute):
    """(dense codes, the distinct minutes ascending) of minute starts, without a sort when close."""
    lo = int(minute.min())
    idx = (minute - lo) // 60
    if int(idx.max()) < 1 << 16:
        present = np.flatnonzero(np.bincount(idx))
        remap = np.zeros(int(idx.max()) + 1, dtype=np.int64)
        remap[present] = np.arange(len(present))
        return remap[idx], present * 60 + lo
    minutes, codes = np.unique(minute, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), minutes


def _int_codes(np, values):
    """_codes of integers (ascending order), by numpy alone; ports by a table, not a sort."""
    values = np.asarray(values, dtype=np.int64)
    if len(values) and values.min() >= 0 and values.max() < 65536:
        present = np.flatnonzero(np.bincount(values, minlength=65536))
        remap = np.zeros(65536, dtype=np.int64)
        remap[present] = np.arange(len(present))
        return remap[values], present.tolist()
    uniq, dense = np.unique(values, return_inverse=True)
    return dense.reshape(-1).astype(np.int64), uniq.tolist()


def service_ports_of(np, proto, src, dst):
    """Service port of each flow (docs/api.md, "Top lists"), -1 for a protocol without ports."""
    known = np.array(service_ports(), dtype=np.int64)
    src_ok = (src < 1024) | np.isin(src, known)
    dst_ok = (dst < 1024) | np.isin(dst, known)
    out = np.where(src_ok & ~dst_ok, src, np.where(dst_ok & ~src_ok, dst, np.minimum(src, dst)))
    return np.where(np.isin(proto, np.array(PORT_PROTOCOLS)), out, -1)


CAND_COLUMNS = ("bucket", "agent", "dimension", "key", "bytes", "packets", "flows")


def batch_partials(rows, top, kind, columns=None):
    """(totals, candidates) of one batch of rows (ROW_FIELDS or ENRICHED_ROW_FIELDS order).

    totals: [(bucket, agent, if_name, proto, direction, bytes, packets, flows)] at 1 minute;
    candidates: {column: list} with CAND_COLUMNS, at most `top` keys per (bucket, agent,
    dimension), agent '*' for all the batch's agents together: the most bytes first, ties to
    the smaller key (text order). columns: the rows already transposed (list(zip(*rows))).
    """
    import numpy as np
    cands = {c: [] for c in CAND_COLUMNS}
    if not rows:
        return [], cands
    cols = columns if columns is not None else list(zip(*rows))
    enriched = len(cols) >= len(ENRICHED_ROW_FIELDS)
    minute = minute_buckets(np, np.asarray(cols[_I["first"]], dtype=np.float64), kind)
    nbytes = np.asarray(cols[_I["bytes"]], dtype=np.int64)
    packets = np.asarray(cols[_I["packets"]], dtype=np.int64)
    agent_code, agents = _codes(np, cols[_I["agent"]])
    mcode, minutes = _minute_codes(np, minute)
    na = len(agents)
    group = mcode * na + agent_code                 # (minute, agent), dense
    proto = np.asarray(cols[_I["proto"]], dtype=np.int64)
    totals = _totals(np, group, minutes, agents, cols, enriched, proto, nbytes, packets)
    src_port = np.asarray(cols[_I["src_port"]], dtype=np.int64)
    dst_port = np.asarray(cols[_I["dst_port"]], dtype=np.int64)
    minutes_l = minutes.tolist()
    for dim in _dims():
        if dim == "service_port":
            values = service_ports_of(np, proto, src_port, dst_port)
            keep = values >= 0
            # Rows without a port are left out by `keep`; 0 keeps the codes in the ports' table.
            codes, keys = _int_codes(np, np.where(keep, values, 0))
        elif dim in ("src_port", "dst_port"):
            codes, keys = _int_codes(np, src_port if dim == "src_port" else dst_port)
            keep = None
        elif dim in _STR_DIMS:
            if not enriched and dim.endswith("_country"):
                continue
            codes, keys = _codes(np, cols[_I[dim]])
            keep = None
            if "" in keys:           # an unknown country is not a key (as in rollup_sql)
                keep = codes != keys.index("")
        else:                        # src_asn, dst_asn: ASN 0 is not a key
            if not enriched:
                continue
            codes, keys = _int_codes(np, np.asarray(cols[_I[dim]], dtype=np.int64))
            keep = codes != keys.index(0) if 0 in keys else None
        if keep is not None:
            if not keep.any():
                continue
            g, c, b, p = group[keep], codes[keep], nbytes[keep], packets[keep]
        else:
            g, c, b, p = group, codes, nbytes, packets
        text = keys if dim in _STR_DIMS else _Text(keys)
        # Per (minute, agent, key) sums, then per (minute, key) over all agents ('*').
        sg, sc, sb, sp, sf = _sums(np, g, c, b, p, None, len(keys))
        start = len(cands["key"])
        _select(np, cands, dim, sg, sc, sb, sp, sf, text, top, minutes_l, agents, na)
        if na == 1:
            # One agent in the batch (the usual case with processes): '*' is its own list.
            for col in CAND_COLUMNS:
                cands[col].extend(cands[col][start:] if col != "agent" else ["*"] * (len(cands["key"]) - start))
            continue
        mg, mc, mb, mp, mf = _sums(np, sg // na, sc, sb, sp, sf, len(keys))
        _select(np, cands, dim, mg, mc, mb, mp, mf, text, top, minutes_l, ("*",), 1)
    return totals, cands


class _Text:
    """The text of integer keys, made only for the keys that are looked at."""

    __slots__ = ("keys",)

    def __init__(self, keys):
        self.keys = keys

    def __getitem__(self, i):
        return str(self.keys[i])


def _sums(np, g, c, b, p, f, nk):
    """Sums per (g, c), sorted by g then c; f: flow counts already summed (None: one per row)."""
    key = g * nk + c
    cells = int(key.max()) + 1 if len(key) else 0
    if cells <= 8 * len(key) + 4096:
        # Dense enough for bincount (no sort). Bytes and packets in 32-bit halves, so each float
        # sum stays below 2**53 and exact.
        count = np.bincount(key, weights=f, minlength=cells) if f is not None else np.bincount(key, minlength=cells)
        live = np.flatnonzero(count)
        sb = _exact_sum(np, key, b, cells)[live]
        sp = _exact_sum(np, key, p, cells)[live]
        sf = count[live].astype(np.int64)
        return live // nk, live % nk, sb, sp, sf
    order = np.argsort(key, kind="stable")
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sb = np.add.reduceat(b[order], starts)
    sp = np.add.reduceat(p[order], starts)
    sf = np.diff(np.r_[starts, len(k)]) if f is None else np.add.reduceat(f[order], starts)
    return k[starts] // nk, k[starts] % nk, sb, sp, sf


def _exact_sum(np, key, v, cells):
    lo = np.bincount(key, weights=(v & 0xFFFFFFFF).astype(np.float64), minlength=cells).astype(np.int64)
    hi = np.bincount(key, weights=(v >> 32).astype(np.float64), minlength=cells).astype(np.int64)
    return (hi << 32) + lo


def _select(np, cands, dim, g, c, b, p, f, text, top, minutes, agents, na):
    # The `top` keys of each group by bytes (ties: smaller text) into the candidate columns.
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])      # g comes sorted from _sums
    size = np.diff(np.r_[starts, len(g)])
    if size.max() <= top:
        _emit(np, cands, dim, g, c, b, p, f, text, minutes, agents, na)
        return
    keep = np.ones(len(g), dtype=bool)
    for s, n in zip(starts[size > top].tolist(), size[size > top].tolist()):
        keep[s:s + n] = _keep_top(np, b[s:s + n], c[s:s + n], text, top)
    _emit(np, cands, dim, g[keep], c[keep], b[keep], p[keep], f[keep], text, minutes, agents, na)


def _keep_top(np, b, c, text, top):
    # Mask of the `top` entries with the most bytes; at a tie on the cut, the smaller texts.
    cut = np.partition(b, len(b) - top)[len(b) - top]
    keep = b > cut
    room = top - int(keep.sum())
    at = np.flatnonzero(b == cut)
    if len(at) <= room:
        keep[at] = True
    else:
        keep[sorted(at.tolist(), key=lambda i: text[c[i]])[:room]] = True
    return keep


def _emit(np, cands, dim, g, c, b, p, f, text, minutes, agents, na):
    m, a = np.divmod(g, na)
    cands["bucket"].extend(minutes[i] for i in m.tolist())
    cands["agent"].extend(agents[i] for i in a.tolist())
    cands["dimension"].extend([dim] * len(g))
    cands["key"].extend(text[i] for i in c.tolist())
    cands["bytes"].extend(b.tolist())
    cands["packets"].extend(p.tolist())
    cands["flows"].extend(f.tolist())


def _totals(np, group, minutes, agents, cols, enriched, proto, nbytes, packets):
    # Exact sums per (minute, agent, if_name, proto, direction).
    if_code, if_names = _codes(np, cols[_I["if_name"]])
    if enriched:
        dir_code, dirs = _codes(np, cols[_I["direction"]])
    else:
        dir_code, dirs = np.zeros(len(group), dtype=np.int64), [""]
    pcode, protos = _int_codes(np, proto)
    nr = len(if_names) * len(protos) * len(dirs)
    rest = (if_code * len(protos) + pcode) * len(dirs) + dir_code
    g, r, b, p, f = _sums(np, group, rest, nbytes, packets, None, nr)
    m, a = np.divmod(g, len(agents))
    i, rem = np.divmod(r, len(protos) * len(dirs))
    pr, d = np.divmod(rem, len(dirs))
    ml, al, il, prl, dl = m.tolist(), a.tolist(), i.tolist(), pr.tolist(), d.tolist()
    return [(int(minutes[ml[k]]), agents[al[k]], if_names[il[k]], int(protos[prl[k]]), dirs[dl[k]], bb, pp, ff)
            for k, (bb, pp, ff) in enumerate(zip(b.tolist(), p.tolist(), f.tolist()))]


def coarse_totals(totals):
    """The 1m totals summed into each coarser resolution: {res: [(bucket, ...same as totals)]}."""
    out = {}
    for res, step in RESOLUTIONS.items():
        if res == "1m":
            continue
        sums = {}
        for bucket, agent, if_name, proto, direction, b, p, f in totals:
            k = (bucket // step * step, agent, if_name, proto, direction)
            s = sums.get(k)
            sums[k] = (b, p, f) if s is None else (s[0] + b, s[1] + p, s[2] + f)
        out[res] = [k + v for k, v in sorted(sums.items())]
    return out


def rollup_buckets(totals):
    """[(resolution, bucket)] of every rollup bucket the 1m totals add to (their partitions)."""
    minutes = {t[0] for t in totals}
    return sorted({(res, m // step * step) for res, step in RESOLUTIONS.items() for m in minutes})
