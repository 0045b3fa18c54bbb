"""Typed configuration: one frozen dataclass tree per daemon, loaded from YAML and validated."""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import socket
from dataclasses import dataclass, field

import yaml

from myason.errors import ConfigError

_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
_IFNAMSIZ = 16  # Linux: interface names are at most IFNAMSIZ - 1 bytes


# ---------------------------------------------------------------------------
# Shared validators. Each factory returns check(key, value) -> normalised value,
# raising ConfigError(key, ...) so every daemon's messages read the same way.
# ---------------------------------------------------------------------------

def _fail(key, expected, value):
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
            _fail(key, expected, value)
        if isinstance(value, float):
            if not value.is_integer():
                _fail(key, expected, value)
            value = int(value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            _fail(key, expected, value)
        return value
    return check


def check_float(lo=None, hi=None, lo_open=False):
    """Validator for a finite number (ints accepted) >= lo, or > lo when lo_open."""
    expected = _range_text("a number", lo, hi, lo_open)

    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, expected, value)
        value = float(value)
        if not math.isfinite(value):
            _fail(key, expected, value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            _fail(key, expected, value)
        if hi is not None and value > hi:
            _fail(key, expected, value)
        return value
    return check


def check_bool():
    """Validator for a real YAML bool; the strings 'yes'/'true' are rejected to catch quoting mistakes."""
    def check(key, value):
        if not isinstance(value, bool):
            _fail(key, "true or false", value)
        return value
    return check


def check_str(allow_empty=True, pattern=None, expected="a string"):
    """Validator for a string, optionally non-empty and matching a regex."""
    def check(key, value):
        if not isinstance(value, str):
            _fail(key, expected, value)
        if (not allow_empty and not value) or (pattern is not None and not pattern.match(value)):
            _fail(key, expected, value)
        return value
    return check


def check_optional(inner):
    """Validator that accepts None (YAML null or an absent value) or whatever `inner` accepts."""
    def check(key, value):
        return None if value is None else inner(key, value)
    return check


def _check_list(key, value):
    # Tuples come back when a loaded config is fed in again (dataclasses.replace, overrides).
    if not isinstance(value, (list, tuple)):
        _fail(key, "a list", value)
    return value


def parse_endpoint(key, value):
    """Parse 'host:port' or '[ipv6]:port' (or a [host, port] pair) into (host, port)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        host, port = value
        if not isinstance(host, str):
            _fail(key, "a host name or address", host)
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
        _fail(key, "a 'host:port' string", value)
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
    for i, item in enumerate(_check_list(key, value)):
        endpoint = parse_endpoint("%s[%d]" % (key, i), item)
        if endpoint in out:
            raise ConfigError("%s[%d]" % (key, i), "duplicate of %s" % format_endpoint(*endpoint))
        out.append(endpoint)
    return tuple(out)


def suggest_key(key, known):
    """The closest known key to a misspelt one, or None."""
    matches = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown_key(key, known):
    hint = suggest_key(key, known)
    return ConfigError(str(key), "unknown key" + (" (did you mean %r?)" % hint if hint else ""))


def _validate_fields(obj):
    # Runs from __post_init__ so direct construction and dataclasses.replace are checked too.
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            object.__setattr__(obj, f.name, check(f.name, getattr(obj, f.name)))


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_yaml_mapping(path):
    """Load a YAML file that must hold a mapping; an empty file gives {}."""
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
                raise _unknown_key(key, known)
            values[key] = value
    return cls(**values)


# ---------------------------------------------------------------------------
# Agent
# ---------------------------------------------------------------------------

def default_agent_id():
    """This host's name, reduced to [A-Za-z0-9._:-] and 64 characters."""
    name = re.sub(r"[^A-Za-z0-9._:-]", "-", socket.gethostname())[:64]
    return name or "myason-agent"


def _check_ifname(key, value):
    if (not isinstance(value, str) or not value or len(value.encode()) >= _IFNAMSIZ
            or "/" in value or any(c.isspace() for c in value)):
        _fail(key, "an interface name (1-15 characters, no '/' or spaces)", value)
    return value


_INTERFACE_KEYS = ("name", "bpf_filter")


@dataclass(frozen=True)
class InterfaceConfig:
    """One capture interface and its optional BPF filter."""

    name: str = field(metadata={"check": _check_ifname})
    bpf_filter: str = field(default="", metadata={"check": check_str()})

    def __post_init__(self):
        _validate_fields(self)

    def to_dict(self) -> dict:
        """Plain mapping form, as written in agent.yaml."""
        return {"name": self.name, "bpf_filter": self.bpf_filter}


def check_interfaces(key, value):
    """Validator for `interfaces`: items are a name string or a {name, bpf_filter} mapping."""
    out = []
    for i, item in enumerate(_check_list(key, value)):
        where = "%s[%d]" % (key, i)
        if isinstance(item, InterfaceConfig):
            iface = item
        elif isinstance(item, str):
            iface = InterfaceConfig(_check_ifname(where, item))
        elif isinstance(item, dict):
            for k in item:
                if k not in _INTERFACE_KEYS:
                    raise _unknown_key("%s.%s" % (where, k), ["%s.%s" % (where, n) for n in _INTERFACE_KEYS])
            if "name" not in item:
                raise ConfigError(where + ".name", "is required")
            iface = InterfaceConfig(_check_ifname(where + ".name", item["name"]),
                                    check_str()(where + ".bpf_filter", item.get("bpf_filter", "")))
        else:
            _fail(where, "an interface name or a mapping with 'name' and 'bpf_filter'", item)
        if any(o.name == iface.name for o in out):
            raise ConfigError(where, "interface %r is listed twice" % iface.name)
        out.append(iface)
    return tuple(out)


def check_metrics_endpoint(key, value):
    """Validator for a Prometheus endpoint 'host:port' (IP literal or name); kept as normalised text."""
    if not isinstance(value, str):
        _fail(key, "a 'host:port' string", value)
    return format_endpoint(*parse_endpoint(key, value))


def _meta(check):
    return {"check": check}


@dataclass(frozen=True)
class AgentConfig:
    """Everything the flow agent reads from agent.yaml; see conf/agent.yaml for each key's meaning."""

    interfaces: tuple[InterfaceConfig, ...] = field(default=(), metadata=_meta(check_interfaces))
    agent_id: str = field(default_factory=default_agent_id, metadata=_meta(
        check_str(pattern=_AGENT_ID_RE, expected="1-64 characters from [A-Za-z0-9._:-]")))
    key_file: str | None = field(default=None, metadata=_meta(
        check_optional(check_str(allow_empty=False, expected="a file path"))))
    collectors: tuple[tuple[str, int], ...] = field(default=(), metadata=_meta(check_endpoints))
    cache_limit: int = field(default=500000, metadata=_meta(check_int(lo=1)))
    cache_active_timeout: float = field(default=1800.0, metadata=_meta(check_float(lo=0, lo_open=True)))
    cache_inactive_timeout: float = field(default=15.0, metadata=_meta(check_float(lo=0, lo_open=True)))
    cache_fin_timeout: float = field(default=2.0, metadata=_meta(check_float(lo=0)))
    # 65507 = largest UDP payload over IPv4; below 512 a single record might not fit.
    max_datagram: int = field(default=1400, metadata=_meta(check_int(512, 65507)))
    export_interval: float = field(default=1.0, metadata=_meta(check_float(lo=0, lo_open=True)))
    tick: float = field(default=1.0, metadata=_meta(check_float(lo=0, lo_open=True)))
    packet_queue: int = field(default=256, metadata=_meta(check_int(lo=1)))
    flow_queue: int = field(default=100000, metadata=_meta(check_int(lo=1)))
    exclude_export_traffic: bool = field(default=True, metadata=_meta(check_bool()))
    promiscuous: bool = field(default=True, metadata=_meta(check_bool()))
    # At least 96 bytes so Ethernet + VLAN + IPv6 + TCP headers are captured.
    snaplen: int = field(default=262144, metadata=_meta(check_int(96, 262144)))
    asn_database: str | None = field(default=None, metadata=_meta(
        check_optional(check_str(allow_empty=False, expected="a file path"))))
    stats_interval: float = field(default=60.0, metadata=_meta(check_float(lo=0)))
    metrics: str | None = field(default=None, metadata=_meta(check_optional(check_metrics_endpoint)))

    def __post_init__(self):
        _validate_fields(self)

    def to_dict(self) -> dict:
        """Plain types (lists, dicts, 'host:port' strings) that load back to an equal config."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["collectors"] = [format_endpoint(h, p) for h, p in self.collectors]
        return out


def load_agent_config(path: str | None = None, overrides: dict | None = None) -> AgentConfig:
    """Load and validate the agent configuration: defaults < YAML file at `path` < `overrides`."""
    return load_config(AgentConfig, path, overrides)
