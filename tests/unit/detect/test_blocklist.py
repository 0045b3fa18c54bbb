"""Tests for myason.detect.blocklist: traffic to/from listed networks."""
import pytest

from myason.detect.blocklist import BlocklistDetector
from myason.errors import ConfigError
from tests.support.flows import DONE, T0, addrs, check_idea, flow, web_browsing

pytest.importorskip("idea.valid")
CC = "192.0.2.10"


@pytest.fixture
def lists(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("# scanners\n198.51.100.0/24  # whole net\n\n2001:db8:bad::/48\n")
    return [{"name": "botnet", "cidrs": ["192.0.2.0/25"], "category": "Intrusion.Botnet",
             "target_type": ["CC"], "report": "peer"},
            {"name": "scanners", "file": str(path), "category": "Anomaly.Traffic"}]


def test_botnet_contact_one_event_per_listed_address(lists):
    det = BlocklistDetector({"lists": lists})
    rows = []
    for i in range(3):
        rows.append(flow("10.0.0.5", CC, 50000 + i, 443, 6, 10, None, T0 + i, 1, DONE))
        rows.append(flow(CC, "10.0.0.5", 443, 50000 + i, 6, 8, None, T0 + i, 1, DONE))
    rows.append(flow("10.0.0.6", CC, 50100, 443, 6, 10, None, T0 + 50, 1, DONE))
    rows.append(flow("10.0.0.5", "192.0.2.200", 50000, 443, 6, 10, None, T0))  # outside /25
    det.feed_rows(rows)
    (ev,) = det.poll(T0 + 300)
    check_idea(ev)
    assert ev["Category"] == ["Intrusion.Botnet"]
    # report: peer -> the local hosts are the Source, the C&C the Target
    assert addrs(ev, "Source") == ["10.0.0.5", "10.0.0.6"]
    assert addrs(ev, "Target") == [CC] and ev["Target"][0]["Type"] == ["CC"]
    assert (ev["FlowCount"], ev["PacketCount"]) == (7, 64)
    assert ev["Note"] == "list botnet"


def test_listed_source_and_ipv6_file_list(lists):
    det = BlocklistDetector({"lists": lists})
    det.feed_rows([flow("198.51.100.9", "10.0.0.%d" % i, 1234, 23, 6, 1, 60, T0 + i)
                   for i in range(1, 4)])
    det.feed_rows([flow("2001:db8:bad::1", "2001:db8:1::1", 1234, 22, 6, 1, 80, T0)])
    events = sorted(det.flush(), key=lambda e: e["Source"][0].get("IP4", ["~"])[0])
    assert len(events) == 2
    for ev in events:
        check_idea(ev)
        assert ev["Category"] == ["Anomaly.Traffic"]
    assert addrs(events[0], "Source") == ["198.51.100.9"]
    assert addrs(events[0], "Target") == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert events[1]["Source"][0]["IP6"] == ["2001:db8:bad::1"]


def test_one_event_per_window(lists):
    det = BlocklistDetector({"lists": lists, "window": 60})
    det.feed_rows(flow("10.0.0.5", CC, 50000, 443, 6, 1, 60, T0 + s) for s in range(0, 180, 5))
    events = det.flush()
    assert len(events) == 3 and all(e["FlowCount"] == 12 for e in events)


def test_benign_and_empty_lists(lists):
    det = BlocklistDetector({"lists": lists})
    det.feed_rows(web_browsing())
    assert det.flush() == []
    det = BlocklistDetector()
    det.feed_rows([flow("10.0.0.5", CC, 50000, 443)])
    assert det.flush() == []


@pytest.mark.parametrize("spec,key", [
    ({"name": "x", "cidrs": ["192.0.2.0/24"], "category": "Bad.Category"},
     "detect.blocklist.lists[0].category"),
    ({"name": "x", "cidrs": ["not a net"]}, "detect.blocklist.lists[0].cidrs"),
    ({"name": "x", "file": "/nonexistent/list.txt"}, "detect.blocklist.lists[0].file"),
    ({"name": "x", "cidr": ["192.0.2.0/24"]}, "detect.blocklist.lists[0].cidr"),
    ({"name": "x", "report": "both"}, "detect.blocklist.lists[0].report"),
    ("192.0.2.0/24", "detect.blocklist.lists[0]"),
])
def test_bad_lists(spec, key):
    with pytest.raises(ConfigError) as info:
        BlocklistDetector({"lists": [spec]})
    assert info.value.key == key
