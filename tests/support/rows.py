"""Valid collector rows (ROW_FIELDS order) for the store tests: one with chosen fields, numbered ones,
ones spread over days, random ones, and their totals."""
import random

from myason.schema import ROW_FIELDS

T0 = 1700000000.0         # 2023-11-14 22:13:20 UTC
MIDNIGHT = 1700006400.0   # 2023-11-15 00:00:00 UTC


def row_with(**kw):
    """One valid collector row (ROW_FIELDS order) with the named fields changed."""
    base = dict(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1234, dst_port=80, proto=6, tos=0,
                packets=2, bytes=200, first=1000.0, last=1000.5, tcp_flags=0, agent="a1",
                if_name="eth0", in_if=2, out_if=0, ip_version=4, vlan=0, next_hop="", src_mask=0,
                dst_mask=0, src_as=0, dst_as=0, end_reason="idle", received=1001.0, exporter="192.0.2.1")
    base.update(kw)
    return [base[f] for f in ROW_FIELDS]


def numbered_rows(n, start=0, t=T0):
    """n distinct valid rows in ROW_FIELDS order; src_port carries the row number."""
    return [["10.0.%d.%d" % (i // 256 % 256, i % 256), "2001:db8::%x" % (i + 1), start + i, 443, 6, 0,
             2, 120 + i, t + i * 0.001, t + i * 0.001 + 1.5, 0x1b, "edge-1", "eth0", 2, 3, 4, 0,
             "192.0.2.1" if i % 2 else "", 24, 64, 0, 4200000000, "idle", t + 5.0, "127.0.0.1"]
            for i in range(n)]


def spread_rows(n, start=0, t=MIDNIGHT, span=0.0):
    """n distinct valid rows (IPv4 and IPv6, with and without a next hop); src_port carries the row
    number, `first` spreads over `span` s."""
    rows = []
    for i in range(n):
        first = t + (span * i / max(n - 1, 1) if span else i * 0.001)
        v6 = i % 3 == 0
        rows.append([
            "2001:db8::%x" % (i + 1) if v6 else "10.0.%d.%d" % (i // 256 % 256, i % 256),
            "2001:db8:1::%x" % (i % 7 + 1) if v6 else "192.0.2.%d" % (i % 250),
            start + i, 443, 6, i % 256, 1 + i % 5, 100 + i, first, first + 0.123456, 0x1b,
            "edge-1", "eth0" if i % 2 else "", 2, 3, 6 if v6 else 4, i % 4096,
            "" if i % 2 else ("fe80::1" if v6 else "192.0.2.254"), 24, 64, 0, 4200000000,
            "idle", first + 5.5, "127.0.0.1"])
    return rows


def random_rows(n, seed, t0=T0, span=120.0):
    """n random valid rows of two agents (one with a name to escape) starting in [t0, t0 + span)."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        first = t0 + rnd.random() * span
        d = dict(src_ip="10.%d.%d.%d" % (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)),
                 dst_ip="192.0.2.%d" % rnd.randrange(256), src_port=rnd.randrange(65536),
                 dst_port=rnd.randrange(65536), proto=rnd.choice((6, 17, 1, 58, 47)), tos=0,
                 packets=rnd.randint(1, 50), bytes=rnd.randint(40, 90000), first=first,
                 last=first + rnd.choice((0.0, rnd.random() * 40)), tcp_flags=0,
                 agent=rnd.choice(("agent-1", "agent 2,x=y")), if_name=rnd.choice(("eth0", "if\\", "")),
                 in_if=rnd.choice((0, 3)), out_if=0, ip_version=rnd.choice((4, 6)), vlan=0, next_hop="",
                 src_mask=0, dst_mask=0, src_as=0, dst_as=0, end_reason="idle", received=first + 60,
                 exporter="127.0.0.1")
        rows.append([d[f] for f in ROW_FIELDS])
    return rows


def totals(rows):
    """(bytes, packets, flows) of the rows."""
    i = {f: n for n, f in enumerate(ROW_FIELDS)}
    return sum(r[i["bytes"]] for r in rows), sum(r[i["packets"]] for r in rows), len(rows)
