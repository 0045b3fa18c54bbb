"""The API's typed configuration (conf/api.yaml), built on myason.options' validators."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field

from myason.api.grammar import GrammarError, parse_time
from myason.errors import ConfigError
from myason.options import (check_bool, check_float, check_int, check_optional, check_str, load_config, meta,
                            parse_endpoint, parse_options, read_yaml_mapping, to_plain, validate_fields)
from myason.store.base import writer_class
from myason.store.query import first_sql_writer

DATABASE_TYPES = ("sqlite", "postgresql")


def check_bind(key, value):
    """'host:port' (port 0 = any free port) -> (host, port)."""
    if isinstance(value, str) and value.strip().endswith(":0"):
        host, _ = parse_endpoint(key, value.strip()[:-1] + "1")
        return (host, 0)
    return parse_endpoint(key, value)


def check_database(key, value):
    """None (take it from the collector config) or {type: sqlite, path} / {type: postgresql, dsn}."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in DATABASE_TYPES:
        raise ConfigError(key, "must be {type: sqlite, path: FILE} or {type: postgresql, dsn: DSN}, got %r" % (value,))
    need = "path" if value["type"] == "sqlite" else "dsn"
    for k in value:
        if k not in ("type", need):
            raise ConfigError("%s.%s" % (key, k), "unknown key for a %s database (known: type, %s)" % (value["type"], need))
    if not isinstance(value.get(need), str) or not value[need]:
        raise ConfigError("%s.%s" % (key, need), "required (a non-empty string)")
    return {"type": value["type"], need: value[need]}


def check_default_bound(key, value):
    """The time bound of a search without after/ or before/: a duration ('24h') or 0 (none) -> text or None."""
    if value is None or value in (0, "0"):
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,9}[smhdw]", value) or int(value[:-1]) == 0:
        raise ConfigError(key, "must be a duration (e.g. 24h, 7d) or 0 (no default bound), got %r" % (value,))
    try:
        parse_time(value)
    except GrammarError as exc:
        raise ConfigError(key, str(exc)) from None
    return value


