"""IDEA times of every detector's events come from the counted flows' own times, whatever order
the flows reach the collector in: WinStartTime <= EventTime <= CeaseTime <= WinEndTime <=
DetectTime, and the events do not change with the arrival order."""
import functools

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from myason.detect import DetectorSet, build_detectors, detector_class, detector_names
from myason.detect.base import DPORT, FIRST
from myason.detect.idea import rfc3339
from myason.detect.scan import VerticalScanDetector
from tests.support.flows import (ACK, DONE, RST, SYN, T0, assert_time_order, check_idea,
                                     flow)

pytest.importorskip("idea.valid")

IDLE = 15.0                      # the agent's cache_inactive_timeout
SCANNER, VICTIM = "203.0.113.66", "10.0.0.5"
OPEN_PORTS = (53, 80, 88)
# Fixed examples, no example database: the same runs every time, in well under a second each.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=40,
                    suppress_health_check=[HealthCheck.too_slow])


def _exported(rows_with_export_time):
    return [row for _at, row in sorted(rows_with_export_time, key=lambda pair: pair[0])]


def vertical_scan(t0=T0):
    """(export time, row) of a SYN scan of ports 1-100 of one host, a port every 0.2 s. The open
    ports answer SYN-ACK and the scanner resets them, so their probes end by RST and the agent
    exports them at once; the others go unanswered and leave when idle expires them. The
    collector thus gets the open ports' probes first, though they started 10 s after the scan."""
    probes = []
    for port in range(1, 101):
        t = t0 + 0.2 * port
        if port in OPEN_PORTS:
            probes.append((t + 0.001, flow(SCANNER, VICTIM, 61000, port, 6, 2, 84, t, 0.001,
                                           SYN | RST)))
        else:
            probes.append((t + IDLE, flow(SCANNER, VICTIM, 61000, port, 6, 1, 44, t)))
    return probes


@pytest.mark.parametrize("path", ["feed", "batch"])
def test_vertical_scan_with_rst_ended_probes_first(path):
    rows = _exported(vertical_scan())
    assert rows[0][DPORT] == OPEN_PORTS[0]          # the field case: a later probe arrives first
    det = VerticalScanDetector()
    if path == "feed":
        det.feed_rows(rows)
    else:
        DetectorSet([det]).feed_rows(rows)
    (ev,) = det.poll(T0 + 400)
    assert_time_order(ev)                   # the field report: WinStartTime 10 s after EventTime
    check_idea(ev)
    assert ev["FlowCount"] == 100 and ev["Target"][0]["Port"] == list(range(1, 101))
    assert ev["WinStartTime"] == ev["EventTime"] == rfc3339(T0 + 0.2)
    assert ev["CeaseTime"] == rfc3339(T0 + 20)
    assert ev["WinEndTime"] == rfc3339(T0 + 300.2)
    assert ev["DetectTime"] == rfc3339(T0 + 400)


def test_late_probes_move_the_window_back():
    det = VerticalScanDetector()
    det.feed_rows(_exported(vertical_scan()))
    # The window is the probes' own, from the first probe (T0 + 0.2) for 300 s, not from the
    # first probe to arrive (T0 + 10.6).
    assert det.poll(T0 + 300) == []
    (ev,) = det.poll(T0 + 301)
    assert ev["WinEndTime"] == rfc3339(T0 + 300.2) and ev["FlowCount"] == 100


def test_detect_time_never_before_the_last_activity():
    # A window rolled over by a flow that starts while a counted one still runs, and a flush
    # with a clock behind the flows: the detection cannot precede what it reports.
    det = detector_class("blocklist")({"window": 60, "lists": [{"cidrs": ["192.0.2.0/24"]}]})
    det.feed(flow("10.0.0.9", "192.0.2.7", 50000, 443, 6, 30, None, T0, 200.0, DONE))
    det.feed(flow("10.0.0.9", "192.0.2.7", 50001, 443, 6, 30, None, T0 + 70, 1.0, DONE))
    det.feed(flow("10.0.0.8", "192.0.2.8", 50002, 443, 6, 30, None, T0 + 5, 100.0, DONE))
    events = det.poll(T0) + det.flush(T0 + 10)
    assert [ev["CeaseTime"] for ev in events] == [rfc3339(T0 + t) for t in (200, 71, 105)]
    for ev in events:
        check_idea(ev)
        assert ev["DetectTime"] == ev["CeaseTime"]


def _trace(t0=T0):
    """Every detector's attack plus benign traffic, as (export time, row); each key's flows start
    within 60 s (the shortest window), so every arrival order makes the same windows."""
    out = vertical_scan(t0)
    for i in range(1, 61):                                   # horizontal scan of tcp/3389
        t = t0 + 0.5 * i
        host = "10.0.1.%d" % i
        out.append((t + IDLE, flow("203.0.113.1", host, 61000, 3389, 6, 1, 44, t)))
        out.append((t, flow(host, "203.0.113.1", 3389, 61000, 6, 1, 40, t, 0, RST | ACK)))
    for i in range(30):                                      # SSH brute force
        t = t0 + 1.5 * i
        out.append((t + 3, flow("203.0.113.3", "10.0.0.22", 40000 + i, 22, 6, 14, None, t, 3.0,
                                DONE)))
    for i in range(200):                                     # SYN flood, retransmitted SYNs
        t = t0 + 0.1 * i
        out.append((t + 3 + IDLE, flow("203.0.113.%d" % (10 + i % 7), "10.0.0.80", 1024 + i, 80,
                                       6, 3, 180, t, 3.0)))
    # Long-lived conversations, exported when they end: late by their duration.
    out.append((t0 + 300, flow("10.0.1.1", "10.0.0.80", 50000, 443, 6, 900, None, t0 + 1, 299.0,
                               DONE)))
    for i in range(4):                                       # contacts with a listed host
        t = t0 + 10 * i
        dur = 400.0 if i == 2 else 1.0
        out.append((t + dur, flow("10.0.0.%d" % (9 + i % 2), "192.0.2.77", 50000 + i, 8443, 6, 9,
                                  None, t, dur, DONE)))
    return out


