"""Option validation, one mechanism for every configuration: daemons, writers, enrichers, detectors.

A check is a function check(key, value) -> normalised value that raises ConfigError(key, ...)
naming the key, so every message reads the same way. Daemon configs are frozen dataclasses whose
fields carry their check (`field(default=..., metadata=meta(check))`), loaded with `load_config`; pluggable parts
(writers, enrichers, detectors) declare a spec {name: (default or REQUIRED, check)} beside their
code and read their options with `parse_options`. Either way an unknown key is an error that
names it (with the closest known key), a wrong type or value too.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re


from myason.errors import ConfigError

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
# Marks an option with no default in a parse_options spec.
REQUIRED = object()


def fail(key, expected, value):
    """Raise the standard 'must be EXPECTED, got VALUE' error for `key`."""
    raise ConfigError(key, "must be %s, got %r" % (expected, value))


def _range_text(kind, lo, hi, lo_open=False):
    if lo is not None and hi is not None:
        return "%s between %s and %s" % (kind, lo, hi)
    if lo is not None:
        return "%s %s %s" % (kind, ">" if lo_open else ">=", lo)
    if hi is not None:
        return "%s <= %s" % (kind, hi)
    return kind


def check_int(lo=None, hi=None):
    """Validator for an integer in [lo, hi]; integral floats are accepted, bools and strings are not."""
    expected = _range_text("an integer", lo, hi)

    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(key, expected, value)
        if isinstance(value, float):
            if not value.is_integer():
                fail(key, expected, value)
            value = int(value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            fail(key, expected, value)
        return value
    return check


def check_float(lo=None, hi=None, lo_open=False):
    """Validator for a finite number (ints accepted) >= lo, or > lo when lo_open."""
    expected = _range_text("a number", lo, hi, lo_open)

    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(key, expected, value)
        value = float(value)
        if not math.isfinite(value):
            fail(key, expected, value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            fail(key, expected, value)
        if hi is not None and value > hi:
            fail(key, expected, value)
        return value
    return check


def check_bool():
    """Validator for a real YAML bool; the strings 'yes'/'true' are rejected to catch quoting mistakes."""
    def check(key, value):
        if not isinstance(value, bool):
            fail(key, "true or false", value)
        return value
    return check


def check_str(allow_empty=True, pattern=None, expected="a string"):
    """Validator for a string, optionally non-empty and matching a regex."""
    def check(key, value):
        if not isinstance(value, str):
            fail(key, expected, value)
        if (not allow_empty and not value) or (pattern is not None and not pattern.match(value)):
            fail(key, expected, value)
        return value
    return check


def check_optional(inner):
    """Validator that accepts None (YAML null or an absent value) or whatever `inner` accepts."""
    def check(key, value):
        return None if value is None else inner(key, value)
    return check


def check_list(key, value):
    """Validator for a list (or a tuple, as a loaded config gives back)."""
    # Tuples come back when a loaded config is fed in again (dataclasses.replace, overrides).
    if not isinstance(value, (list, tuple)):
        fail(key, "a list", value)
    return value


def parse_endpoint(key, value):
    """Parse 'host:port' or '[ipv6]:port' (or a [host, port] pair) into (host, port)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        host, port = value
        if not isinstance(host, str):
            fail(key, "a host name or address", host)
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        port = check_int(1, 65535)(key, port)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or not text[close + 1:].startswith(":"):
                raise ConfigError(key, "expected '[ipv6-address]:port', got %r" % value)
            host, port_text = text[1:close], text[close + 2:]
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        elif text.count(":") > 1:
            # "::1:9999" could be an address or address+port: insist on brackets.
            raise ConfigError(key, "IPv6 addresses need brackets, as in '[2001:db8::1]:9999', got %r" % value)
        else:
            raise ConfigError(key, "expected 'host:port', got %r (the port is required)" % value)
        if not re.fullmatch(r"[0-9]{1,5}", port_text):
            raise ConfigError(key, "port must be an integer between 1 and 65535, got %r" % port_text)
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ConfigError(key, "port must be an integer between 1 and 65535, got %d" % port)
    else:
        fail(key, "a 'host:port' string", value)
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key, "%r is not a valid IPv6 address" % host) from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(key, "%r is not a valid IPv4 address" % host) from None
    elif not _HOSTNAME_RE.match(host):
        raise ConfigError(key, "%r is not a valid host name or IPv4 address" % host)
    return (host, port)


