"""Pure parts of the InfluxDB writer: escaping, aggregation, bucketing, batch numbering."""
import json
import re

import pytest

from myason.errors import ConfigError
from myason.schema import ROW_FIELDS
from myason.store.base import WriterError, writer_class
from myason.store import influxdb as ix
from tests.support.rows import row_with


# A line protocol line: measurement, tags (escaped), fields, timestamp.
LINE_RE = re.compile(r"^([^ ,\\]|\\[, ])+(,([^ ,=\\]|\\[ ,=])+=([^ ,=\\]|\\[ ,=])+)* "
                     r"bytes=\d+i,packets=\d+i,flows=\d+i \d+$")


def parse_tags(line):
    head = re.split(r"(?<!\\) ", line, maxsplit=1)[0]
    parts = re.split(r"(?<!\\),", head)
    return dict(re.split(r"(?<!\\)=", p, maxsplit=1) for p in parts[1:])


@pytest.mark.parametrize("value, expected", [
    ("eth0", "eth0"),
    ("a b", "a\\ b"),
    ("a,b=c", "a\\,b\\=c"),
    ("", "-"),
    ("tr\\", "tr/"),
    ("x\ny\tz", "x_y_z"),
    (4, "4"),
    ("ü€", "ü€"),
])
def test_escape_tag(value, expected):
    assert ix.escape_tag(value) == expected


def test_escape_measurement_keeps_equals():
    assert ix.escape_measurement("a b,c=d") == "a\\ b\\,c=d"


def test_proto_names():
    assert [ix.proto_name(p) for p in (6, 17, 1, 58, 47)] == ["tcp", "udp", "icmp", "icmpv6", "47"]


def test_hostile_tag_values_make_valid_lines():
    rows = [row_with(agent="evil agent,x=1\n", if_name="if\\", in_if=0)]
    totals, skipped = ix.aggregate(rows, 10)
    lines = ix.format_lines(totals, 10, 0, "m x", (("collector", "c=1"),))
    assert skipped == 0 and len(lines) == 1
    assert "\n" not in lines[0] and LINE_RE.match(lines[0]), lines[0]
    tags = parse_tags(lines[0])
    assert tags["agent"] == "evil\\ agent\\,x\\=1_"
    assert tags["interface"] == "if/"
    assert tags["collector"] == "c\\=1"
    assert list(tags) == sorted(tags)


def test_interface_falls_back_to_index_then_placeholder():
    totals, _ = ix.aggregate([row_with(if_name="", in_if=7), row_with(if_name="", in_if=0)], 10)
    ifaces = sorted(parse_tags(l)["interface"] for l in ix.format_lines(totals, 10, 0))
    assert ifaces == ["-", "7"]


def test_bucketing_by_interval_start():
    rows = [row_with(first=1000.0, last=1000.0), row_with(first=1009.999, last=1009.999),
            row_with(first=1010.0, last=1010.0)]
    totals, _ = ix.aggregate(rows, 10)
    by_bucket = {k[0]: v for k, v in totals.items()}
    assert by_bucket == {100: [400, 4, 2], 101: [200, 2, 1]}
    lines = ix.format_lines(totals, 10, 123)
    stamps = sorted(int(l.rsplit(" ", 1)[1]) for l in lines)
    assert stamps == [1000 * 10**9 + 123, 1010 * 10**9 + 123]


def test_spread_splits_by_time_and_conserves_totals():
    # 30 s flow starting mid-interval: 5 s, 10 s, 10 s, 5 s of it in four intervals.
    parts = ix.spread(1005.0, 1035.0, 3000, 30, 10)
    assert parts == [(100, 500, 5), (101, 1000, 10), (102, 1000, 10), (103, 500, 5)]
    for first, last, nb, npk in [(1000.3, 1047.7, 1001, 3), (5.5, 6.5, 7, 1), (0.0, 99.99, 1, 1)]:
        parts = ix.spread(first, last, nb, npk, 10)
        assert sum(p[1] for p in parts) == nb and sum(p[2] for p in parts) == npk
        assert all(p[1] >= 0 and p[2] >= 0 for p in parts)


