"""The `greylist_push` section (conf/greylist-push.yaml), validated by myason.options' specs."""
from __future__ import annotations

import re
from dataclasses import dataclass

from myason.fsmode import check_file_mode
from myason.nets import parse_cidrs
from myason.options import (REQUIRED, check_choice, check_float, check_int, check_optional, check_str, fail,
                            parse_options, read_yaml_mapping, unknown_key)
from myason.store.query import parse_duration

SECTION = "greylist_push"
# nft identifiers; set, table and chain names land in the script, so nothing else may pass.
_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}\Z")
# ipset names are at most 31 bytes; the temporary set of the swap adds "-new".
_IPSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,26}\Z")
SWAP_SUFFIX = "-new"
# What applies each format when `command` is null.
DEFAULT_COMMANDS = {"nftables": ("nft", "-f", "{file}"), "ipset": ("ipset", "restore", "-file", "{file}")}


def check_duration(key, value):
    """A window such as "7d" -> (text, seconds)."""
    if not isinstance(value, str):
        fail(key, "a duration such as 1h or 7d", value)
    return (value, parse_duration(key, value))


def check_command(key, value):
    """An argv list of strings (no shell), "{file}" in an item becoming the file's path; [] for none."""
    if not isinstance(value, (list, tuple)):
        fail(key, "a list of program and arguments, e.g. [nft, -f, '{file}'] ([] for none)", value)
    for i, item in enumerate(value):
        if not isinstance(item, str) or (i == 0 and not item.strip()):
            fail("%s[%d]" % (key, i), "a string" + (" (the program)" if i == 0 else ""), item)
    return tuple(value)


def check_allowlist(key, value):
    """CIDRs never pushed -> a tuple of ipaddress networks."""
    v4, v6 = parse_cidrs(key, value if value is not None else [])
    return tuple(v4 + v6)


def check_nftables(key, value):
    """The `nftables` sub-section: NFT_SPEC's options."""
    return parse_options(key, {} if value is None else value, NFT_SPEC)


def check_ipset(key, value):
    """The `ipset` sub-section: IPSET_SPEC's options."""
    return parse_options(key, {} if value is None else value, IPSET_SPEC)


NFT_SPEC = {
    "family": ("inet", check_choice("inet", "ip", "ip6")),
    "table": ("myason", check_str(pattern=_NFT_NAME, expected="an nft name (letters, digits, _)")),
    "set4": ("greylist4", check_str(pattern=_NFT_NAME, expected="an nft name (letters, digits, _)")),
    "set6": ("greylist6", check_str(pattern=_NFT_NAME, expected="an nft name (letters, digits, _)")),
    "chain": ("greylist", check_str(pattern=_NFT_NAME, expected="an nft name (letters, digits, _)")),
    # null: the sets alone, no chain (nothing is dropped by this table).
    "hook": ("input", check_optional(check_choice("input", "forward", "prerouting"))),
    "priority": (-10, check_int(-400, 400)),
    "verdict": ("drop", check_choice("drop", "reject")),
}
IPSET_SPEC = {
    "set4": ("myason-greylist4", check_str(pattern=_IPSET_NAME, expected="an ipset name of at most 27 characters")),
    "set6": ("myason-greylist6", check_str(pattern=_IPSET_NAME, expected="an ipset name of at most 27 characters")),
    "hashsize": (1024, check_int(64, 1 << 26)),
}
SPEC = {
    "format": ("nftables", check_choice("nftables", "ipset")),
    "file": (REQUIRED, check_str(allow_empty=False, expected="a file path")),
    "file_mode": (0o640, check_file_mode),
    "state_file": (None, check_optional(check_str(allow_empty=False, expected="a file path"))),
    "command": (None, check_optional(check_command)),
    "command_timeout": (30.0, check_float(lo=0, lo_open=True)),
    "interval": (0.0, check_float(lo=0)),
    "since": (("7d", 7 * 86400.0), check_duration),
    "min_events": (1, check_int(1)),
    # The host's own loopback: a detector that saw it would otherwise cut the host off itself.
    "allowlist": (check_allowlist("allowlist", ["127.0.0.0/8", "::1/128"]), check_allowlist),
    "max_elements": (65536, check_int(1, 1 << 24)),
    "nftables": (parse_options("nftables", {}, NFT_SPEC), check_nftables),
    "ipset": (parse_options("ipset", {}, IPSET_SPEC), check_ipset),
}


@dataclass(frozen=True)
class PushConfig:
    """What a greylist push reads from its section (SPEC has the defaults; conf/greylist-push.yaml
    the meaning of each key). `since` is (text, seconds); `allowlist` ipaddress networks."""

    format: str
    file: str
    file_mode: int
    state_file: str | None
    command: tuple
    command_timeout: float
    interval: float
    since: tuple
    min_events: int
    allowlist: tuple
    max_elements: int
    nftables: dict
    ipset: dict


def parse_push_config(section) -> PushConfig:
    """A PushConfig from the section's mapping (None = empty); ConfigError names a bad key."""
    opts = parse_options(SECTION, section if section is not None else {}, SPEC)
    if opts["command"] is None:
        opts["command"] = DEFAULT_COMMANDS[opts["format"]]
    return PushConfig(**opts)


def load_push_config(path, since=None) -> PushConfig:
    """The config of the YAML file at `path` (its one `greylist_push` mapping); `since` overrides."""
    data = read_yaml_mapping(path)
    for key in data:
        if key != SECTION:
            raise unknown_key(key, [SECTION])
    section = data.get(SECTION)
    if section is not None and not isinstance(section, dict):
        fail(SECTION, "a mapping of options", section)
    section = dict(section or {})
    if since is not None:
        section["since"] = since
    return parse_push_config(section)


def describe(cfg: PushConfig) -> str:
    """One line of what a push does, for the log at start."""
    what = "nftables table %s %s" % (cfg.nftables["family"], cfg.nftables["table"]) if cfg.format == "nftables" \
        else "ipset sets %s, %s" % (cfg.ipset["set4"], cfg.ipset["set6"])
    return "%s into %s, sources of the last %s, applied by %s" % (
        what, cfg.file, cfg.since[0], " ".join(cfg.command) if cfg.command else "nothing (command: [])")

