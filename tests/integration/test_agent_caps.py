"""The agent captures live as an unprivileged user holding only CAP_NET_RAW and CAP_NET_ADMIN.

This is what conf/myason-agent.service grants (User=, AmbientCapabilities=,
CapabilityBoundingSet=): the agent runs as `nobody` under setpriv with exactly those two
capabilities (ambient, inheritable and bounding set) inside a throw-away namespace, and its
records must be exact. The control run without capabilities must fail to capture.
"""
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tests.integration import netns
from tests.integration.summary import parse_summary
from tests.integration.test_agent_live import (AGENT_IF, OTHER_MAC, PEER_IF, Agent, namespace_pair, read_records,
                                               write_conf)

ROOT = Path(__file__).resolve().parents[2]
CAPS = "+net_raw,+net_admin"
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not netns.have_netns(), reason="needs root and the `ip` tool"),
              pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")]


def _nobody():
    try:
        pwd.getpwnam("nobody")
        return True
    except KeyError:
        return False


def unprivileged_agent(ns, conf, caps, *args):
    """`myason agent` in ns as nobody:nogroup with `caps` (setpriv syntax) or none at all."""
    cap_args = (["--inh-caps=" + caps, "--ambient-caps=" + caps, "--bounding-set=-all," + caps] if caps
                else ["--inh-caps=-all", "--bounding-set=-all"])
    argv = ["ip", "netns", "exec", ns, "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            *cap_args, sys.executable, str(ROOT / "myason.py"), "agent", "-ac", str(conf), "--no-progress", *args]
    agent = Agent.__new__(Agent)
    agent.proc = subprocess.Popen(argv, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return agent


def capabilities(pid):
    """(uid, effective capability bits) of a running process."""
    status = dict(line.split(":", 1) for line in Path("/proc/%d/status" % pid).read_text().splitlines())
    return int(status["Uid"].split()[1]), int(status["CapEff"].strip(), 16)


@pytest.fixture()
def workdir():
    """A directory `nobody` can write its record file into."""
    path = Path(tempfile.mkdtemp(prefix="myason-caps-"))
    os.chmod(path, 0o755)
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(not _nobody(), reason="no `nobody` user")
def test_live_capture_with_only_net_raw_and_net_admin(workdir):
    pytest.importorskip("scapy")
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    with namespace_pair() as nsp:
        counts = {4001: 5, 4002: 7, 4003: 9}
        frames = [bytes(Ether(src=nsp["peer_mac"], dst=OTHER_MAC) / IP(src="10.198.7.1", dst="10.198.7.2")
                        / UDP(sport=sport, dport=53) / (b"q" * 40))
                  for sport, n in counts.items() for _ in range(n)]
        conf = write_conf(workdir / "agent.yaml", agent_id="caps-it", interfaces=[AGENT_IF],
                          cache_inactive_timeout=0.5, tick=0.2, stats_interval=0)
        os.chmod(conf, 0o644)
        out = workdir / "flows.csv"
        agent = unprivileged_agent(nsp["agent_ns"], conf, CAPS, "--output", str(out), "--no-export")
        try:
            agent.wait_capturing(nsp["ifindex"])
            uid, caps = capabilities(agent.proc.pid)
            netns.sendp_in_ns(nsp["peer_ns"], PEER_IF, frames)
            agent._poll("the frames", lambda: agent._sockets(nsp["ifindex"]) == [0], 10)
            code, _, err = agent.stop()
        finally:
            agent.kill()
    assert code == 0, err
    assert uid == pwd.getpwnam("nobody").pw_uid
    assert caps == (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN)
    got = Counter()
    for r in read_records(out):
        if r["src_ip"] == "10.198.7.1":
            got[r["src_port"]] += r["packets"]
    assert dict(got) == counts
    s = parse_summary(err)
    assert s["kernel_drops"] == 0 and s["queue_dropped_packets"] == 0


@pytest.mark.skipif(not _nobody(), reason="no `nobody` user")
def test_without_capabilities_capture_is_refused(workdir):
    with namespace_pair() as nsp:
        conf = write_conf(workdir / "agent.yaml", agent_id="caps-it", interfaces=[AGENT_IF], stats_interval=0)
        os.chmod(conf, 0o644)
        agent = unprivileged_agent(nsp["agent_ns"], conf, None, "--no-export")
        try:
            _, err = agent.proc.communicate(timeout=60)
        finally:
            agent.kill()
    assert agent.proc.returncode == 1, err
    assert "CAP_NET_RAW" in err
