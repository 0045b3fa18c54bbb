"""The InfluxDB writer's aggregation: the compiled path gives exactly aggregate()'s totals."""
import random

import pytest

from myason import kernels
from myason.schema import ENRICHED_ROW_FIELDS, ROW_FIELDS
from myason.store.influxdb import MAX_SPREAD, InfluxDBWriter, aggregate, aggregate_fast

pytestmark = pytest.mark.skipif(kernels.load_or_none() is None, reason="numba is not installed")
I = {f: n for n, f in enumerate(ENRICHED_ROW_FIELDS)}


def rows_of(n, seed, interval=10, enriched=False):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rnd.random()
        first = 1.7e9 + rnd.choice((rnd.random() * 300, rnd.randrange(30) * interval, rnd.randrange(30) * interval - 1e-6))
        if kind < 0.3:
            last = first                                     # one instant
        elif kind < 0.5:
            last = first + rnd.random() * interval * 3       # a few intervals
        elif kind < 0.55:
            last = first + interval * (MAX_SPREAD + 5)       # too long to spread
        else:
            last = first + rnd.random() * 90
        packets = rnd.choice((1, 2, 3, rnd.randrange(1, 10**6)))
        row = dict(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2, proto=rnd.choice((6, 17, 1, 47)),
                   tos=0, packets=packets, bytes=packets * rnd.randrange(40, 1500), first=first, last=last,
                   tcp_flags=0, agent=rnd.choice(("a1", "a 2")), if_name=rnd.choice(("eth0", "", "x")),
                   in_if=rnd.choice((0, 3)), out_if=0, ip_version=rnd.choice((4, 6)), vlan=rnd.choice((0, 7)),
                   next_hop="", src_mask=0, dst_mask=0, src_as=0, dst_as=0, end_reason="idle",
                   received=first + 60, exporter="127.0.0.1", direction=rnd.choice(("in", "out", "")),
                   service=rnd.choice(("https", "")), src_country="", dst_country="", src_asn=0, dst_asn=0,
                   src_as_org="", dst_as_org="", src_host="", dst_host="")
        out.append([row[f] for f in (ENRICHED_ROW_FIELDS if enriched else ROW_FIELDS)])
    return out


@pytest.mark.parametrize("interval", [1, 10, 60])
@pytest.mark.parametrize("seed", range(4))
def test_same_totals_as_aggregate(interval, seed):
    rows = rows_of(3000, seed, interval)
    w = InfluxDBWriter(url="http://127.0.0.1:1", interval=interval, extra_tags=["vlan", "if_name"])
    want = aggregate(rows, interval, w.extra_fns)
    assert aggregate_fast(rows, interval, w.extra_cols) == want
    assert want[1] == 0 and len(want[0]) > 50


def test_enriched_rows_with_enrich_tags():
    rows = rows_of(2000, 7, enriched=True)
    w = InfluxDBWriter(url="http://127.0.0.1:1", enrich_tags=["direction", "service"])
    is_enriched, totals, skipped = w.totals(rows)
    assert is_enriched and (totals, skipped) == aggregate(rows, 10, w.enriched_fns)
    assert {k[5] for k in totals} <= {("in", "https"), ("in", ""), ("out", "https"), ("out", ""), ("", "https"), ("", "")}


@pytest.mark.parametrize("change", [
    lambda r: r.__setitem__(I["bytes"], "many"), lambda r: r.__setitem__(I["first"], float("nan")),
    lambda r: r.__setitem__(I["bytes"], 1 << 63), lambda r: r.__setitem__(I["packets"], 2.5),
    lambda r: r.__setitem__(I["first"], -5.0)])
def test_odd_values_leave_it_to_aggregate(change):
    rows = rows_of(50, 1)
    change(rows[20])
    w = InfluxDBWriter(url="http://127.0.0.1:1")
    assert aggregate_fast(rows, 10, w.extra_cols) is None
    # and the writer still aggregates (the Python path skips and counts what it cannot read)
    assert w.totals(rows)[1:] == aggregate(rows, 10, w.extra_fns)


def test_tag_function_hook_uses_the_python_path():
    class Hooked(InfluxDBWriter):
        tag_functions = (("big", lambda row: "yes" if row[I["bytes"]] > 10000 else "no"),)
    rows = rows_of(500, 3)
    w = Hooked(url="http://127.0.0.1:1")
    assert w.extra_cols is None
    totals = w.totals(rows)[1]
    assert {k[5] for k in totals} == {("yes",), ("no",)}
