"""The InfluxDB writer against real servers: InfluxDB 1.6.7 (api v1) and VictoriaMetrics (api v2)."""
import socket
import time
import uuid

import pytest

from myason.schema import ROW_FIELDS
from myason.store.base import WriterError, writer_class
from tests.support.rows import T0, random_rows, totals
from tests.support.services import influx_query, influx_rows, influx_write, vm_export
from tests.support.stores import v1_writer


def influx_sums(url, db):
    rows = influx_rows(influx_query(url, "SELECT sum(bytes), sum(packets), sum(flows) FROM flows", db=db))
    if not rows:
        return (0, 0, 0)
    return rows[0]["sum"], rows[0]["sum_1"], rows[0]["sum_2"]


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_v1_sums_match_rows_and_retries_count_once(servers, influx_db, tmp_path):
    w = v1_writer(servers, influx_db, tmp_path)
    w.open()
    batches = [random_rows(3000, seed) for seed in range(4)]   # same intervals and series in every batch
    for n, rows in enumerate(batches):
        w.write("batch-%d" % n, rows)
    w.write("batch-1", batches[1])                           # a retry after a lost answer
    w.close()
    all_rows = [r for b in batches for r in b]
    assert influx_sums(servers.influx_url, influx_db) == totals(all_rows)
    # A restart with the same state file: the retried batch still lands on its own points.
    w2 = v1_writer(servers, influx_db, tmp_path)
    w2.write("batch-3", batches[3])
    w2.close()
    assert influx_sums(servers.influx_url, influx_db) == totals(all_rows)
    # Bounded cardinality: 2 agents x 4 interface values x 5 protocols x 2 IP versions at most.
    series = influx_rows(influx_query(servers.influx_url, "SHOW SERIES FROM flows", db=influx_db))
    assert 0 < len(series) <= 2 * 4 * 5 * 2
    assert not any("10." in s["key"] for s in series)


