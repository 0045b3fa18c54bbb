"""conf/*.service: the privileges each daemon gets, read from the unit files themselves."""
import re
import shlex
from pathlib import Path

import pytest

from myason.cli import build_parser

CONF = Path(__file__).resolve().parents[2] / "conf"
UNITS = ("myason-agent.service", "myason-collector.service", "myason-api.service")
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
             "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
             "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "RestrictNamespaces": "yes",
             "LockPersonality": "yes", "SystemCallArchitectures": "native"}


def parse_unit(text):
    """{section: {key: [values in order]}} of a systemd unit file (comments and blank lines skipped)."""
    out, section = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if m:
            section = out.setdefault(m.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, "not a unit line: %r" % raw
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def service(name):
    """The [Service] section of a unit: key -> last value (what systemd uses for single values)."""
    return {k: v[-1] for k, v in parse_unit((CONF / name).read_text())["Service"].items()}


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


def test_agent_has_exactly_the_two_capture_capabilities():
    s = service("myason-agent.service")
    caps = {"CAP_NET_RAW", "CAP_NET_ADMIN"}
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
    assert s["User"] == "myason" and s["Group"] == "myason"
    assert s["CapabilityBoundingSet"] == "" and s["AmbientCapabilities"] == ""
    assert s["StateDirectory"] == "myason"
    assert "AF_PACKET" not in words(s["RestrictAddressFamilies"])


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
