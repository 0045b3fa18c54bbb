"""InfluxDB 1.x retention policies and downsampling continuous queries, against the real server."""
import logging
import re
import time

import pytest

from myason.schema import ROW_FIELDS
from myason.store.base import writer_class
from tests.support.services import influx_query, influx_rows

HOUR = 3600
OPTS = {"retention": "30d", "downsample": [{"every": "1h", "retention": "52w"}, {"every": "1d", "retention": 0}]}


def writer(servers, db, tmp_path, **opts):
    return writer_class("influxdb")(url=servers.influx_url, api="v1", database=db, instance="rtest",
                                    state_file=str(tmp_path / "state"), **opts)


def rows(t0, n=40):
    """n short flows, 3 per minute from t0, over two agents and two protocols."""
    out = []
    for i in range(n):
        first = t0 + i * 20.0
        d = dict(src_ip="10.0.0.%d" % (i % 9 + 1), dst_ip="192.0.2.1", src_port=1000 + i, dst_port=443,
                 proto=6 if i % 2 else 17, tos=0, packets=i + 1, bytes=100 * (i + 1), first=first, last=first + 1.5,
                 tcp_flags=0, agent="a%d" % (i % 2), if_name="eth0", in_if=1, out_if=0, ip_version=4, vlan=0,
                 next_hop="", src_mask=0, dst_mask=0, src_as=0, dst_as=0, end_reason="idle",
                 received=first + 5, exporter="127.0.0.1")
        out.append([d[f] for f in ROW_FIELDS])
    return out


def show(url, db):
    pols = {r["name"]: (r["duration"], r["default"]) for r in influx_rows(influx_query(
        url, 'SHOW RETENTION POLICIES ON "%s"' % db, db=db))}
    cqs = {r["name"]: r["query"] for r in influx_rows(influx_query(url, "SHOW CONTINUOUS QUERIES", db=db))
           if r["measurement"] == db}
    return pols, cqs


def run_cq_by_hand(url, db, cq_text, start_ns, end_ns):
    """What the CQ does for [start, end): its SELECT ... INTO with an explicit time range."""
    m = re.search(r"BEGIN (SELECT .*) (GROUP BY .*) END$", cq_text)
    influx_query(url, "%s WHERE time >= %d AND time < %d %s" % (m.group(1), start_ns, end_ns, m.group(2)), db=db)


def test_policies_and_queries_created_once_and_downsampling_sums(servers, influx_db, tmp_path, caplog):
    url = servers.influx_url
    t0 = (int(time.time()) // HOUR - 3) * HOUR           # three whole hours ago
    w = writer(servers, influx_db, tmp_path, **OPTS)
    with caplog.at_level(logging.INFO, logger="myason.store.influxdb"):
        w.open()
    assert len(w.retention_changes) == 3 + 4             # 3 policies, 2 measurements x 2 levels
    pols, cqs = show(url, influx_db)
    assert pols["rp_raw"] == ("720h0m0s", True)
    assert pols["rp_1h"] == ("8736h0m0s", False) and pols["rp_1d"] == ("0s", False)
    assert set(cqs) == {"cq_flows_1h", "cq_events_1h", "cq_flows_1d", "cq_events_1d"}
    assert "INTO %s.rp_1h.flows FROM %s.rp_raw.flows GROUP BY time(1h), *" % (influx_db, influx_db) in cqs["cq_flows_1h"]
    data = rows(t0, 400)                                  # 400 flows over 2 h 13 min
    w.write("b1", data[:200])
    w.write("b2", data[200:])
    w.close()

    # A second open() changes nothing.
    w2 = writer(servers, influx_db, tmp_path, **OPTS)
    w2.open()
    assert w2.retention_changes == []
    w2.close()
    assert show(url, influx_db) == (pols, cqs)

    # Raw points went to rp_raw, which Grafana's plain `FROM "flows"` reads (it is the default).
    raw = influx_rows(influx_query(url, 'SELECT sum("bytes") AS b, sum("packets") AS p FROM "flows" '
                                        'WHERE time >= %ds GROUP BY time(1h), "agent"' % t0, db=influx_db))
    assert sum(r["b"] or 0 for r in raw) == sum(r[ROW_FIELDS.index("bytes")] for r in data)

    # The continuous query's work for the two complete past hours, run by hand (the test server
    # has the CQ service off): per hour and tag set, the sums of the raw points.
    run_cq_by_hand(url, influx_db, cqs["cq_flows_1h"], t0 * 10**9, (t0 + 2 * HOUR) * 10**9)
    down = influx_rows(influx_query(url, 'SELECT sum("bytes") AS b, sum("packets") AS p, sum("flows") AS f '
                                         'FROM "rp_1h"."flows" GROUP BY time(1h), "agent"', db=influx_db))
    want = {}
    for r in data:
        hour = int(r[ROW_FIELDS.index("first")]) // HOUR * HOUR
        if hour < t0 + 2 * HOUR:
            key = (hour, r[ROW_FIELDS.index("agent")])
            b, p, f = want.get(key, (0, 0, 0))
            want[key] = (b + r[ROW_FIELDS.index("bytes")], p + r[ROW_FIELDS.index("packets")], f + 1)
    got = {(r["time"] // 10**9, r["agent"]): (r["b"], r["p"], r["f"]) for r in down if r["b"] is not None}
    assert got == want and len(got) == 4
    # One point per hour and tag set: downsampling cut the point count.
    n_raw = influx_rows(influx_query(url, 'SELECT count("bytes") FROM "flows" WHERE time < %ds' % (t0 + 2 * HOUR),
                                     db=influx_db))[0]["count"]
    n_down = influx_rows(influx_query(url, 'SELECT count("bytes") FROM "rp_1h"."flows"', db=influx_db))[0]["count"]
    assert n_down < n_raw

    # Changed options: the raw policy is altered, the continuous queries replaced; then stable again.
    opts = dict(OPTS, retention="20d", downsample=[{"every": "1h", "retention": "52w", "for": "3h"}])
    w3 = writer(servers, influx_db, tmp_path, **opts)
    w3.open()
    assert w3.retention_changes[0].startswith('ALTER RETENTION POLICY "rp_raw"')
    assert sum(s.startswith("DROP CONTINUOUS QUERY") for s in w3.retention_changes) == 2
    w3.close()
    pols3, cqs3 = show(url, influx_db)
    assert pols3["rp_raw"] == ("480h0m0s", True) and "FOR 3h" in cqs3["cq_flows_1h"]
    w4 = writer(servers, influx_db, tmp_path, **opts)
    w4.open()
    assert w4.retention_changes == []
    w4.close()


def test_victoriametrics_skips_with_one_line(servers, tmp_path, caplog):
    pytest.importorskip("influxdb_client")
    if not servers.vm_url:
        pytest.skip("VictoriaMetrics not started")
    w = writer_class("influxdb")(url=servers.vm_url, api="v2", bucket="b", instance="rtest", **OPTS)
    with caplog.at_level(logging.INFO, logger="myason.store.influxdb"):
        w.open()
        w.close()
        w.open()
        w.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "myason.store.influxdb"]
    assert len(lines) == 1 and "-retentionPeriod" in lines[0] and "Enterprise" in lines[0]