def test_spread_edge_cases():
    assert ix.spread(1000.0, 1000.0, 10, 1, 10) == [(100, 10, 1)]
    assert ix.spread(1000.0, 990.0, 10, 1, 10) == [(100, 10, 1)]       # last < first: no split
    assert ix.spread(0.0, 10.0 * (ix.MAX_SPREAD + 5), 10, 1, 10) == [(0, 10, 1)]
    # Ending exactly on a boundary puts nothing in the next interval.
    assert ix.spread(1000.0, 1010.0, 100, 2, 10) == [(100, 100, 2)]


def test_long_flow_counted_once_in_first_interval():
    totals, _ = ix.aggregate([row_with(first=1005.0, last=1035.0, bytes=3000, packets=30)], 10)
    cells = {k[0]: v for k, v in totals.items()}
    assert cells == {100: [500, 5, 1], 101: [1000, 10, 0], 102: [1000, 10, 0], 103: [500, 5, 0]}


def test_bad_rows_are_skipped_not_raised():
    rows = [row_with(), row_with(bytes="x"), row_with(first=None), row_with(first=float("nan")),
            [1, 2, 3], row_with(last=float("inf")), row_with(bytes=5)]
    totals, skipped = ix.aggregate(rows, 10)
    assert skipped == 5
    assert sum(v[0] for v in totals.values()) == 200 + 5


def test_cardinality_bounded_with_100k_addresses():
    rows = []
    for i in range(100000):
        rows.append(row_with(src_ip="10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255),
                             dst_ip="fd00::%x" % i, src_port=i % 65536, dst_port=(i * 7) % 65536,
                             proto=(6, 17, 1, 58)[i % 4], if_name=("eth0", "eth1")[i % 2],
                             ip_version=(4, 6)[i % 2], first=1000.0 + i % 600, last=1000.0 + i % 600))
    totals, skipped = ix.aggregate(rows, 10)
    lines = ix.format_lines(totals, 10, 0, static_tags=(("collector", "c1"),))
    series = {l.split(" ")[0] for l in lines}
    assert skipped == 0
    assert len(series) <= 8          # 2 interfaces x 4 protocols (ip_version follows the interface)
    assert len(lines) == len(totals) <= 8 * 60
    assert sum(v[0] for v in totals.values()) == 200 * 100000
    assert not any("10." in s or "fd00" in s for s in series)


def test_extra_tag_functions():
    rows = [row_with(vlan=10), row_with(vlan=20), row_with(vlan=10)]
    totals, _ = ix.aggregate(rows, 10, extra=(lambda r: r[ROW_FIELDS.index("vlan")],))
    lines = ix.format_lines(totals, 10, 0, extra_names=("vlan",))
    assert sorted(parse_tags(l)["vlan"] for l in lines) == ["10", "20"]


def test_point_offset_is_inside_interval_and_distinct():
    offs = {ix.point_offset(s, 10) for s in range(1000)}
    assert len(offs) == 1000 and max(offs) < 10 * 10**9
    assert ix.point_offset(10 * 10**9 + 3, 10) == 3
    assert ix.point_offset(7, 10, "ms") == 7 * 10**6
    assert ix.point_offset(10**4 + 7, 10, "ms") == 7 * 10**6


def test_seq_state_persists_and_reuses(tmp_path):
    path = str(tmp_path / "state.json")
    st = ix.SeqState(path)
    st.load(5000)
    a, b = st.seq_for("b1"), st.seq_for("b2")
    assert (a, b) == (5000, 5001) and st.seq_for("b1") == a
    st.close()
    st2 = ix.SeqState(path)
    st2.load(0)                     # a clock that went back does not matter with a state file
    assert st2.seq_for("b2") == b and st2.seq_for("b3") == 5002
    with pytest.raises(ConfigError):
        ix.SeqState(path).load(0)   # st2 still holds the lock
    st2.close()
    assert json.loads(open(path).read())["next"] == 5003


def test_seq_state_damaged_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        ix.SeqState(str(path)).load(0)


