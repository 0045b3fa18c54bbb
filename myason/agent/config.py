"""The agent's configuration (agent.yaml): a frozen dataclass tree, validated by myason.options."""
from __future__ import annotations

import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field

from myason import wire
from myason.errors import ConfigError
from myason.options import (check_bool, check_endpoints, check_float, check_int, check_list, check_optional,
                            check_str, fail, format_endpoint, load_config, meta, parse_endpoint, to_plain,
                            unknown_key, validate_fields)

_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_IFNAMSIZ = 16  # Linux: interface names are at most IFNAMSIZ - 1 bytes


def default_agent_id():
    """This host's name, reduced to [A-Za-z0-9._:-] and 64 characters."""
    name = re.sub(r"[^A-Za-z0-9._:-]", "-", socket.gethostname())[:64]
    return name or "myason-agent"


def _check_ifname(key, value):
    if (not isinstance(value, str) or not value or len(value.encode()) >= _IFNAMSIZ
            or "/" in value or any(c.isspace() for c in value)):
        fail(key, "an interface name (1-15 characters, no '/' or spaces)", value)
    return value


_INTERFACE_KEYS = ("name", "bpf_filter")


@dataclass(frozen=True)
class InterfaceConfig:
    """One capture interface and its optional BPF filter."""

    name: str = field(metadata=meta(_check_ifname))
    bpf_filter: str = field(default="", metadata=meta(check_str()))

    def __post_init__(self):
        validate_fields(self)

    def to_dict(self) -> dict:
        """Plain mapping form, as written in agent.yaml."""
        return {"name": self.name, "bpf_filter": self.bpf_filter}


def check_interfaces(key, value):
    """Validator for `interfaces`: items are a name string or a {name, bpf_filter} mapping."""
    out = []
    for i, item in enumerate(check_list(key, value)):
        where = "%s[%d]" % (key, i)
        if isinstance(item, InterfaceConfig):
            iface = item
        elif isinstance(item, str):
            iface = InterfaceConfig(_check_ifname(where, item))
        elif isinstance(item, dict):
            for k in item:
                if k not in _INTERFACE_KEYS:
                    raise unknown_key("%s.%s" % (where, k), ["%s.%s" % (where, n) for n in _INTERFACE_KEYS])
            if "name" not in item:
                raise ConfigError(where + ".name", "is required")
            iface = InterfaceConfig(_check_ifname(where + ".name", item["name"]),
                                    check_str()(where + ".bpf_filter", item.get("bpf_filter", "")))
        else:
            fail(where, "an interface name or a mapping with 'name' and 'bpf_filter'", item)
        if any(o.name == iface.name for o in out):
            raise ConfigError(where, "interface %r is listed twice" % iface.name)
        out.append(iface)
    return tuple(out)


