"""Notification rules: category prefixes, source/target networks, node names, actions, config errors."""
import pytest

from myason.errors import ConfigError
from myason.store.notify.rules import digest_line, parse_rules


def event(category=("Recon.Scanning",), sources=("203.0.113.66",), targets=("10.0.1.1",), node="org.example.a",
          **extra):
    ev = {"Format": "IDEA0", "ID": "7d1c0f6e-4b9a-4d55-8f0a-0d1c2b3a4e5f", "DetectTime": "2026-12-07T05:00:00Z",
          "Category": list(category), "Description": "Horizontal scan: 203.0.113.66 probed 1 host on tcp/22",
          "Source": [{"IP4": [a for a in sources if ":" not in a], "IP6": [a for a in sources if ":" in a]}],
          "Target": [{"IP4": [a for a in targets if ":" not in a], "IP6": [a for a in targets if ":" in a]}],
          "Node": [{"Name": node}]}
    ev.update(extra)
    return ev


def rule(**options):
    options.setdefault("name", "r")
    options.setdefault("webhooks", ["soc"])
    return parse_rules("notify.rules", [options], {"soc"}, mail_configured=True)[0]


def test_category_matches_by_prefix_of_whole_parts():
    r = rule(category=["Recon"])
    assert r.matches(event(["Recon.Scanning"]))
    assert r.matches(event(["Recon"]))
    assert not r.matches(event(["Reconx.Scanning"]))
    assert not r.matches(event(["Attempt.Login"]))
    assert rule(category=["Attempt.Login", "Recon"]).matches(event(["Other", "Attempt.Login"]))
    assert not rule(category=["Recon.Sniffing"]).matches(event(["Recon.Scanning"]))


def test_networks_match_any_address_of_the_side():
    r = rule(source=["203.0.113.0/24", "2001:db8::/32"], target=["10.0.0.0/8"])
    assert r.matches(event(sources=("198.51.100.1", "203.0.113.9")))
    assert r.matches(event(sources=("2001:db8::7",)))
    assert not r.matches(event(sources=("198.51.100.1",)))
    assert not r.matches(event(targets=("192.168.1.1",)))
    # Source and target are not interchangeable.
    assert not rule(source=["10.0.0.0/8"]).matches(event())
    assert not r.matches({"ID": "x", "Category": ["Recon.Scanning"]})      # no addresses at all


def test_nodes_and_empty_conditions():
    assert rule().matches(event(["Anything.Else"], node="org.example.zzz"))
    assert rule(nodes=["org.example.a"]).matches(event())
    assert not rule(nodes=["org.example.b"]).matches(event())
    # All conditions must hold.
    assert not rule(category=["Recon"], nodes=["org.example.b"]).matches(event())


def test_agents_match_the_events_agents():
    named = event(_Myason={"Agents": ["edge-1", "edge-2"]})
    assert rule(agents=["edge-2"]).matches(named)
    assert rule(agents=["core", "edge-1"]).matches(named)
    assert not rule(agents=["core"]).matches(named)
    # An event that names no agents (another source, or a malformed extension) matches no agents rule.
    assert not rule(agents=["edge-1"]).matches(event())
    assert not rule(agents=["edge-1"]).matches(event(_Myason={"Agents": "edge-1"}))
    assert not rule(agents=["edge-1"]).matches(event(_Myason=["edge-1"]))


@pytest.mark.parametrize("options, key", [
    ({"name": "r", "webhooks": ["soc"], "categry": ["Recon"]}, "notify.rules[0].categry"),
    ({"name": "r", "webhooks": ["nope"]}, "notify.rules[0].webhooks[0]"),
    ({"name": "r"}, "notify.rules[0]"),
    ({"name": "r s", "webhooks": ["soc"]}, "notify.rules[0].name"),
    ({"name": "r", "webhooks": ["soc"], "source": ["10.0.0.0/33"]}, "notify.rules[0].source"),
    ({"name": "r", "webhooks": ["soc"], "category": ["Recon Scanning"]}, "notify.rules[0].category[0]"),
    ({"name": "r", "mail": {"to": ["a@b.example"], "windw": 60}}, "notify.rules[0].mail.windw"),
    ({"name": "r", "mail": {"to": []}}, "notify.rules[0].mail.to"),
    ({"name": "r", "mail": {"to": ["not-an-address"]}}, "notify.rules[0].mail.to[0]"),
    ({"name": "r", "mail": {"to": ["a@b.example"], "window": 0}}, "notify.rules[0].mail.window"),
])
def test_config_errors_name_the_key(options, key):
    with pytest.raises(ConfigError) as exc:
        parse_rules("notify.rules", [options], {"soc"}, mail_configured=True)
    assert exc.value.key == key


def test_mail_needs_smtp_settings_and_names_are_unique():
    with pytest.raises(ConfigError) as exc:
        parse_rules("notify.rules", [{"name": "r", "mail": {"to": ["a@b.example"]}}], set(), mail_configured=False)
    assert exc.value.key == "notify.rules[0].mail"
    with pytest.raises(ConfigError) as exc:
        parse_rules("notify.rules", [{"name": "r", "webhooks": ["soc"]}] * 2, {"soc"}, mail_configured=False)
    assert exc.value.key == "notify.rules[1].name"
    with pytest.raises(ConfigError) as exc:
        parse_rules("notify.rules", [], {"soc"}, mail_configured=False)
    assert exc.value.key == "notify.rules"


def test_mail_defaults():
    r = rule(webhooks=[], mail={"to": ["soc@example.org"]})
    assert r.mail == {"to": ["soc@example.org"], "window": 900.0, "max_mails": 4, "per": 3600.0}


def test_digest_line_lists_time_category_addresses_description_and_id():
    ev = event(targets=["10.0.1.%d" % i for i in range(1, 9)])
    line = digest_line(ev)
    assert line == ("2026-12-07 05:00:00Z  Recon.Scanning  203.0.113.66 -> 10.0.1.1, 10.0.1.2, 10.0.1.3, 10.0.1.4, "
                    "10.0.1.5 (+3 more)  Horizontal scan: 203.0.113.66 probed 1 host on tcp/22  "
                    "[7d1c0f6e-4b9a-4d55-8f0a-0d1c2b3a4e5f]")
    assert "- -> -" in digest_line({"ID": "x", "Category": ["Other"]})
