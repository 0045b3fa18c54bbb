"""Tests for myason.detect.bruteforce on crafted SSH/RDP login floods."""
import pytest

from myason.detect.bruteforce import BruteForceDetector
from myason.errors import ConfigError
from tests.support.flows import DONE, SYN, T0, addrs, check_idea, flow, web_browsing

pytest.importorskip("idea.valid")
ATTACKER = "198.51.100.23"


def _attempts(n, dst="10.0.0.22", port=22, packets=12, t0=T0, src=ATTACKER):
    return [flow(src, dst, 40000 + i, port, 6, packets, None, t0 + 5 * i, 3.0, DONE)
            for i in range(n)]


def test_ssh_brute_force_exact_event():
    det = BruteForceDetector()
    rows = _attempts(30)
    # server -> attacker answers must not count
    rows += [flow("10.0.0.22", ATTACKER, 22, 40000 + i, 6, 14, None, T0 + 5 * i, 3.0, DONE)
             for i in range(30)]
    det.feed_rows(rows)
    assert det.poll(T0 + 299.9) == []
    (ev,) = det.poll(T0 + 300)
    check_idea(ev)
    assert ev["Category"] == ["Attempt.Login"]
    assert addrs(ev, "Source") == [ATTACKER] and addrs(ev, "Target") == ["10.0.0.22"]
    assert ev["Source"][0]["Proto"] == ["tcp", "ssh"]
    assert ev["Target"][0]["Port"] == [22]
    assert (ev["ConnCount"], ev["FlowCount"], ev["PacketCount"], ev["ByteCount"]) == (
        30, 30, 360, 360 * 60)
    assert ev["EventTime"] == "2023-11-14T22:13:20Z"
    assert ev["CeaseTime"] == "2023-11-14T22:15:48Z"   # T0 + 145 + 3


def test_spray_over_many_hosts_is_one_event():
    det = BruteForceDetector({"threshold": 10})
    rows = []
    for h in range(1, 6):
        rows += _attempts(4, dst="10.0.0.%d" % h, port=3389)
    det.feed_rows(rows)
    (ev,) = det.flush()
    check_idea(ev)
    assert sorted(addrs(ev, "Target")) == ["10.0.0.%d" % h for h in range(1, 6)]
    assert ev["Target"][0]["Proto"] == ["tcp", "ms-wbt-server"] and ev["FlowCount"] == 20


def test_what_does_not_count():
    det = BruteForceDetector({"threshold": 5})
    det.feed_rows(_attempts(20, packets=200))                      # long sessions
    det.feed_rows(_attempts(20, packets=2))                        # too short
    det.feed_rows(_attempts(20, port=2222))                        # not a login port
    det.feed_rows(flow(ATTACKER, "10.0.0.22", 40000 + i, 22, 6, 5, None, T0, 0, SYN)
                  for i in range(20))                              # no handshake: a scan/flood
    det.feed_rows(flow(ATTACKER, "10.0.0.22", 40000 + i, 22, 17, 5, None, T0) for i in range(20))
    assert det.flush() == []


def test_configured_ports_and_names():
    det = BruteForceDetector({"threshold": 5, "ports": [2222], "services": {2222: "ssh"}})
    det.feed_rows(_attempts(5, port=2222))
    (ev,) = det.flush()
    assert ev["Source"][0]["Proto"] == ["tcp", "ssh"] and ev["Target"][0]["Port"] == [2222]
    with pytest.raises(ConfigError) as info:
        BruteForceDetector({"ports": [22, 70000]})
    assert info.value.key == "detect.bruteforce.ports[1]"
    with pytest.raises(ConfigError):
        BruteForceDetector({"treshold": 5})


def test_benign_no_event():
    det = BruteForceDetector()
    det.feed_rows(web_browsing())
    assert det.flush() == []