def default_workers():
    """The number of CPUs this process may run on: ring workers per interface by default."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):     # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


ENGINES = ("fast", "python")
# Ring block sizes: powers of two (the kernel allocates each block as 2**k pages), page-aligned
# on any page size up to 64 KiB.
RING_BLOCK_MIN, RING_BLOCK_MAX = 1 << 16, 1 << 27
RING_FRAME_MIN = 80           # TPACKET3_HDRLEN (68) rounded up to TPACKET_ALIGNMENT (16)


def check_engine(key, value):
    """Validator for `engine`: fast or python."""
    if value not in ENGINES:
        fail(key, "one of %s" % ", ".join(ENGINES), value)
    return value


def check_power_of_two(lo, hi):
    """Validator for a power of two in [lo, hi]."""
    inner = check_int(lo, hi)

    def check(key, value):
        value = inner(key, value)
        if value & (value - 1):
            fail(key, "a power of two between %d and %d" % (lo, hi), value)
        return value
    return check


def check_multiple(step, lo, hi):
    """Validator for a multiple of step in [lo, hi]."""
    inner = check_int(lo, hi)

    def check(key, value):
        value = inner(key, value)
        if value % step:
            fail(key, "a multiple of %d between %d and %d" % (step, lo, hi), value)
        return value
    return check


def check_metrics_endpoint(key, value):
    """Validator for a Prometheus endpoint 'host:port' (IP literal or name); kept as normalised text."""
    if not isinstance(value, str):
        fail(key, "a 'host:port' string", value)
    return format_endpoint(*parse_endpoint(key, value))


@dataclass(frozen=True)
class AgentConfig:
    """Everything the flow agent reads from agent.yaml; see conf/agent.yaml for each key's meaning."""

    interfaces: tuple[InterfaceConfig, ...] = field(default=(), metadata=meta(check_interfaces))
    agent_id: str = field(default_factory=default_agent_id, metadata=meta(
        check_str(pattern=_AGENT_ID_RE, expected="1-64 characters from [A-Za-z0-9._:-]")))
    key_file: str | None = field(default=None, metadata=meta(
        check_optional(check_str(allow_empty=False, expected="a file path"))))
    collectors: tuple[tuple[str, int], ...] = field(default=(), metadata=meta(check_endpoints))
    cache_limit: int = field(default=500000, metadata=meta(check_int(lo=1)))
    cache_active_timeout: float = field(default=1800.0, metadata=meta(check_float(lo=0, lo_open=True)))
    cache_inactive_timeout: float = field(default=15.0, metadata=meta(check_float(lo=0, lo_open=True)))
    cache_fin_timeout: float = field(default=2.0, metadata=meta(check_float(lo=0)))
    # The wire format's limits: the largest UDP payload over IPv4, and room for one record.
    max_datagram: int = field(default=1400, metadata=meta(check_int(wire.MIN_DATAGRAM, wire.MAX_UDP_PAYLOAD)))
    export_interval: float = field(default=1.0, metadata=meta(check_float(lo=0, lo_open=True)))
    tick: float = field(default=1.0, metadata=meta(check_float(lo=0, lo_open=True)))
    packet_queue: int = field(default=256, metadata=meta(check_int(lo=1)))
    flow_queue: int = field(default=100000, metadata=meta(check_int(lo=1)))
    exclude_export_traffic: bool = field(default=True, metadata=meta(check_bool()))
    promiscuous: bool = field(default=True, metadata=meta(check_bool()))
    # At least 96 bytes so Ethernet + VLAN + IPv6 + TCP headers are captured.
    snaplen: int = field(default=262144, metadata=meta(check_int(96, 262144)))
    asn_database: str | None = field(default=None, metadata=meta(
        check_optional(check_str(allow_empty=False, expected="a file path"))))
    stats_interval: float = field(default=60.0, metadata=meta(check_float(lo=0)))
    metrics: str | None = field(default=None, metadata=meta(check_optional(check_metrics_endpoint)))
    # Live capture on the fast engine (docs/agent.md): TPACKET_V3 rings, `workers` per interface.
    engine: str = field(default="fast", metadata=meta(check_engine))
    workers: int = field(default_factory=default_workers, metadata=meta(check_int(1, 64)))
    ring_block_size: int = field(default=1 << 20, metadata=meta(check_power_of_two(RING_BLOCK_MIN, RING_BLOCK_MAX)))
    ring_frame_size: int = field(default=2048, metadata=meta(check_multiple(16, RING_FRAME_MIN, RING_BLOCK_MIN)))
    ring_blocks: int = field(default=32, metadata=meta(check_int(2, 65536)))
    ring_block_timeout: float = field(default=0.05, metadata=meta(check_float(0.001, 60.0)))

    def __post_init__(self):
        validate_fields(self)

    def to_dict(self) -> dict:
        """Plain types (lists, dicts, 'host:port' strings) that load back to an equal config."""
        out = {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["collectors"] = [format_endpoint(h, p) for h, p in self.collectors]
        return out


def load_agent_config(path: str | None = None, overrides: dict | None = None) -> AgentConfig:
    """Load and validate the agent configuration: defaults < YAML file at `path` < `overrides`."""
    return load_config(AgentConfig, path, overrides)