def check_trusted_hosts(key, value):
    """None (check only without auth: loopback names and the bind address) or a list of host names."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(key, "must be a non-empty list of host names (or null), got %r" % (value,))
    out = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name.strip() or any(c in name for c in " /@,"):
            raise ConfigError("%s[%d]" % (key, i), "must be a host name or address without port, got %r" % (name,))
        out.append(name.strip().lower().strip("[]"))
    return tuple(out)


@dataclass(frozen=True)
class ApiConfig:
    """Everything `myason api` reads from api.yaml; see conf/api.yaml for each key."""

    bind: tuple = field(default=("127.0.0.1", 8080), metadata=meta(check_bind))
    auth: bool = field(default=True, metadata=meta(check_bool()))
    token: str | None = field(default=None, metadata=meta(
        check_optional(check_str(allow_empty=False, expected="a non-empty token"))))
    token_file: str | None = field(default=None, metadata=meta(
        check_optional(check_str(allow_empty=False, expected="a file path"))))
    collector_conf: str | None = field(default=None, metadata=meta(
        check_optional(check_str(allow_empty=False, expected="a file path"))))
    database: dict | None = field(default=None, metadata=meta(check_database))
    max_limit: int = field(default=10000, metadata=meta(check_int(1, 1000000)))
    default_limit: int = field(default=100, metadata=meta(check_int(1, 1000000)))
    query_cache_size: int = field(default=256, metadata=meta(check_int(0, 100000)))
    query_cache_ttl: float = field(default=60.0, metadata=meta(check_float(lo=0)))
    # Both caches are bounded in bytes too (myason.api.cache.approx_size): one search may hold
    # max_limit rows, so a count alone does not bound memory.
    query_cache_bytes: int = field(default=64 << 20, metadata=meta(check_int(0, 1 << 40)))
    period_cache_size: int = field(default=512, metadata=meta(check_int(0, 100000)))
    period_cache_bytes: int = field(default=32 << 20, metadata=meta(check_int(0, 1 << 40)))
    known_ids: int = field(default=1000, metadata=meta(check_int(1, 1000000)))
    query_timeout: float = field(default=30.0, metadata=meta(check_float(lo=0, lo_open=True)))
    pool_size: int = field(default=4, metadata=meta(check_int(1, 64)))
    events_limit: int = field(default=1000, metadata=meta(check_int(1, 1000000)))
    # Flow searches in the background (myason.api.searches): a search not done within
    # search_wait seconds is answered 202 with its id, its result is fetched from the spool later.
    default_bound: str | None = field(default="24h", metadata=meta(check_default_bound))
    search_wait: float = field(default=2.0, metadata=meta(check_float(lo=0, hi=3600)))
    search_workers: int = field(default=2, metadata=meta(check_int(1, 64)))
    search_queue: int = field(default=32, metadata=meta(check_int(1, 100000)))
    result_spool: str | None = field(default=None, metadata=meta(
        check_optional(check_str(allow_empty=False, expected="a directory path"))))
    result_ttl: float = field(default=3600.0, metadata=meta(check_float(lo=0, lo_open=True)))
    result_spool_bytes: int = field(default=256 << 20, metadata=meta(check_int(1024, 1 << 40)))
    # Connection limits (myason.api.protocol): slow or idle clients must not hold the server.
    max_connections: int = field(default=256, metadata=meta(check_int(1, 100000)))
    header_timeout: float = field(default=10.0, metadata=meta(check_float(lo=0, lo_open=True)))
    keepalive_timeout: float = field(default=5.0, metadata=meta(check_float(lo=0, lo_open=True)))
    max_header_bytes: int = field(default=16384, metadata=meta(check_int(1024, 1 << 20)))
    trusted_hosts: tuple | None = field(default=None, metadata=meta(check_trusted_hosts))
    docs: bool = field(default=False, metadata=meta(check_bool()))

    def __post_init__(self):
        validate_fields(self)
        if self.default_limit > self.max_limit:
            raise ConfigError("default_limit", "must be <= max_limit (%d), got %d" % (self.max_limit, self.default_limit))

    def to_dict(self) -> dict:
        """Plain types that load back to an equal config (the token is masked)."""
        out = {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["bind"] = "%s:%d" % (("[%s]" % self.bind[0]) if ":" in self.bind[0] else self.bind[0], self.bind[1])
        if self.token:
            out["token"] = "***"
        return out


def load_api_config(path=None, overrides=None) -> ApiConfig:
    """Load and validate: defaults < YAML file at `path` < `overrides`."""
    return load_config(ApiConfig, path, overrides)


def resolve_database(cfg: ApiConfig) -> dict:
    """The database to read: `database`, else the first SQL writer of `collector_conf`."""
    if cfg.database:
        return dict(cfg.database)
    if not cfg.collector_conf:
        raise ConfigError("database", "give a database ({type: sqlite, path: ...}) or a collector config (-cc)")
    # The collector's file is read for its writers only (the API is not above the collector):
    # the first SQL writer's own options are validated by that writer's spec.
    writers = read_yaml_mapping(cfg.collector_conf).get("writers")
    if not isinstance(writers, list) or not all(isinstance(w, dict) for w in writers):
        raise ConfigError("%s: writers" % cfg.collector_conf, "must be a list of writer mappings")
    writer = first_sql_writer(writers)
    opts = parse_options(writer["type"], {k: v for k, v in writer.items() if k not in ("type", "name")},
                         writer_class(writer["type"]).SPEC)
    key = "path" if writer["type"] == "sqlite" else "dsn"
    return {"type": writer["type"], key: opts[key]}


def resolve_token(cfg: ApiConfig) -> str | None:
    """The bearer token: `token`, else the first line of `token_file`, else a new random one; None without auth."""
    if not cfg.auth:
        return None
    if cfg.token:
        return cfg.token
    if cfg.token_file:
        try:
            with open(cfg.token_file, encoding="utf-8") as fh:
                token = fh.readline().strip()
        except OSError as exc:
            raise ConfigError("token_file", "cannot read %s: %s" % (cfg.token_file, exc.strerror or exc)) from None
        if not token:
            raise ConfigError("token_file", "%s is empty" % cfg.token_file)
        return token
    return secrets.token_urlsafe(24)


def token_is_generated(cfg: ApiConfig) -> bool:
    """True when resolve_token makes a new random token (auth on, neither token nor token_file)."""
    return cfg.auth and not cfg.token and not cfg.token_file


def is_loopback(host: str) -> bool:
    """True for a loopback address or 'localhost' (the only binds where --no-auth is allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_file_mode_ok(path: str) -> bool:
    """False when a token file can be read by group or others."""
    try:
        return os.stat(path).st_mode & 0o077 == 0
    except OSError:
        return True
