"""Per-interval totals of a batch of flow rows (spread over the intervals a flow spans), in Python and compiled."""
from itertools import count, repeat

from myason import kernels
from myason.schema import INDEX as _I


I_FIRST, I_LAST, I_BYTES, I_PACKETS = _I["first"], _I["last"], _I["bytes"], _I["packets"]
I_AGENT, I_IF_NAME, I_IN_IF, I_PROTO, I_IPV = (
    _I["agent"], _I["if_name"], _I["in_if"], _I["proto"], _I["ip_version"])
MAX_SPREAD = 1000           # a flow spanning more intervals than this is attributed to its first


def spread(first, last, nbytes, npackets, interval):
    """[(bucket, bytes, packets)]: a flow split over the intervals it overlaps, by time.

    Shares are taken from cumulative floors so the parts always sum exactly to the totals;
    buckets that receive nothing are left out. bucket = int(time // interval).
    """
    b0 = int(first // interval)
    b1 = int(last // interval)
    duration = last - first
    if b1 <= b0 or duration <= 0 or b1 - b0 > MAX_SPREAD:
        return [(b0, nbytes, npackets)]
    out = []
    done_b = done_p = 0
    for b in range(b0, b1 + 1):
        if b == b1:
            cum_b, cum_p = nbytes, npackets
        else:
            frac = min(1.0, ((b + 1) * interval - first) / duration)
            cum_b, cum_p = int(nbytes * frac), int(npackets * frac)
        if cum_b != done_b or cum_p != done_p:
            out.append((b, cum_b - done_b, cum_p - done_p))
        done_b, done_p = cum_b, cum_p
    return out


def aggregate(rows, interval, extra=()):
    """(totals, skipped): {(bucket, agent, iface, proto, ip_version, extras): [bytes, packets, flows]}.

    `extra` is a sequence of functions row -> tag value. Bytes and packets are split over the
    intervals a flow overlaps (spread); the flow itself counts once, in the interval of `first`.
    Rows that cannot be read are skipped and counted, never raised.
    """
    totals = {}
    skipped = 0
    no_extra = ()
    for row in rows:
        try:
            first, last = row[I_FIRST], row[I_LAST]
            nbytes, npackets = int(row[I_BYTES]), int(row[I_PACKETS])
            b0 = int(first // interval)
            single = int(last // interval) <= b0
            parts = None if single else spread(first, last, nbytes, npackets, interval)
            ex = tuple(f(row) for f in extra) if extra else no_extra
            ident = (row[I_AGENT], row[I_IF_NAME] or row[I_IN_IF], row[I_PROTO], row[I_IPV], ex)
        except (TypeError, ValueError, IndexError, OverflowError, KeyError):
            skipped += 1
            continue
        if single:
            key = (b0,) + ident
            cell = totals.get(key)
            if cell is None:
                totals[key] = [nbytes, npackets, 1]
            else:
                cell[0] += nbytes
                cell[1] += npackets
                cell[2] += 1
            continue
        for b, pb, pp in parts:
            key = (b,) + ident
            cell = totals.get(key)
            if cell is None:
                cell = totals[key] = [0, 0, 0]
            cell[0] += pb
            cell[1] += pp
        cell = totals.get((b0,) + ident)
        if cell is None:
            totals[(b0,) + ident] = [0, 0, 1]
        else:
            cell[2] += 1
    return totals, skipped


def aggregate_fast(rows, interval, extra_cols, columns=None):
    """aggregate() with the compiled kernel, for extra tags that are plain columns (row indexes).

    The same totals (tested); None when the kernels are missing or a value does not fit the
    arrays (odd types, huge counters), and the caller then uses aggregate().
    """
    k = kernels.load_or_none()
    if k is None or not rows:
        return None
    import numpy as np
    n = len(rows)
    try:
        cols = columns if columns is not None else list(zip(*rows))
        iface = [a or b for a, b in zip(cols[I_IF_NAME], cols[I_IN_IF])]
        extras = zip(*(cols[i] for i in extra_cols)) if extra_cols else repeat(())
        series = {}         # ident -> index of its first row
        ident = np.fromiter(map(series.setdefault, zip(cols[I_AGENT], iface, cols[I_PROTO], cols[I_IPV], extras),
                                count()), dtype=np.int64, count=n)
        first = np.array(cols[I_FIRST], dtype=np.float64)
        last = np.array(cols[I_LAST], dtype=np.float64)
        nbytes = np.array(cols[I_BYTES])
        npackets = np.array(cols[I_PACKETS])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if (nbytes.dtype.kind != "i" or npackets.dtype.kind != "i" or not np.isfinite(first).all()
            or not np.isfinite(last).all() or (first < 0).any() or (last < 0).any()
            or max(int(nbytes.max()), int(npackets.max())) > (1 << 62) // n or min(nbytes.min(), npackets.min()) < 0):
        return None
    b0 = first // interval
    span = np.clip(last // interval - b0, 0, MAX_SPREAD + 1)
    cap = 2 * n + int(span.sum()) + 16
    out = [np.empty(cap, dtype=np.int64) for _ in range(5)]
    m = k.spread_rows(ident, first, last, nbytes.astype(np.int64, copy=False),
                      npackets.astype(np.int64, copy=False), interval, MAX_SPREAD, *out)
    if m < 0:
        return None
    o_ident, o_bucket, o_bytes, o_packets, o_flows = (a[:m] for a in out)
    # One int64 key per (bucket, series): buckets of one batch are close together.
    lo = int(o_bucket.min())
    uniq, inv = np.unique((o_bucket - lo) * (n + 1) + o_ident, return_inverse=True)
    sums = np.zeros((3, len(uniq)), dtype=np.int64)
    for j, col in enumerate((o_bytes, o_packets, o_flows)):
        np.add.at(sums[j], inv, col)
    by_row = {i: key for key, i in series.items()}
    buckets, idents = divmod(uniq, n + 1)
    totals = {(b + lo,) + by_row[i]: [nb, npk, nf] for b, i, nb, npk, nf in zip(
        buckets.tolist(), idents.tolist(), *(x.tolist() for x in sums))}
    return totals, 0


