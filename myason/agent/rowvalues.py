"""Values of record rows from the fast engine's arrays: address texts, route and ASN
annotations, times rounded to the microsecond exactly as round(t, 6) does.

Shared by the rows the processor hands to the exporter (agent/process.py) and the record files
written from whole columns (agent/fastoutput.py).
"""
import socket

import numpy as np


def addr_texts(hi, lo, v4):
    """socket.inet_ntop texts of address key words; IPv4 converted once per distinct address."""
    out = np.empty(len(lo), dtype=object)
    if v4.any():
        uniq, inv = np.unique(lo[v4], return_inverse=True)
        ntoa = socket.inet_ntoa
        out[v4] = np.array([ntoa(x.to_bytes(4, "big")) for x in uniq.tolist()], dtype=object)[inv]
    v6 = ~v4
    if v6.any():
        ntop, af6 = socket.inet_ntop, socket.AF_INET6
        out[v6] = [ntop(af6, ((h << 64) | l).to_bytes(16, "big"))
                   for h, l in zip(hi[v6].tolist(), lo[v6].tolist())]
    return out.tolist()


def annotate(w, version, routes, asn):
    """(out_if, next_hop, src_mask, dst_mask, src_as, dst_as) of key words w."""
    alen = 4 if version == 4 else 16
    src = ((w[0] << 64) | w[1]).to_bytes(16, "big")[16 - alen:]
    dst = ((w[2] << 64) | w[3]).to_bytes(16, "big")[16 - alen:]
    out_if, next_hop, src_mask, dst_mask = routes.annotate(src, dst) if routes else (0, "", 0, 0)
    return (out_if, next_hop, src_mask, dst_mask, asn.lookup(src) if asn else 0,
            asn.lookup(dst) if asn else 0)


def round6(x):
    """[round(v, 6) for v in x] for a float64 array, exactly, without a Python call per value."""
    _, out, exact = round6_units(x)
    if not exact.all():
        odd = ~exact
        out[odd] = [round(v, 6) for v in x[odd].tolist()]
    return out.tolist()


def round6_units(x):
    """(n, n / 1e6, exact) for a float64 array: where exact (|v| < 4e9), n is the integer
    (as float64) with round(v, 6) == n / 1e6; elsewhere round() itself is needed."""
    with np.errstate(invalid="ignore", over="ignore"):   # inf and nan are redone by the caller
        hi = x * 1e6
        # Dekker's product: hi + lo is exactly x * 10**6 (1e6 needs no split: 14 bits).
        c = 134217729.0 * x
        xh = c - (c - x)
        lo = (xh * 1e6 - hi) + (x - xh) * 1e6
        # round() rounds the exact value half to even; hi differs from it only on a tie of hi.
        fl = np.floor(hi)
        tie = (hi - fl) == 0.5
        n = np.where(tie & (lo > 0), fl + 1.0, np.where(tie & (lo < 0), fl, np.rint(hi)))
        # n / 1e6 is correctly rounded, like the decimal string round() converts back.
        out = n / 1e6
    return n, out, np.abs(x) < 4e9   # x * 1e6 beyond 2**52, inf, nan: not exact
