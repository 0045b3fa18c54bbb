"""conf/*.service: the privileges each daemon gets, read from the unit files themselves."""
import re
import shlex

import pytest

from myason.cli import build_parser
from tests.support.systemd import CONF, parse_unit, service

UNITS = ("myason-agent.service", "myason-collector.service", "myason-api.service")
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
             "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
             "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "RestrictNamespaces": "yes",
             "LockPersonality": "yes", "SystemCallArchitectures": "native",
             # Issue 12 item 17.
             "PrivateMounts": "yes", "ProcSubset": "pid", "ProtectProc": "invisible", "UMask": "0077"}


def syscall_filter(name):
    """(allowed groups/calls, denied ones) of a unit's SystemCallFilter= lines, in systemd's order."""
    allowed, denied = set(), set()
    for value in parse_unit((CONF / name).read_text())["Service"]["SystemCallFilter"]:
        deny = value.startswith("~")
        for item in value.lstrip("~").split():
            (denied if deny else allowed).add(item)
            (allowed if deny else denied).discard(item)
    return allowed, denied


def size(value):
    """Bytes of a systemd size (1024-based suffixes K, M, G)."""
    m = re.fullmatch(r"(\d+)([KMG]?)", value)
    assert m, value
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def words(value):
    """A space-separated list setting as a set."""
    return set(value.split())


def test_parse_unit_keeps_sections_and_repeats():
    u = parse_unit("# c\n[Unit]\nA=1\n\n[Service]\nB=x y\nB=z\n")
    assert u == {"Unit": {"A": ["1"]}, "Service": {"B": ["x y", "z"]}}


@pytest.mark.parametrize("name", UNITS)
def test_every_unit_is_hardened_and_never_root(name):
    s = service(name)
    for key, value in HARDENING.items():
        assert s.get(key) == value, "%s: %s" % (name, key)
    assert s["User"] and s["User"] not in ("root", "0") and s["Group"] not in ("root", "0")
    assert "DynamicUser" not in s
    assert s["KillSignal"] == "SIGTERM"
    assert parse_unit((CONF / name).read_text())["Install"]["WantedBy"] == ["multi-user.target"]


def test_agent_has_exactly_the_capture_capability():
    """Issue 12 item 16: CAP_NET_RAW alone; the capture buffer comes from net.core.rmem_max."""
    s = service("myason-agent.service")
    caps = {"CAP_NET_RAW"}
    assert words(s["AmbientCapabilities"]) == caps
    assert words(s["CapabilityBoundingSet"]) == caps
    assert words(s["RestrictAddressFamilies"]) == {"AF_PACKET", "AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert s["User"] == "myason-agent"
    assert s["ExecReload"].split()[-2:] == ["-HUP", "$MAINPID"]
    # Long enough to flush a full cache and send it.
    assert int(s["TimeoutStopSec"]) >= 60


@pytest.mark.parametrize("name", ["myason-collector.service", "myason-api.service"])
def test_collector_and_api_have_no_capabilities_at_all(name):
    s = service(name)
    assert s["Group"] == "myason"
    assert s["CapabilityBoundingSet"] == "" and s["AmbientCapabilities"] == ""
    assert "AF_PACKET" not in words(s["RestrictAddressFamilies"])
    # No capability to keep: a user namespace of their own.
    assert s["PrivateUsers"] == "yes"


def test_api_has_a_user_of_its_own_that_can_read_the_sqlite_store():
    """Issue 12 items 13 and 15: the API reads the collector's SQLite store through the group, nothing more."""
    from myason.store.sqlite import SqliteWriter
    collector, api = service("myason-collector.service"), service("myason-api.service")
    assert collector["User"] == "myason" and api["User"] == "myason-api"
    # Its primary group is the collector's (supplementary groups would not survive PrivateUsers).
    assert api["Group"] == collector["Group"] == "myason" and "SupplementaryGroups" not in api
    # The state directory lets the group in, and the store's files let the group read.
    assert collector["StateDirectory"] == "myason" and int(collector["StateDirectoryMode"], 8) & 0o050 == 0o050
    mode = SqliteWriter(path="x").file_mode
    assert mode & 0o040 and not mode & 0o007
    # Not a StateDirectory= of its own: systemd would give /var/lib/myason to myason-api.
    assert "StateDirectory" not in api
    assert api["ReadOnlyPaths"].lstrip("-") == "/var/lib/" + collector["StateDirectory"]
    assert api["RuntimeDirectoryMode"] == "0700"


@pytest.mark.parametrize("name", UNITS)
def test_resources_are_bounded_and_privileged_calls_filtered(name):
    """Issue 12 item 17: MemoryMax, LimitNOFILE, and @system-service minus @privileged and @resources."""
    s = service(name)
    assert 256 << 20 <= size(s["MemoryMax"]) <= 4 << 30
    assert 1024 <= int(s["LimitNOFILE"]) <= 65536
    allowed, denied = syscall_filter(name)
    assert allowed == {"@system-service"} and {"@privileged", "@resources"} <= denied
    assert s["SystemCallErrorNumber"] == "EPERM"


def test_memory_deny_write_execute_where_nothing_is_compiled_at_run_time():
    # numba's JIT needs writable executable memory even to load its cache: the agent's fast
    # engine (live capture) and the collector's encoders run on it; the API runs none.
    assert service("myason-api.service")["MemoryDenyWriteExecute"] == "yes"
    for name in ("myason-agent.service", "myason-collector.service"):
        assert "MemoryDenyWriteExecute" not in service(name)
    assert "--read" not in service("myason-agent.service")["ExecStart"]
    # The agent's capability must reach the host's network namespace.
    assert "PrivateUsers" not in service("myason-agent.service")


def test_agent_talks_ip_only_to_allowed_networks():
    """The agent sends to collectors only: IP is denied but for loopback, link-local and private networks."""
    from myason.agent.config import AgentConfig
    s = service("myason-agent.service")
    assert s["IPAddressDeny"] == "any"
    allowed = words(s["IPAddressAllow"])
    assert {"localhost", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"} <= allowed
    # A metrics endpoint, when set, is on loopback by default.
    assert AgentConfig().metrics is None


def test_shipped_sysctl_gives_the_buffers_the_daemons_ask_for():
    """conf/60-myason.conf raises net.core.rmem_max to the agent's and the collector's buffer sizes."""
    from myason.agent.capture import RCVBUF_BYTES
    from myason.collector.config import CollectorConfig
    settings = dict(line.replace(" ", "").split("=", 1) for line in (CONF / "60-myason.conf").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert int(settings["net.core.rmem_max"]) >= max(RCVBUF_BYTES, CollectorConfig().rcvbuf)


def test_collector_may_write_its_default_spool_and_store():
    from myason.collector.config import CollectorConfig
    s = service("myason-collector.service")
    writable = [p.lstrip("-") for p in s["ReadWritePaths"].split()] + ["/var/lib/" + s["StateDirectory"]]
    cfg = CollectorConfig()
    paths = [cfg.spool_dir] + [w["path"] for w in cfg.writers if "path" in w]
    for path in paths:
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), path


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_is_a_valid_command_line(name):
    argv = shlex.split(service(name)["ExecStart"])
    assert argv[0].endswith("/bin/myason")
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    if argv[1] not in commands:
        pytest.skip("this tree has no `myason %s` yet" % argv[1])
    args = parser.parse_args(argv[1:])
    assert args.command == argv[1]
