"""Tests for myason.detect: the registry, build_detectors and every detector on one mixed trace."""
import pytest

from myason.detect import DetectorSet, build_detectors, detector_class, detector_names
from myason.enrich import build_pipeline
from myason.errors import ConfigError
from tests.support.flows import DONE, RST, T0, ACK, addrs, check_idea, flow, web_browsing

pytest.importorskip("idea.valid")

CONFIG = {
    "node_name": "org.example.myason.test",
    "allowlist": ["10.0.0.53/32"],
    "detectors": {"blocklist": {"lists": [{"name": "cc", "cidrs": ["192.0.2.0/24"],
                                           "category": "Intrusion.Botnet"}]}},
}


def _attacks():
    rows = []
    for i in range(1, 81):                                     # horizontal scan, tcp/3389
        rows.append(flow("203.0.113.1", "10.0.1.%d" % i, 61000, 3389, 6, 1, 44, T0 + i))
    for p in range(1, 101):                                    # vertical scan of 10.0.0.7
        rows.append(flow("203.0.113.2", "10.0.0.7", 62000, p, 6, 1, 44, T0 + p))
        rows.append(flow("10.0.0.7", "203.0.113.2", p, 62000, 6, 1, 40, T0 + p, 0, RST | ACK))
    for i in range(40):                                        # SSH brute force
        rows.append(flow("203.0.113.3", "10.0.0.22", 40000 + i, 22, 6, 14, None, T0 + 5 * i, 2,
                         DONE))
    for i in range(2500):                                      # SYN flood
        rows.append(flow("203.0.113.4", "10.0.0.80", 1024 + i, 80, 6, 1, 60, T0 + i / 100))
    for i in range(3):                                         # C&C contact
        rows.append(flow("10.0.0.9", "192.0.2.77", 50000 + i, 8443, 6, 9, None, T0 + i, 1, DONE))
    for i in range(1, 81):                                     # allowlisted resolver "scan"
        rows.append(flow("10.0.0.53", "198.18.0.%d" % i, 40000, 53, 17, 1, 70, T0 + i))
    return rows


def test_registry():
    assert detector_names() == ["blocklist", "bruteforce", "dos", "scan_horizontal",
                                "scan_vertical"]
    assert detector_class("dos").name == "dos"
    with pytest.raises(KeyError):
        detector_class("nope")


def test_mixed_trace_gives_exactly_the_expected_events():
    dets = build_detectors(CONFIG)
    rows = web_browsing() + _attacks()
    rows.sort(key=lambda r: r[8])
    # enriched rows (FIELDS + collector + ENRICH_FIELDS) are what the collector will feed
    build_pipeline({"local_networks": ["10.0.0.0/8"], "services_file": None}).enrich(rows)
    dets.feed_rows(rows)
    events = dets.poll(T0 + 400) + dets.flush()
    got = sorted((e["Category"][0], addrs(e, "Source")[0], e["FlowCount"]) for e in events)
    assert got == [
        ("Attempt.Login", "203.0.113.3", 40),
        ("Availability.DoS", "203.0.113.4", 2500),
        ("Intrusion.Botnet", "192.0.2.77", 3),
        ("Recon.Scanning", "203.0.113.1", 80),
        ("Recon.Scanning", "203.0.113.2", 100),
    ]
    for ev in events:
        check_idea(ev)
        assert ev["Node"][0]["Name"] == "org.example.myason.test"
    stats = dets.stats()
    assert stats["scan_horizontal"]["allowlisted"] > 80 and stats["dos"]["keys"] == 0


def test_benign_browsing_no_event_from_any_detector():
    dets = build_detectors({"detectors": CONFIG["detectors"]})
    dets.feed_rows(web_browsing(sites=400, span=280))
    assert dets.poll(T0 + 1000) == [] and dets.flush() == []
    assert dets.watermark > T0


def test_disabled_detectors_and_empty_set():
    dets = build_detectors({"detectors": {"dos": {"enabled": False}}})
    assert "dos" not in [d.name for d in dets.detectors]
    empty = DetectorSet()
    empty.feed_rows([flow("1.1.1.1", "2.2.2.2")])
    assert empty.poll(T0) == [] and empty.flush() == [] and empty.watermark == 0.0


@pytest.mark.parametrize("config,key", [
    ({"nodename": "x"}, "detect.nodename"),
    ({"node_name": "Org.Example"}, "detect.node_name"),
    ({"allowlist": ["nope"]}, "detect.allowlist"),
    ({"detectors": {"portscan": {}}}, "detect.detectors.portscan"),
    ({"detectors": ["dos"]}, "detect.detectors"),
    ({"detectors": {"dos": {"syn_packets": "many"}}}, "detect.dos.syn_packets"),
])
def test_bad_config(config, key):
    with pytest.raises(ConfigError) as info:
        build_detectors(config)
    assert info.value.key == key