OPTIONS = {
    "scan_horizontal": {"threshold": 50},
    "scan_vertical": {"threshold": 50},
    "bruteforce": {"threshold": 20},
    "dos": {"syn_packets": 500},
    "blocklist": {"lists": [{"name": "cc", "cidrs": ["192.0.2.0/24"],
                             "category": "Intrusion.Botnet", "report": "peer"}]},
}
TRACE = _trace()
END = T0 + 1000


def _run(name, rows, batches):
    """The events of detector `name` fed rows in batches of the given sizes, then flushed."""
    dets = DetectorSet([detector_class(name)(OPTIONS[name])])
    start = 0
    for size in batches:
        dets.feed_rows(rows[start:start + size])
        start += size
    dets.feed_rows(rows[start:])
    return dets.flush(END)


def _signature(events):
    return sorted(orjson.dumps({k: v for k, v in ev.items() if k != "ID"},
                               option=orjson.OPT_SORT_KEYS) for ev in events)


@functools.lru_cache(maxsize=None)
def reference(name):
    """The events of detector `name` fed the trace in flow-time order."""
    return _run(name, sorted((row for _t, row in TRACE), key=lambda row: row[FIRST]), [])


def test_reference_events():
    # In flow-time order each detector reports its attack once, so the property below compares
    # real events, not empty lists.
    for name in detector_names():
        (ev,) = reference(name)
        check_idea(ev)
    assert reference("dos")[0]["CeaseTime"] == rfc3339(T0 + 300)     # the long conversation
    assert reference("blocklist")[0]["WinEndTime"] == rfc3339(T0 + 420)


@pytest.mark.parametrize("name", sorted(OPTIONS))
@PROPERTY
@given(order=st.randoms(use_true_random=False),
       batches=st.lists(st.integers(1, 200), max_size=8))
def test_events_do_not_depend_on_arrival_order(name, order, batches):
    rows = [row for _t, row in TRACE]
    order.shuffle(rows)
    events = _run(name, rows, batches)
    for ev in events:
        assert_time_order(ev)
    assert _signature(events) == _signature(reference(name))


def test_export_order_gives_the_reference_events():
    rows = _exported(TRACE)
    for name in OPTIONS:
        assert _signature(_run(name, rows, [64] * 20)) == _signature(reference(name)), name


LISTED = "192.0.2.77"
_KINDS = ("probe", "rst", "login", "listed", "udp")
_flows = st.lists(st.tuples(
    st.sampled_from(_KINDS), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3),
    st.floats(0, 900, allow_nan=False), st.sampled_from((0.0, 0.5, 3.0, 40.0, 400.0))),
    min_size=1, max_size=60)


def _row(kind, src, dst, port, start, dur):
    src, dst, t = "198.51.100.%d" % src, "10.9.0.%d" % dst, T0 + start
    if kind == "probe":
        return flow(src, dst, 61000, 20 + port, 6, 1, 44, t, dur)
    if kind == "rst":
        return flow(src, dst, 61000, 20 + port, 6, 2, 84, t, dur, SYN | RST)
    if kind == "login":
        return flow(src, dst, 40000 + port, 22, 6, 10, None, t, dur, DONE)
    if kind == "listed":
        return flow(dst, LISTED, 50000 + port, 443, 6, 5, None, t, dur, DONE)
    return flow(src, dst, 40000, 5000 + port, 17, 1, 60, t, dur)


@PROPERTY
@given(flows=_flows, data=st.data())
def test_time_order_holds_for_any_flows_arrival_and_clock(flows, data):
    # Small windows and tables: rollovers, evictions, long and late flows, polls with the flow
    # clock or with a clock behind the flows, and a flush.
    small = {"max_keys": 2, "window": 60.0}
    dets = build_detectors({"detectors": {
        "scan_horizontal": dict(small, threshold=2), "scan_vertical": dict(small, threshold=2),
        "bruteforce": dict(small, threshold=2), "dos": dict(small, syn_packets=2),
        "blocklist": dict(small, lists=[{"cidrs": [LISTED + "/32"]}])}})
    assert sorted(d.name for d in dets.detectors) == detector_names()
    events = []
    for spec in flows:
        row = _row(*spec)
        if data.draw(st.booleans(), label="one detector at a time"):
            for det in dets.detectors:
                det.feed(row)
        else:
            dets.feed_rows([row])
        clock = data.draw(st.sampled_from(("none", "flow", "wall")), label="poll")
        if clock == "flow":
            events += dets.poll(dets.watermark)
        elif clock == "wall":
            events += dets.poll(T0 + data.draw(st.floats(-100, 1500), label="now"))
    events += dets.flush(T0 + data.draw(st.floats(-100, 1500), label="flush"))
    for ev in events:
        assert_time_order(ev)