def points(url, db):
    # Every point, its time cut to the interval (the offset inside it is each writer's batch number).
    rows = influx_rows(influx_query(url, "SELECT * FROM flows GROUP BY *", db=db))
    return sorted((dict(r, time=r["time"] // 10**10) for r in rows), key=lambda r: sorted(map(str, r.items())))


def test_prepared_batches_give_the_same_points_as_write(servers, influx_db, tmp_path):
    # The processors aggregate (spool_encoder), the writer numbers, formats and sends
    # (write_prepared): the points must be those write() makes, retries included.
    from myason.enrich import build_pipeline
    from myason.store.base import decode_prepared
    batches = [random_rows(2000, seed) for seed in range(3)]
    enriched = [list(r) for r in batches[2]]
    build_pipeline({"local_networks": ["10.0.0.0/8"]}).enrich(enriched)
    batches[2] = enriched
    other = influx_db + "_p"
    opts = dict(url=servers.influx_url, api="v1", instance="itest", enrich_tags=["direction", "service"])
    direct = writer_class("influxdb")(database=influx_db, state_file=str(tmp_path / "a.state"), **opts)
    prepared = writer_class("influxdb")(database=other, state_file=str(tmp_path / "b.state"), **opts)
    prepare = writer_class("influxdb").spool_encoder(dict(opts, database=other))
    events = [{"ID": "e1", "Category": ["Recon.Scanning"], "DetectTime": "2023-11-14T22:15:00Z",
               "Node": [{"Name": "org.example.myason", "Type": ["Flow"], "SW": ["myason"]}]}]
    for n, rows in enumerate(batches):
        direct.write("batch-%d" % n, rows, events=events if n == 1 else ())
        header, payload = decode_prepared(prepare(rows, events if n == 1 else ()))
        prepared.write_prepared("batch-%d" % n, header, payload)
        if n == 1:
            prepared.write_prepared("batch-%d" % n, header, payload)       # a retry: same points
    direct.close()
    prepared.close()
    got, want = points(servers.influx_url, other), points(servers.influx_url, influx_db)
    assert got == want and len(want) > 10
    assert influx_sums(servers.influx_url, other) == totals([r for b in batches for r in b])
    q = "SELECT count(*) FROM events"
    assert influx_rows(influx_query(servers.influx_url, q, db=other)) == influx_rows(
        influx_query(servers.influx_url, q, db=influx_db))


def test_damaged_or_mismatched_prepared_batch_is_permanent(servers, influx_db, tmp_path):
    w = v1_writer(servers, influx_db, tmp_path, interval=10)
    prepare = writer_class("influxdb").spool_encoder(dict(url=servers.influx_url, interval=60))
    from myason.store.base import decode_prepared
    header, payload = decode_prepared(prepare(random_rows(10, 1)))
    for bad in (header, dict(header, totals=[[1, 2]]), {"rows": 1}):
        with pytest.raises(WriterError) as err:
            w.write_prepared("b", bad, payload)
        assert err.value.permanent
    w.close()


def test_v1_tag_values_read_back(servers, influx_db, tmp_path):
    w = v1_writer(servers, influx_db, tmp_path)
    w.write("b", random_rows(500, 9))
    w.close()

    def values(key):
        q = 'SHOW TAG VALUES FROM flows WITH KEY = "%s"' % key
        return sorted(r["value"] for r in influx_rows(influx_query(servers.influx_url, q, db=influx_db)))
    assert values("agent") == ["agent 2,x=y", "agent-1"]
    assert values("interface") == ["-", "3", "eth0", "if/"]
    assert set(values("protocol")) == {"tcp", "udp", "icmp", "icmpv6", "47"}
    assert values("collector") == ["itest"]
    # Per-protocol sums, as a Grafana panel would ask for them.
    rows = random_rows(500, 9)
    q = "SELECT sum(bytes) FROM flows WHERE protocol = 'tcp'"
    tcp = influx_rows(influx_query(servers.influx_url, q, db=influx_db))[0]["sum"]
    assert tcp == sum(r[ROW_FIELDS.index("bytes")] for r in rows if r[ROW_FIELDS.index("proto")] == 6)


def test_v1_interval_bucketing_in_grafana_query(servers, influx_db, tmp_path):
    w = v1_writer(servers, influx_db, tmp_path, interval=10)
    rows = random_rows(2000, 3, span=60.0)
    w.write("b1", rows[:1000])
    w.write("b2", rows[1000:])
    w.close()
    q = ("SELECT sum(bytes) FROM flows WHERE time >= %ds AND time < %ds GROUP BY time(10s) fill(none)"
         % (T0 - 100, T0 + 200))
    got = influx_rows(influx_query(servers.influx_url, q, db=influx_db, epoch="s"))
    assert all(r["time"] % 10 == 0 for r in got)
    assert sum(r["sum"] for r in got) == totals(rows)[0]


def test_v1_parse_error_is_permanent(servers, influx_db, tmp_path):
    w = v1_writer(servers, influx_db, tmp_path)
    w.open()
    # A string field `bytes` already in this shard: our integer field conflicts -> HTTP 400.
    influx_write(servers.influx_url, 'flows,agent=x bytes="text" %d' % int(T0 * 1e9), db=influx_db)
    with pytest.raises(WriterError) as exc:
        w.write("b", random_rows(10, 1))
    assert exc.value.permanent
    w.close()


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_server_down_is_retryable(api, tmp_path):
    w = writer_class("influxdb")(url="http://127.0.0.1:%d" % closed_port(), api=api, timeout=2,
                                 state_file=str(tmp_path / "st"))
    t = time.monotonic()
    with pytest.raises(WriterError) as exc:
        w.open()
    assert not exc.value.permanent
    w.opened = True                  # as if the server went away after open()
    with pytest.raises(WriterError) as exc:
        w.write("b", random_rows(10, 1))
    assert not exc.value.permanent
    assert time.monotonic() - t < 10
    w.close()


def test_v2_to_victoriametrics(servers, tmp_path):
    if not servers.vm_url:
        pytest.skip("VictoriaMetrics not started")
    meas = "t%s" % uuid.uuid4().hex[:10]
    w = writer_class("influxdb")(url=servers.vm_url, api="v2", bucket="myason", org="myason",
                                 token="unused", measurement=meas, instance="itest", precision="ms",
                                 state_file=str(tmp_path / "st"))
    w.open()
    batches = [random_rows(2000, 10 + s) for s in range(3)]
    for n, rows in enumerate(batches):
        w.write("b%d" % n, rows)
    w.close()
    want = totals([r for b in batches for r in b])
    got = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        series = vm_export(servers.vm_url, '{__name__=~"%s_.*"}' % meas)
        got = {}
        for s in series:
            name = s["metric"]["__name__"][len(meas) + 1:]
            got[name] = got.get(name, 0) + sum(s["values"])
        if (got.get("bytes"), got.get("packets"), got.get("flows")) == want:
            break
        time.sleep(0.3)
    assert (got.get("bytes"), got.get("packets"), got.get("flows")) == want
    labels = {k for s in series for k in s["metric"]}
    assert labels <= {"__name__", "agent", "collector", "interface", "ip_version", "protocol", "db"}


def test_v1_throughput_10k_rows(servers, influx_db, tmp_path, capsys):
    w = v1_writer(servers, influx_db, tmp_path)
    w.open()
    batches = [random_rows(10000, 100 + s, span=300.0) for s in range(5)]
    t = time.perf_counter()
    for n, rows in enumerate(batches):
        w.write("perf-%d" % n, rows)
    rate = 50000 / (time.perf_counter() - t)
    w.close()
    with capsys.disabled():
        print("\ninfluxdb writer v1: %.0f flows/s (10,000-row batches, %d points)" % (rate, w.points))
    assert influx_sums(servers.influx_url, influx_db) == totals([r for b in batches for r in b])
    assert rate > 5000          # a sanity floor: the machine is shared, the figure is printed


def test_through_spool_and_writer_thread(servers, influx_db, tmp_path):
    import threading
    from myason.collector.sink import WriterThread
    from myason.collector.spool import Spool
    from myason.store.base import encode_batch
    spool = Spool(tmp_path / "spool", fsync=False)
    batches = [random_rows(1000, 200 + s) for s in range(5)]
    for rows in batches:
        spool.put(encode_batch(rows))
    stop = threading.Event()
    th = WriterThread(v1_writer(servers, influx_db, tmp_path), spool, stop)
    th.start()
    deadline = time.monotonic() + 20
    while th.batches < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    th.join(10)
    assert th.error is None and th.batches == 5 and spool.depth() == (0, 0, 0)
    assert influx_sums(servers.influx_url, influx_db) == totals([r for b in batches for r in b])
