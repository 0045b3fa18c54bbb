"""Tests for myason.detect.idea: IDEA0 event construction, checked with CESNET's validator."""
import pytest

from myason.detect.idea import (CATEGORIES, build_event, check_category, check_node_name, endpoint,
                                rfc3339, split_addresses)
from myason.errors import ConfigError
from tests.support.flows import T0, check_idea

pytest.importorskip("idea.valid")


def _event(**kw):
    args = dict(category="Recon.Scanning", detect_time=T0 + 400.7, window=(T0, T0 + 300),
                sources=["203.0.113.66"], targets=["10.0.0.2", "2001:db8::1", "10.0.0.1"],
                counts={"conns": 3, "flows": 3, "packets": 4, "bytes": 240},
                description="a scan", node_name="org.example.myason")
    args.update(kw)
    return build_event(**args)


def test_full_event_fields():
    ev = check_idea(_event(proto=["tcp"], target_ports=[22, 22, 23], event_time=T0 + 1.9,
                           cease_time=T0 + 250.2))
    assert ev["Format"] == "IDEA0"
    assert ev["Category"] == ["Recon.Scanning"]
    assert ev["DetectTime"] == "2023-11-14T22:20:00Z"
    assert ev["WinStartTime"] == "2023-11-14T22:13:20Z"
    assert ev["WinEndTime"] == "2023-11-14T22:18:20Z"
    assert ev["EventTime"] == "2023-11-14T22:13:21Z"
    assert ev["CeaseTime"] == "2023-11-14T22:17:30Z"
    assert (ev["ConnCount"], ev["FlowCount"], ev["PacketCount"], ev["ByteCount"]) == (3, 3, 4, 240)
    assert ev["Source"] == [{"IP4": ["203.0.113.66"], "Proto": ["tcp"]}]
    assert ev["Target"] == [{"IP4": ["10.0.0.1", "10.0.0.2"], "IP6": ["2001:db8::1"],
                             "Port": [22, 23], "Proto": ["tcp"]}]
    assert ev["Node"] == [{"Name": "org.example.myason", "SW": ["myason"],
                           "Type": ["Flow", "Statistical"]}]
    assert ev["Description"] == "a scan"


def test_ids_are_unique_uuid4_unless_given():
    assert _event()["ID"] != _event()["ID"]
    assert _event(event_id="fixed-id")["ID"] == "fixed-id"


def test_optional_parts_left_out():
    ev = check_idea(_event(targets=[], counts={"flows": 1}))
    assert "Target" not in ev and "PacketCount" not in ev and ev["FlowCount"] == 1
    ev = check_idea(_event(category=["Availability.DDoS", "Test"], source_type=["Botnet"],
                           note="n"))
    assert ev["Category"] == ["Availability.DDoS", "Test"]
    assert ev["Source"][0]["Type"] == ["Botnet"] and ev["Note"] == "n"


def test_ipv6_only_sources_and_bad_addresses_dropped():
    ev = check_idea(_event(sources=["2001:db8::5", "not-an-ip", ""]))
    assert ev["Source"] == [{"IP6": ["2001:db8::5"]}]
    assert split_addresses(["10.0.0.10", "10.0.0.9", "10.0.0.10", "::1"]) == (
        ["10.0.0.9", "10.0.0.10"], ["::1"])
    assert endpoint(["garbage"]) is None


@pytest.mark.parametrize("name", ["cz.cesnet.myason", "org.example.my_ason", "a", "_x.y1"])
def test_good_node_names(name):
    assert check_node_name(name) == name
    check_idea(_event(node_name=name))


@pytest.mark.parametrize("name", ["Org.example", "org.my-ason", "org..example", "1org.example",
                                  "org.example.", "", "org example", None, 7])
def test_bad_node_names(name):
    with pytest.raises(ConfigError) as info:
        _event(node_name=name)
    assert info.value.key == "node_name"


def test_categories():
    assert {"Recon.Scanning", "Attempt.Login", "Availability.DoS", "Availability.DDoS",
            "Intrusion.Botnet", "Anomaly.Traffic"} <= CATEGORIES
    assert check_category("Attempt.Login") == "Attempt.Login"
    for bad in ("Recon.Scan", "recon.scanning", "", None):
        with pytest.raises(ConfigError):
            check_category(bad)
    with pytest.raises(ConfigError):
        _event(category=["Recon.Scanning", "Made.Up"])


def test_rfc3339_is_utc_z_truncated():
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(T0 + 0.999) == "2023-11-14T22:13:20Z"


def test_validator_rejects_what_we_must_never_emit():
    from idea import valid
    ev = _event()
    for key, bad in (("DetectTime", "2023-11-14 22:13"), ("Format", "IDEA1")):
        broken = dict(ev, **{key: bad})
        with pytest.raises(ValueError):
            valid.Idea(broken)
    with pytest.raises(ValueError):
        valid.Idea(dict(ev, Node=[{"Name": "org.my-ason"}]))


def test_agents_as_the_private_extension_key():
    ev = check_idea(_event(agents=["edge-2", "edge-1", "edge-2", ""]))
    assert ev["_Myason"] == {"Agents": ["edge-1", "edge-2"]}
    assert list(ev)[-1] == "_Myason"            # after IDEA's own keys
    ev = check_idea(_event(agents=["edge-1"], agents_capped=True))
    assert ev["_Myason"] == {"Agents": ["edge-1"], "AgentsCapped": True}
    for agents in ((), [""]):
        assert "_Myason" not in check_idea(_event(agents=agents, agents_capped=True))