def test_seq_state_io_errors(tmp_path):
    with pytest.raises(ConfigError):
        ix.SeqState(str(tmp_path / "missing" / "state.json")).load(0)
    d = tmp_path / "d"
    d.mkdir()
    st = ix.SeqState(str(d / "state.json"))
    st.load(0)
    (d / "state.json.lock").unlink()
    d.rmdir()
    with pytest.raises(WriterError) as exc:     # e.g. disk full: retryable, never an OSError
        st.seq_for("b1")
    assert not exc.value.permanent
    assert st.seq_for("b1") == 0                # the retry keeps its number
    st.close()


def test_seq_state_forgets_old_batches(tmp_path):
    st = ix.SeqState(None)
    st.load(0)
    for i in range(ix.RECENT + 10):
        st.seq_for("b%d" % i)
    assert len(st.recent) == ix.RECENT and "b0" not in st.recent


class FakeTransport:
    def __init__(self, fail=None):
        self.sent, self.fail = [], fail

    def open(self):
        pass

    def send(self, lines):
        if self.fail:
            raise self.fail
        self.sent.append(list(lines))

    def close(self):
        pass


def writer(tmp_path, **kw):
    w = writer_class("influxdb")(url="http://127.0.0.1:1", state_file=str(tmp_path / "st"),
                                 instance="c1", **kw)
    w.transport = FakeTransport()
    return w


def test_retry_writes_identical_points_new_batch_distinct(tmp_path):
    w = writer(tmp_path)
    rows = [row_with(first=1000.0 + i, last=1000.0 + i, proto=(6, 17)[i % 2]) for i in range(30)]
    w.write("b1", rows)
    w.write("b1", rows)             # retried after, e.g., a lost connection
    w.write("b2", rows)
    first, retry, other = w.transport.sent
    assert first == retry
    def stamps(lines):
        return {(line.split(" ")[0], line.rsplit(" ", 1)[1]) for line in lines}

    assert not stamps(first) & stamps(other)   # nothing of b2 can overwrite b1
    w.close()
    # After a restart the retried batch keeps its points (same timestamps), so it overwrites itself.
    w2 = writer(tmp_path)
    w2.write("b1", rows)
    assert w2.transport.sent[0] == first


def test_batch_lines_chunks(tmp_path):
    w = writer(tmp_path, batch_lines=2)
    w.write("b", [row_with(first=1000.0 + 10 * i, last=1000.0 + 10 * i) for i in range(5)])
    assert [len(c) for c in w.transport.sent] == [2, 2, 1]


def test_transport_error_propagates(tmp_path):
    w = writer(tmp_path)
    w.transport = FakeTransport(WriterError("down"))
    with pytest.raises(WriterError):
        w.write("b", [row_with()])


@pytest.mark.parametrize("opts, key", [
    ({}, "url"),
    ({"url": "http://x", "api": "v3"}, "api"),
    ({"url": "http://x", "interval": 0}, "interval"),
    ({"url": "http://x", "interval": 2.5}, "interval"),
    ({"url": "http://x", "extra_tags": ["src_ip"]}, "extra_tags[0]"),
    ({"url": "http://x", "precision": "s"}, "precision"),
    ({"url": "ftp://x"}, "url"),
    ({"url": "http://x", "token_file": "/nonexistent/token"}, "token_file"),
    ({"url": "http://x", "databse": "flows"}, "databse"),
    ({"url": "http://x", "fsync": "yes"}, "fsync"),
    ({"url": "http://x", "retention": "1m"}, "retention"),
    ({"url": "http://x", "token": "t", "username": "u", "password": "p"}, "token"),
])
def test_config_errors_name_the_key(opts, key):
    with pytest.raises(ConfigError) as exc:
        writer_class("influxdb")(**opts)
    assert exc.value.key == "influxdb." + key


def test_http_status_classification():
    assert ix.status_error(400, "unable to parse").permanent
    assert not ix.status_error(500, "boom").permanent
    assert not ix.status_error(503, "").permanent
    assert not ix.status_error(401, "auth").permanent
