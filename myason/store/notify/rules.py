"""Notification rules: which IDEA events a rule takes (category, networks, node) and its actions.

A rule matches an event when every condition it sets holds; a condition left empty matches
anything. Within one condition any listed value is enough: category prefixes ("Recon" takes
"Recon.Scanning", never "Reconx"), source and target networks (any Source / Target address of
the event inside one of them), node names (IDEA Node.Name: the detecting collector's
`node_name`), agents (the probes whose flows made the event: the event's `_Myason.Agents`,
docs/events.md).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from myason.errors import ConfigError
from myason.nets import NetSet
from myason.options import (REQUIRED, check_float, check_int, check_items, check_mapping, check_optional, check_str,
                            parse_options)

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CATEGORY_RE = re.compile(r"^[A-Za-z]+(\.[A-Za-z]+)?$")
_ADDRESS_RE = re.compile(r"^[^@\s<>,]+@[^@\s<>,]+$")
# Targets listed per event line in a digest; the rest are counted ("+N more").
_LINE_TARGETS = 5


def check_name(key, value):
    """A rule or webhook name: letters, digits, _ and -, so it is safe in a header and a file."""
    return check_str(pattern=NAME_RE, expected="a name of letters, digits, _ and - (at most 64)")(key, value)


def _check_category(key, value):
    return check_str(pattern=_CATEGORY_RE, expected="an IDEA category or its first part ('Recon', "
                                                    "'Recon.Scanning')")(key, value)


def _check_address(key, value):
    return check_str(pattern=_ADDRESS_RE, expected="an e-mail address (user@domain)")(key, value)


def _check_networks(key, value):
    return NetSet(check_items(check_str())(key, value), key=key)


MAIL_RULE_SPEC = {
    "to": (REQUIRED, check_items(_check_address, expected="a list of e-mail addresses")),
    "window": (900.0, check_float(lo=0, lo_open=True)),
    "max_mails": (4, check_int(lo=1)),
    "per": (3600.0, check_float(lo=0, lo_open=True)),
}

RULE_SPEC = {
    "name": (REQUIRED, check_name),
    "category": ([], check_items(_check_category)),
    "source": ([], _check_networks),
    "target": ([], _check_networks),
    "nodes": ([], check_items(check_str(allow_empty=False))),
    "agents": ([], check_items(check_str(allow_empty=False))),
    "webhooks": ([], check_items(check_name)),
    "mail": (None, check_optional(check_mapping)),
}


class Rule:
    """One parsed rule: its conditions, the webhooks it sends to, its digest settings (or None)."""

    def __init__(self, name, category=(), source=None, target=None, nodes=(), webhooks=(), mail=None, agents=()):
        self.name = name
        self.category = tuple(category)
        self.source = source or NetSet()
        self.target = target or NetSet()
        self.nodes = frozenset(nodes)
        self.agents = frozenset(agents)
        self.webhooks = tuple(webhooks)
        self.mail = mail

    def matches(self, event) -> bool:
        """True when the event meets every condition of the rule."""
        if self.category and not any(_category_match(c, p) for c in event.get("Category") or () for p in self.category):
            return False
        if self.source and not any(self.source.contains(a) for a in addresses(event, "Source")):
            return False
        if self.target and not any(self.target.contains(a) for a in addresses(event, "Target")):
            return False
        if self.nodes and not any(n.get("Name") in self.nodes for n in event.get("Node") or () if isinstance(n, dict)):
            return False
        if self.agents and not any(a in self.agents for a in event_agents(event)):
            return False
        return True


def event_agents(event):
    """The agents an event names (`_Myason.Agents`), or () when it names none."""
    ext = event.get("_Myason")
    agents = ext.get("Agents") if isinstance(ext, dict) else None
    return [a for a in agents if isinstance(a, str)] if isinstance(agents, list) else ()


def _category_match(category, prefix):
    return isinstance(category, str) and (category == prefix or category.startswith(prefix + "."))


def addresses(event, part):
    """Every IP4 and IP6 address of the event's Source or Target list, in order."""
    out = []
    for item in event.get(part) or ():
        if isinstance(item, dict):
            out.extend(str(a) for a in (item.get("IP4") or ()))
            out.extend(str(a) for a in (item.get("IP6") or ()))
    return out


def parse_rules(key, value, webhook_names, mail_configured):
    """[Rule] from the `rules` list; ConfigError names the rule's key (key[i].option)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(key, "must be a non-empty list of rules, e.g. [{name: scans, category: [Recon], "
                               "webhooks: [soc]}]")
    rules = []
    for i, item in enumerate(value):
        k = "%s[%d]" % (key, i)
        opts = parse_options(k, item, RULE_SPEC)
        for j, hook in enumerate(opts["webhooks"]):
            if hook not in webhook_names:
                raise ConfigError("%s.webhooks[%d]" % (k, j), "no webhook named %r (known: %s)"
                                  % (hook, ", ".join(sorted(webhook_names)) or "none"))
        mail = opts["mail"]
        if mail is not None:
            if not mail_configured:
                raise ConfigError(k + ".mail", "a digest needs the writer's `mail` (SMTP) settings")
            mail = parse_options(k + ".mail", mail, MAIL_RULE_SPEC)
            if not mail["to"]:
                raise ConfigError(k + ".mail.to", "must list at least one address")
        if not opts["webhooks"] and mail is None:
            raise ConfigError(k, "names no action: give it `webhooks` and/or `mail`")
        if opts["name"] in (r.name for r in rules):
            raise ConfigError(k + ".name", "two rules are named %r" % opts["name"])
        rules.append(Rule(opts["name"], opts["category"], opts["source"], opts["target"], opts["nodes"],
                          opts["webhooks"], mail, opts["agents"]))
    return rules


def utc_text(ts):
    """'YYYY-MM-DD HH:MM:SSZ' of a Unix time."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def digest_line(event):
    """One plain-text line of a digest: time (UTC), categories, sources -> targets, description, id."""
    sources, targets = addresses(event, "Source"), addresses(event, "Target")
    shown = ", ".join(targets[:_LINE_TARGETS])
    if len(targets) > _LINE_TARGETS:
        shown += " (+%d more)" % (len(targets) - _LINE_TARGETS)
    return "%s  %s  %s -> %s  %s  [%s]" % (
        str(event.get("DetectTime", "?")).replace("T", " "), ",".join(map(str, event.get("Category") or ())),
        ", ".join(sources) or "-", shown or "-", " ".join(str(event.get("Description", "")).split()),
        event.get("ID", "?"))
