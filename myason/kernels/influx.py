"""Kernel of the InfluxDB writer's aggregation (myason.store.influxdb.aggregate.aggregate_fast).

It splits each flow over the intervals it overlaps exactly as influxdb.spread() does (same
float operations, same truncations), and emits one part per (flow, interval) plus the flow's
own count in the interval of `first`; numpy then sums the parts per (interval, series).
"""
from myason.kernels.registry import kernel, ro


@kernel("int64(%s, %s, %s, %s, %s, int64, int64, int64[::1], int64[::1], int64[::1], int64[::1], "
        "int64[::1])" % (ro("int64"), ro("float64"), ro("float64"), ro("int64"), ro("int64")))
def spread_rows(ident, first, last, nbytes, npackets, interval, max_spread,
                o_ident, o_bucket, o_bytes, o_packets, o_flows):
    """Parts (series, bucket, bytes, packets, flows) of every row into o_*; their count, or -1 if o_* are too short."""
    m = 0
    cap = o_ident.shape[0]
    for i in range(ident.shape[0]):
        f = first[i]
        lst = last[i]
        b0 = int(f // interval)
        b1 = int(lst // interval)
        nb = nbytes[i]
        npk = npackets[i]
        duration = lst - f
        if m + 2 > cap:
            return -1
        o_ident[m] = ident[i]
        o_bucket[m] = b0
        o_bytes[m] = 0
        o_packets[m] = 0
        o_flows[m] = 1
        m += 1
        if b1 <= b0 or duration <= 0 or b1 - b0 > max_spread:
            o_ident[m] = ident[i]
            o_bucket[m] = b0
            o_bytes[m] = nb
            o_packets[m] = npk
            o_flows[m] = 0
            m += 1
            continue
        done_b = 0
        done_p = 0
        for b in range(b0, b1 + 1):
            if b == b1:
                cum_b = nb
                cum_p = npk
            else:
                frac = min(1.0, ((b + 1) * interval - f) / duration)
                cum_b = int(nb * frac)
                cum_p = int(npk * frac)
            if cum_b != done_b or cum_p != done_p:
                if m + 1 > cap:
                    return -1
                o_ident[m] = ident[i]
                o_bucket[m] = b
                o_bytes[m] = cum_b - done_b
                o_packets[m] = cum_p - done_p
                o_flows[m] = 0
                m += 1
            done_b = cum_b
            done_p = cum_p
    return m
