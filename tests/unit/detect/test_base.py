"""Tests for myason.detect.base: windows, allowlist, bounded state and eviction."""
import tracemalloc

import pytest

from myason.detect.base import Window, as_row
from myason.detect.scan import HorizontalScanDetector
from myason.nets import NetSet
from myason.errors import ConfigError
from myason.schema import FIELDS
from tests.support.flows import T0, addrs, check_idea, flow

ATTACKER = "203.0.113.66"


def _scan(src=ATTACKER, n=60, t0=T0, port=22, net="10.0.0"):
    return [flow(src, "%s.%d" % (net, i), 61000, port, 6, 1, 44, t0 + i) for i in range(1, n + 1)]


def test_allowlisted_source_never_reported():
    det = HorizontalScanDetector(allowlist=["203.0.113.0/24"])
    det.feed_rows(_scan())
    det.feed_rows(_scan(src="198.51.100.1"))
    (ev,) = det.flush()
    assert addrs(ev, "Source") == ["198.51.100.1"]
    assert det.stats["allowlisted"] == 60


def test_allowlisted_targets_are_not_counted():
    det = HorizontalScanDetector({"threshold": 50}, allowlist=NetSet(["10.0.0.0/26"]))
    det.feed_rows(_scan(n=100))            # hosts .1-.63 allowlisted: 37 left, below 50
    assert det.flush() == []
    det = HorizontalScanDetector({"threshold": 30}, allowlist=NetSet(["10.0.0.0/26"]))
    det.feed_rows(_scan(n=100))
    (ev,) = det.flush()
    assert sorted(addrs(ev, "Target")) == sorted("10.0.0.%d" % i for i in range(64, 101))


def test_dict_rows_are_accepted():
    det = HorizontalScanDetector()
    det.feed_rows(dict(zip(FIELDS, row)) for row in _scan())
    (ev,) = det.flush()
    assert ev["FlowCount"] == 60
    assert as_row({"src_ip": "1.2.3.4"})[:2] == ["1.2.3.4", ""]


def test_memory_bounded_under_many_sources():
    det = HorizontalScanDetector({"max_keys": 500})
    row = flow("0.0.0.0", "10.0.0.1", 61000, 22, 6, 1, 44, T0)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            row = list(row)
            row[0] = "100.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255)
            row[8] = T0 + i * 1e-3
            det.feed(row)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(det) == 500
    assert det.stats["evicted"] == 20_000 - 500 and det.stats["windows"] == 20_000
    assert used < 500 * 2000, used     # bytes: bounded by max_keys, not by the sources seen
    assert det.flush() == []


def test_evicted_window_over_threshold_still_reports():
    det = HorizontalScanDetector({"max_keys": 2, "threshold": 50})
    det.feed_rows(_scan(n=60))
    det.feed_rows(r for rows in [_scan(src="198.51.100.%d" % i, n=1, t0=T0 + 100)
                                 for i in range(3)] for r in rows)
    events = det.poll(T0 + 100)                     # long before the window's end
    assert len(events) == 1 and addrs(events[0], "Source") == [ATTACKER]
    check_idea(events[0])
    assert det.stats["evicted"] >= 1


def test_expired_state_is_dropped():
    det = HorizontalScanDetector({"window": 10})
    det.feed_rows(_scan(n=5))
    assert len(det) == 1
    det.poll(T0 + 100)
    assert len(det) == 0
    assert det.watermark == T0 + 5


def test_window_distinct_counting():
    win = Window(T0)
    for v in (1, 1, 2, 3, 3, 4, 5):
        win.add(v, 4)
    assert win.values() == {1, 2, 3, 4} and win.capped and win.n_distinct() == 4
    single = Window(T0)
    single.add("x", 4)
    single.add("x", 4)
    assert single.distinct == "x" and single.n_distinct() == 1 and not single.capped


@pytest.mark.parametrize("opts,key", [
    ({"window": 0}, "detect.scan_horizontal.window"),
    ({"window": "5m"}, "detect.scan_horizontal.window"),
    ({"enabled": "yes"}, "detect.scan_horizontal.enabled"),
    ({"threshold": 2.5}, "detect.scan_horizontal.threshold"),
    ({"max_keys": -1}, "detect.scan_horizontal.max_keys"),
    ({"bogus": 1}, "detect.scan_horizontal.bogus"),
])
def test_bad_options(opts, key):
    with pytest.raises(ConfigError) as info:
        HorizontalScanDetector(opts)
    assert info.value.key == key


def test_bad_node_name_and_allowlist():
    with pytest.raises(ConfigError) as info:
        HorizontalScanDetector(node_name="org.my-ason")
    assert info.value.key == "detect.node_name"
    with pytest.raises(ConfigError) as info:
        HorizontalScanDetector(allowlist=["10.0.0.0/33"])
    assert info.value.key == "detect.allowlist"


def test_pending_events_are_bounded_when_nobody_polls():
    det = HorizontalScanDetector({"max_keys": 1, "threshold": 2, "max_pending_events": 3})
    for k in range(6):                      # six scanners; each evicts the previous one
        det.feed_rows(_scan(src="198.51.100.%d" % k, n=2, t0=T0 + k))
    events = det.poll(T0)
    assert len(events) == 3 and det.stats["dropped_events"] == 2 and det.stats["events"] == 3
    assert len(det.flush()) == 1


def test_a_million_distinct_sources_keep_max_keys():
    det = HorizontalScanDetector({"max_keys": 1000})
    row = flow("0.0.0.0", "10.0.0.1", 61000, 22, 6, 1, 44, T0)
    feed = det.feed
    for i in range(1_000_000):
        # One row reused: keys copy the address string, so mutating the row is safe.
        row[0] = "100.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255)
        feed(row)
    assert len(det) == 1000
    assert det.stats["windows"] == 1_000_000 and det.stats["evicted"] == 999_000
    assert det.flush() == []
