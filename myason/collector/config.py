"""The collector's typed configuration (conf/collector.yaml), built on myason.options' validators."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from myason.errors import ConfigError
from myason.options import (check_bool, check_float, check_int, check_optional, check_str, load_config, meta,
                            parse_endpoint, to_plain, validate_fields)
from myason.store.base import writer_names


def check_enrich(key, value):
    """The `enrich` mapping: known keys, and a pipeline that builds (steps, networks, options)."""
    from myason.enrich import build_pipeline
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping, e.g. {local_networks: [10.0.0.0/8]}")
    # Building validates every key (ConfigError names enrich.<option>, unknown ones too); geoip
    # databases are opened and closed again, so a missing file is reported at --check-config time.
    build_pipeline(value).close()
    return dict(value)


def check_detect(key, value):
    """The `detect` mapping (node_name, allowlist, detectors), validated by building the detectors."""
    from myason.detect import build_detectors
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping, e.g. {detectors: {scan_horizontal: {threshold: 50}}}")
    build_detectors(value)
    return dict(value)


def check_node_name(key, value):
    """An IDEA Node.Name (lowercase reverse-DNS, no hyphens)."""
    from myason.detect.idea import check_node_name as check
    return check(value, key)


def check_addresses(key, value):
    """One address or a list of them to bind to (IPv4 or IPv6 literals, or host names)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(key, "must be an address or a non-empty list of addresses, got %r" % (value,))
    out = []
    for i, item in enumerate(value):
        host, _ = parse_endpoint("%s[%d]" % (key, i), "[%s]:1" % item if ":" in str(item) else "%s:1" % item)
        out.append(host)
    return tuple(out)


def check_writers(key, value):
    """A list of mappings, each with a `type` naming a registered writer and that writer's options."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(key, "must be a non-empty list of writers, e.g. [{type: sqlite, path: flows.db}]")
    out = []
    types = writer_names()
    for i, item in enumerate(value):
        k = "%s[%d]" % (key, i)
        if not isinstance(item, dict) or "type" not in item:
            raise ConfigError(k, "must be a mapping with a 'type' (one of %s)" % ", ".join(types))
        if item["type"] not in types:
            raise ConfigError(k + ".type", "must be one of %s, got %r" % (", ".join(types), item["type"]))
        out.append(dict(item))
    names = [w.get("name", w["type"]) for w in out]
    if len(set(names)) != len(names):
        raise ConfigError(key, "two writers share a name: give each a distinct 'name'")
    return tuple(out)


@dataclass(frozen=True)
class CollectorConfig:
    """Everything the collector reads from collector.yaml; see conf/collector.yaml for each key."""

    bind_address: tuple = field(default=("0.0.0.0", "::"), metadata=meta(check_addresses))
    bind_port: int = field(default=9999, metadata=meta(check_int(1, 65535)))
    keystore: str | None = field(default=None, metadata=meta(
        check_optional(check_str(allow_empty=False, expected="a file path"))))
    token_ttl: float = field(default=5.0, metadata=meta(check_float(lo=0, lo_open=True)))
    rcvbuf: int = field(default=16 << 20, metadata=meta(check_int(65536, 1 << 30)))
    max_datagram: int = field(default=16384, metadata=meta(check_int(512, 65535)))
    processors_number: int = field(default=1, metadata=meta(check_int(1, 64)))
    processors_mode: str = field(default="auto", metadata=meta(
        check_str(pattern=re.compile(r"^(auto|thread|process)$"), expected="'auto', 'thread' or 'process'")))
    reuseport: bool = field(default=False, metadata=meta(check_bool()))
    writers_number: int = field(default=1, metadata=meta(check_int(1, 16)))
    packet_queue: int = field(default=4096, metadata=meta(check_int(lo=1)))
    queue_max_bytes: int = field(default=64 << 20, metadata=meta(check_int(lo=1 << 16)))
    source_rate: float = field(default=20000.0, metadata=meta(check_float(lo=0)))
    source_burst: float | None = field(default=None, metadata=meta(check_optional(check_float(lo=1))))
    seq_window: int = field(default=4096, metadata=meta(check_int(64, 1 << 20)))
    clock_skew: float = field(default=60.0, metadata=meta(check_float(lo=0)))
    batch_rows: int = field(default=5000, metadata=meta(check_int(1, 1000000)))
    batch_interval: float = field(default=0.5, metadata=meta(check_float(lo=0, lo_open=True)))
    spool_dir: str = field(default="/var/lib/myason/spool", metadata=meta(check_str(allow_empty=False)))
    spool_max_bytes: int = field(default=1 << 30, metadata=meta(check_int(lo=1 << 20)))
    spool_policy: str = field(default="block", metadata=meta(
        check_str(pattern=re.compile(r"^(block|reject)$"), expected="'block' or 'reject'")))
    writers: tuple = field(default=({"type": "sqlite", "path": "/var/lib/myason/flows.db"},),
                           metadata=meta(check_writers))
    stats_interval: float = field(default=60.0, metadata=meta(check_float(lo=0)))
    health_interval: float = field(default=10.0, metadata=meta(check_float(lo=0)))
    instance: str | None = field(default=None, metadata=meta(
        check_optional(check_str(allow_empty=False, expected="a name for this collector"))))
    metrics: str | None = field(default=None, metadata=meta(
        check_optional(check_str(allow_empty=False, expected="host:port for the Prometheus endpoint"))))
    fsync: bool = field(default=True, metadata=meta(check_bool()))
    enrich: dict = field(default_factory=dict, metadata=meta(check_enrich))
    detect: dict = field(default_factory=dict, metadata=meta(check_detect))
    detect_enabled: bool = field(default=True, metadata=meta(check_bool()))
    detect_clock: str = field(default="wall", metadata=meta(
        check_str(pattern=re.compile(r"^(wall|flow)$"), expected="'wall' or 'flow'")))
    node_name: str = field(default="org.example.myason", metadata=meta(check_node_name))

    def __post_init__(self):
        validate_fields(self)

    @property
    def process_mode(self) -> bool:
        """True when processors run as child processes ('auto': whenever there is more than one)."""
        if self.processors_mode == "auto":
            return self.processors_number > 1
        return self.processors_mode == "process"

    def detect_config(self) -> dict:
        """The `detect` mapping with `node_name` filled in from the top-level key when unset."""
        out = dict(self.detect)
        out.setdefault("node_name", self.node_name)
        return out

    def to_dict(self) -> dict:
        """Plain types that load back to an equal config."""
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def load_collector_config(path=None, overrides=None) -> CollectorConfig:
    """Load and validate: defaults < YAML file at `path` < `overrides`."""
    return load_config(CollectorConfig, path, overrides)
