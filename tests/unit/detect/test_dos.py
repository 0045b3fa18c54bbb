"""Tests for myason.detect.dos: SYN floods (DoS, DDoS) and packet-rate floods."""
import pytest

from myason.detect.dos import DosDetector
from tests.support.flows import DONE, SYN, T0, addrs, check_idea, flow, web_browsing

pytest.importorskip("idea.valid")
VICTIM = "10.0.0.80"


def _syn_flood(n, sources, t0=T0, span=10.0, port=80):
    return [flow(sources[i % len(sources)], VICTIM, 1024 + i % 60000, port, 6, 1, 60,
                 t0 + span * i / n) for i in range(n)]


def test_syn_flood_one_source_is_dos():
    det = DosDetector()
    det.feed_rows(_syn_flood(3000, ["198.51.100.7"]))
    # ordinary clients of the same server
    det.feed_rows(flow("10.0.1.%d" % i, VICTIM, 50000, 80, 6, 10, None, T0 + i, 1, DONE)
                  for i in range(1, 11))
    assert det.poll(T0 + 59) == []
    (ev,) = det.poll(T0 + 60)
    check_idea(ev)
    assert ev["Category"] == ["Availability.DoS"]
    assert addrs(ev, "Target") == [VICTIM] and ev["Target"][0]["Port"] == [80]
    # the ordinary clients completed their handshakes: not listed as sources
    assert addrs(ev, "Source") == ["198.51.100.7"]
    assert (ev["FlowCount"], ev["PacketCount"]) == (3010, 3100)
    assert "3000 SYN-only packets" in ev["Description"]
    assert ev["WinEndTime"] == "2023-11-14T22:14:20Z"


def test_spoofed_syn_flood_is_ddos():
    sources = ["100.64.%d.%d" % (i // 250, i % 250 + 1) for i in range(500)]
    det = DosDetector()
    det.feed_rows(_syn_flood(5000, sources))
    (ev,) = det.flush()
    check_idea(ev)
    assert ev["Category"] == ["Availability.DDoS"]
    # capped at max_distinct (256)
    assert len(addrs(ev, "Source")) == 256 and "at least 256 sources" in ev["Description"]
    assert ev["PacketCount"] == 5000 and addrs(ev, "Target") == [VICTIM]


def test_ddos_with_few_sources_under_cap():
    sources = ["100.64.0.%d" % i for i in range(1, 61)]
    det = DosDetector({"ddos_sources": 50})
    det.feed_rows(_syn_flood(2400, sources))
    (ev,) = det.flush()
    assert ev["Category"] == ["Availability.DDoS"]
    assert sorted(addrs(ev, "Source")) == sorted(sources)


def test_packet_rate_flood():
    det = DosDetector({"packet_rate": 1000, "window": 10})
    det.feed_rows([flow("198.51.100.9", VICTIM, 5353, 9999, 17, 12000, 12000 * 512, T0, 9.0)])
    (ev,) = det.flush()
    check_idea(ev)
    assert ev["Category"] == ["Availability.DoS"] and ev["PacketCount"] == 12000
    assert ev["Target"][0]["Proto"] == ["udp"] and "Packet flood" in ev["Description"]


def test_below_thresholds_and_benign():
    det = DosDetector()
    det.feed_rows(_syn_flood(1999, ["198.51.100.7"]))
    det.feed_rows(web_browsing())
    assert det.flush() == []
    det = DosDetector({"packet_rate": 0})
    det.feed_rows([flow("198.51.100.9", VICTIM, 5353, 9999, 17, 10 ** 9, 10 ** 11, T0, 9.0)])
    assert det.flush() == []


def test_syn_ack_flows_are_not_syn_only():
    det = DosDetector({"syn_packets": 10})
    det.feed_rows(flow(VICTIM, "10.0.9.9", 80, 50000 + i, 6, 1, 60, T0, 0, SYN | 0x10)
                  for i in range(100))
    assert det.flush() == []


def test_busy_target_lists_sources_once_hot():
    # packet_rate 100/s over 10 s: hot after 100 packets; the first client's 60 packets come
    # before that (not listed), the flows after it are.
    det = DosDetector({"packet_rate": 100, "window": 10, "ddos_sources": 3})
    det.feed_rows([flow("10.0.2.%d" % i, VICTIM, 40000, 443, 17, 60, None, T0 + i * 0.1, 1)
                   for i in range(1, 21)])
    (ev,) = det.flush()
    check_idea(ev)
    assert ev["PacketCount"] == 1200 and ev["FlowCount"] == 20
    assert addrs(ev, "Source") == sorted(("10.0.2.%d" % i for i in range(2, 21)),
                                         key=lambda a: int(a.rsplit(".", 1)[1]))
    assert ev["Category"] == ["Availability.DDoS"] and ev["Target"][0]["Port"] == [443]
