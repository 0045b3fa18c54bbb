"""Tests for myason.detect.scan: horizontal and vertical scans on crafted flows."""
import pytest

from myason.detect.scan import HorizontalScanDetector, VerticalScanDetector, is_probe
from tests.support.flows import ACK, DONE, RST, SYN, T0, addrs, check_idea, flow, web_browsing

pytest.importorskip("idea.valid")
ATTACKER = "203.0.113.66"


def _horizontal_rows(n=100, port=22, t0=T0, span=100.0):
    rows = []
    for i in range(n):
        host = "10.0.%d.%d" % (i // 250, i % 250 + 1)
        t = t0 + span * i / n
        rows.append(flow(ATTACKER, host, 61000, port, 6, 1, 44, t))
        # Closed ports answer RST|ACK: not probes, and they must not count for the hosts.
        rows.append(flow(host, ATTACKER, port, 61000, 6, 1, 40, t + 0.001, 0, RST | ACK))
    return rows


def test_horizontal_scan_exact_event():
    det = HorizontalScanDetector()
    det.feed_rows(_horizontal_rows())
    assert det.poll(T0 + 299) == []
    (ev,) = det.poll(T0 + 300)
    check_idea(ev)
    assert ev["Category"] == ["Recon.Scanning"]
    assert addrs(ev, "Source") == [ATTACKER]
    assert sorted(addrs(ev, "Target")) == sorted("10.0.0.%d" % i for i in range(1, 101))
    assert ev["Target"][0]["Port"] == [22] and ev["Target"][0]["Proto"] == ["tcp"]
    assert (ev["ConnCount"], ev["FlowCount"], ev["PacketCount"], ev["ByteCount"]) == (
        100, 100, 100, 4400)
    assert ev["WinStartTime"] == "2023-11-14T22:13:20Z"
    assert ev["WinEndTime"] == "2023-11-14T22:18:20Z"
    assert "100 hosts on tcp/22" in ev["Description"]
    assert det.poll(T0 + 10000) == [] and len(det) == 0


def test_below_threshold_no_event():
    det = HorizontalScanDetector({"threshold": 50})
    det.feed_rows(_horizontal_rows(49))
    assert det.flush() == []
    det = HorizontalScanDetector({"threshold": 50})
    det.feed_rows(_horizontal_rows(50))
    assert len(det.flush()) == 1


def test_one_event_per_key_per_window():
    det = HorizontalScanDetector({"window": 300})
    rows = _horizontal_rows(100, t0=T0, span=280) + _horizontal_rows(100, t0=T0 + 300, span=200)
    det.feed_rows(rows)
    first = det.poll(T0 + 300)   # the rollover at T0+300 already closed the first window
    assert len(first) == 1 and first[0]["FlowCount"] == 100
    assert det.poll(T0 + 599) == []
    second = det.poll(T0 + 600)
    assert len(second) == 1 and second[0]["WinStartTime"] == "2023-11-14T22:18:20Z"
    assert second[0]["ID"] != first[0]["ID"]


def test_ping_sweep_and_other_ports_are_separate_keys():
    det = HorizontalScanDetector({"threshold": 20})
    rows = [flow(ATTACKER, "10.1.0.%d" % i, 0, 8 << 8, 1, 1, 84, T0 + i) for i in range(1, 31)]
    rows += [flow(ATTACKER, "10.2.0.%d" % i, 61000, 80, 6, 1, 44, T0 + i) for i in range(1, 11)]
    rows += [flow(ATTACKER, "10.2.0.%d" % i, 61000, 443, 6, 1, 44, T0 + i) for i in range(1, 11)]
    # echo replies and unreachables are not probes
    rows += [flow("10.3.0.%d" % i, ATTACKER, 0, 3 << 8 | 3, 1, 1, 84, T0 + i) for i in range(40)]
    det.feed_rows(rows)
    (ev,) = det.flush()
    check_idea(ev)
    assert len(addrs(ev, "Target")) == 30 and "Port" not in ev["Target"][0]
    assert ev["Target"][0]["Proto"] == ["icmp"] and "echo requests" in ev["Description"]


def test_vertical_scan_exact_event():
    det = VerticalScanDetector()
    rows = [flow(ATTACKER, "10.0.0.5", 61000, p, 6, 1, 44, T0 + p * 0.1) for p in range(1, 201)]
    rows += [flow("10.0.0.5", ATTACKER, p, 61000, 6, 1, 40, T0 + p * 0.1, 0, RST | ACK)
             for p in range(1, 201)]
    det.feed_rows(rows)
    assert det.poll(T0 + 300) == []          # the window started with the first probe, T0 + 0.1
    (ev,) = det.poll(T0 + 300.1)
    check_idea(ev)
    assert ev["Category"] == ["Recon.Scanning"]
    assert addrs(ev, "Source") == [ATTACKER] and addrs(ev, "Target") == ["10.0.0.5"]
    assert ev["Target"][0]["Port"] == list(range(1, 201))
    assert (ev["FlowCount"], ev["PacketCount"], ev["ByteCount"]) == (200, 200, 8800)
    assert "200 tcp ports of 10.0.0.5" in ev["Description"]


def test_vertical_scan_distinct_set_is_capped():
    det = VerticalScanDetector({"threshold": 10, "max_distinct": 64})
    det.feed_rows(flow(ATTACKER, "10.0.0.5", 61000, p, 6, 1, 44, T0) for p in range(1, 1001))
    (ev,) = det.flush()
    assert len(ev["Target"][0]["Port"]) == 64 and ev["FlowCount"] == 1000
    assert "at least 64" in ev["Description"]


def test_udp_answers_are_not_a_vertical_scan():
    det = VerticalScanDetector({"threshold": 5})
    # A DNS server answering one client's queries from 100 source ports.
    det.feed_rows(flow("10.0.0.53", "10.0.0.5", 53, 30000 + i, 17, 1, 100, T0 + i)
                  for i in range(100))
    assert det.flush() == []


def test_benign_browsing_no_scan_events():
    for det in (HorizontalScanDetector(), VerticalScanDetector()):
        det.feed_rows(web_browsing(sites=300))
        assert det.flush() == [], det.name


@pytest.mark.parametrize("row,probe", [
    (flow("a", "b", 1, 2, 6, 1, flags=SYN), True),
    (flow("a", "b", 1, 2, 6, 2, flags=SYN | RST), True),
    (flow("a", "b", 1, 2, 6, 3, flags=SYN | ACK | RST), False),
    (flow("a", "b", 1, 2, 6, 12, flags=DONE), False),
    (flow("a", "b", 1, 2, 6, 4, flags=SYN), False),
    (flow("a", "b", 40000, 53, 17, 1), True),
    (flow("a", "b", 53, 40000, 17, 1), False),
    (flow("a", "b", 0, 128 << 8, 58, 1), True),
    (flow("a", "b", 0, 129 << 8, 58, 1), False),
    (flow("a", "b", 0, 0, 47, 1), False),
])
def test_is_probe(row, probe):
    assert is_probe(row, 3) is probe
