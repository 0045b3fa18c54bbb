"""IDEA0 events (idea.cesnet.cz, the format of CESNET's Warden and Mentat) from detector findings.

Pure apart from the random ID when none is given.
"""
from __future__ import annotations

import ipaddress
import re
import uuid
from datetime import datetime, timezone

from myason.errors import ConfigError

# The IDEA classification (idea.cesnet.cz/en/classifications).
CATEGORIES = frozenset((
    "Abusive.Spam", "Abusive.Harassment", "Abusive.Child", "Abusive.Sexual", "Abusive.Violence",
    "Malware.Virus", "Malware.Worm", "Malware.Trojan", "Malware.Spyware", "Malware.Dialer",
    "Malware.Rootkit",
    "Recon.Scanning", "Recon.Sniffing", "Recon.SocialEngineering", "Recon.Searching",
    "Attempt.Exploit", "Attempt.Login", "Attempt.NewSignature",
    "Intrusion.AdminCompromise", "Intrusion.UserCompromise", "Intrusion.AppCompromise",
    "Intrusion.Botnet",
    "Availability.DoS", "Availability.DDoS", "Availability.Sabotage", "Availability.Outage",
    "Information.UnauthorizedAccess", "Information.UnauthorizedModification",
    "Fraud.UnauthorizedUsage", "Fraud.Copyright", "Fraud.Masquerade", "Fraud.Phishing",
    "Fraud.Scam",
    "Vulnerable.Open", "Vulnerable.Config",
    "Anomaly.Traffic", "Anomaly.Connection", "Anomaly.Protocol", "Anomaly.System",
    "Anomaly.Application", "Anomaly.Behaviour",
    "Other", "Test",
))
# IDEA's NSID rule for Node.Name: dot-separated lowercase labels of [a-z0-9_], no leading digit,
# no hyphen (reverse DNS form, e.g. "cz.example.myason").
_NSID_RE = re.compile(r"^(?:[a-z_][a-z0-9_]*\.)*[a-z_][a-z0-9_]*$")
_TAG_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_COUNTS = (("conns", "ConnCount"), ("flows", "FlowCount"), ("packets", "PacketCount"),
           ("bytes", "ByteCount"))
NODE_SW = ["myason"]
NODE_TYPE = ["Flow", "Statistical"]
# myason's own key, in the style of Mentat's private ones ("_CESNET", "_Mentat"): what IDEA has no
# place for, here the agents (probes) whose flows made the event.
EXTENSION = "_Myason"


def check_node_name(name, key="node_name") -> str:
    """The name if it is a valid IDEA Node.Name (lowercase reverse-DNS); else ConfigError(key)."""
    if not isinstance(name, str) or not _NSID_RE.match(name) or len(name) > 255:
        raise ConfigError(key, "must be lowercase reverse-DNS labels of a-z, 0-9 and _ joined by "
                               "dots, no hyphens, not starting with a digit (e.g. "
                               "'org.example.myason'), got %r" % (name,))
    return name


def check_category(category, key="category") -> str:
    """The category if it is in the IDEA classification; else ConfigError(key)."""
    if category not in CATEGORIES:
        raise ConfigError(key, "not an IDEA category: %r" % (category,))
    return category


def rfc3339(ts: float) -> str:
    """UTC RFC 3339 timestamp with 'Z' of a Unix time, to the second (fractions truncated)."""
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_addresses(addresses):
    """(IPv4 texts, IPv6 texts), each sorted and deduplicated; non-addresses are dropped."""
    v4, v6 = set(), set()
    for addr in addresses:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        (v4 if ip.version == 4 else v6).add(ip)
    return [str(a) for a in sorted(v4)], [str(a) for a in sorted(v6)]


def endpoint(addresses, ports=(), proto=None, types=None, note=None):
    """One IDEA Source/Target dict: IP4/IP6 lists, Port ints, Proto, Type; None when empty."""
    v4, v6 = split_addresses(addresses)
    if not v4 and not v6:
        return None
    out = {}
    if types:
        out["Type"] = [t for t in types if _TAG_RE.match(t)]
    if v4:
        out["IP4"] = v4
    if v6:
        out["IP6"] = v6
    port_list = sorted({int(p) for p in ports if 0 <= int(p) <= 65535})
    if port_list:
        out["Port"] = port_list
    if proto:
        out["Proto"] = list(proto)
    if note:
        out["Note"] = str(note)
    return out


def build_event(category, detect_time, window, sources, targets, counts, description, node_name,
                proto=None, source_ports=(), target_ports=(), source_type=None, target_type=None,
                event_time=None, cease_time=None, event_id=None, note=None, agents=(),
                agents_capped=False) -> dict:
    """An IDEA0 event dict.

    category: one IDEA category or a list; detect_time: Unix time; window: (start, end) Unix
    times; sources/targets: address texts (split into IP4/IP6); counts: {conns, flows, packets,
    bytes} (missing keys are left out); proto: e.g. ["tcp", "ssh"], set on Source and Target;
    event_time/cease_time default to the window; agents: ids of the agents whose flows were
    counted, as `_Myason.Agents` (sorted, de-duplicated, left out when empty), agents_capped:
    more agents took part than were kept (`_Myason.AgentsCapped`). Raises ConfigError for a category outside the
    IDEA classification or an invalid node_name (both come from configuration).
    """
    categories = [category] if isinstance(category, str) else list(category)
    for cat in categories:
        check_category(cat)
    check_node_name(node_name)
    start, end = window
    event = {
        "Format": "IDEA0",
        "ID": event_id or str(uuid.uuid4()),
        "DetectTime": rfc3339(detect_time),
        "Category": categories,
        "EventTime": rfc3339(start if event_time is None else event_time),
        "CeaseTime": rfc3339(end if cease_time is None else cease_time),
        "WinStartTime": rfc3339(start),
        "WinEndTime": rfc3339(end),
    }
    counts = counts or {}
    for key, name in _COUNTS:
        value = counts.get(key)
        if value is not None:
            event[name] = int(value)
    src = endpoint(sources, source_ports, proto, source_type)
    if src is not None:
        event["Source"] = [src]
    tgt = endpoint(targets, target_ports, proto, target_type)
    if tgt is not None:
        event["Target"] = [tgt]
    if note:
        event["Note"] = str(note)
    event["Node"] = [{"Name": node_name, "SW": list(NODE_SW), "Type": list(NODE_TYPE)}]
    event["Description"] = str(description)
    agent_list = sorted({str(a) for a in agents if a})
    if agent_list:
        ext = event[EXTENSION] = {"Agents": agent_list}
        if agents_capped:
            ext["AgentsCapped"] = True
    return event