def format_endpoint(host, port):
    """Inverse of parse_endpoint: 'host:port', with brackets around IPv6 addresses."""
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def check_endpoints(key, value):
    """Validator for a list of endpoints; duplicates are rejected because they would double-send."""
    out = []
    for i, item in enumerate(check_list(key, value)):
        endpoint = parse_endpoint("%s[%d]" % (key, i), item)
        if endpoint in out:
            raise ConfigError("%s[%d]" % (key, i), "duplicate of %s" % format_endpoint(*endpoint))
        out.append(endpoint)
    return tuple(out)


def suggest_key(key, known):
    """The closest known key to a misspelt one, or None."""
    matches = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key(key, known):
    """The ConfigError for an unknown key, with the closest known one as a hint."""
    hint = suggest_key(key, known)
    return ConfigError(str(key), "unknown key" + (" (did you mean %r?)" % hint if hint else ""))


def validate_fields(obj):
    """Run each dataclass field's check (from __post_init__: direct construction and replace() are checked too)."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            object.__setattr__(obj, f.name, check(f.name, getattr(obj, f.name)))


def to_plain(value):
    """A config value as plain YAML types (dataclasses to mappings, tuples to lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def read_yaml_mapping(path):
    """Load a YAML file that must hold a mapping; an empty file gives {}."""
    import yaml     # here: a command without a config file (a replay) does not load PyYAML
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(str(path), "cannot read configuration file: %s" % (exc.strerror or exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "invalid YAML: %s" % exc) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "must be a mapping of keys to values, got %s" % type(data).__name__)
    return data


def load_config(cls, path=None, overrides=None):
    """Build config class `cls` from defaults, then the YAML file at `path`, then `overrides`.

    Override values of None mean "not given" (argparse leaves unset options as None);
    override values must already be typed (run strings through yaml.safe_load first).
    """
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    sources = [read_yaml_mapping(path) if path is not None else {}]
    sources.append({k: v for k, v in (overrides or {}).items() if v is not None})
    for source in sources:
        for key, value in source.items():
            if key not in known:
                raise unknown_key(key, known)
            values[key] = value
    return cls(**values)


def check_choice(*choices):
    """Validator for one of a few literal values."""
    expected = "one of %s" % ", ".join(repr(c) for c in choices)

    def check(key, value):
        if isinstance(value, bool) or value not in choices:
            fail(key, expected, value)
        return value
    return check


def check_items(item_check, expected="a list"):
    """Validator for a list whose items each pass item_check (keys name the item: key[i])."""
    def check(key, value):
        if not isinstance(value, (list, tuple)):
            fail(key, expected, value)
        return [item_check("%s[%d]" % (key, i), v) for i, v in enumerate(value)]
    return check


def check_mapping(key, value):
    """Validator for a mapping (YAML dict)."""
    if not isinstance(value, dict):
        fail(key, "a mapping", value)
    return value


def meta(check):
    """Metadata of a dataclass field validated by `check`: field(default=..., metadata=meta(check))."""
    return {"check": check}


def parse_options(section, options, spec):
    """Validate a part's options against spec {name: (default or REQUIRED, check)}.

    Returns a dict with every option; ConfigError names `section.option` for an unknown, missing
    or invalid option.
    """
    if not isinstance(options, dict):
        fail(section, "a mapping of options", options)
    for key in options:
        if key not in spec:
            hint = suggest_key(key, spec)
            raise ConfigError("%s.%s" % (section, key),
                              "unknown option" + (" (did you mean %r?)" % hint if hint else ""))
    out = {}
    for key, (default, check) in spec.items():
        if key not in options:
            if default is REQUIRED:
                raise ConfigError("%s.%s" % (section, key), "required")
            out[key] = default
        else:
            out[key] = check("%s.%s" % (section, key), options[key])
    return out
