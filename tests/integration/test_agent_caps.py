"""The agent captures live as an unprivileged user holding only the capabilities its unit grants.

conf/myason-agent.service grants CAP_NET_RAW alone (User=, AmbientCapabilities=,
CapabilityBoundingSet=; the install raises net.core.rmem_max instead of granting CAP_NET_ADMIN
for the capture buffer) and denies writable executable memory: the agent runs as `nobody` under
setpriv with exactly the unit's capabilities (ambient, inheritable and bounding set) and the
kernel's own memory-deny-write-execute inside a throw-away namespace, and its records must be
exact. Given CAP_NET_ADMIN as well (an older unit, a drop-in, root), it uses it for
SO_RCVBUFFORCE and drops it before capture starts, in every thread (issue 12 item 16). The
control run without capabilities must fail to capture.
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

from tests.support import netns
from tests.support.agents import (AGENT_IF, OTHER_MAC, PEER_IF, Agent, capture_sockets, namespace_pair, read_records,
                                  write_conf)
from tests.support.summary import parse_summary
from tests.support.systemd import service

ROOT = Path(__file__).resolve().parents[2]
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def unit_caps():
    """The agent unit's AmbientCapabilities= in setpriv syntax (e.g. "+net_raw")."""
    names = service("myason-agent.service")["AmbientCapabilities"].split()
    return ",".join("+" + n.lower().replace("cap_", "", 1) for n in names)


def _mdwe():
    # MemoryDenyWriteExecute= of the unit, done by the kernel (Linux 6.3+) instead of seccomp.
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(97)


def mdwe_available():
    return subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_mdwe, timeout=30).returncode == 0

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not netns.have_netns(), reason="needs root and the `ip` tool"),
              pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")]


def _nobody():
    try:
        pwd.getpwnam("nobody")
        return True
    except KeyError:
        return False


def unprivileged_agent(ns, conf, caps, *args, preexec_fn=None, proc_subset=False):
    """`myason agent` in ns as nobody:nogroup with `caps` (setpriv syntax) or none at all.

    proc_subset: in a mount namespace whose /proc shows processes only, as the unit's
    ProcSubset=pid and ProtectProc=invisible make it.
    """
    cap_args = (["--inh-caps=" + caps, "--ambient-caps=" + caps, "--bounding-set=-all," + caps] if caps
                else ["--inh-caps=-all", "--bounding-set=-all"])
    argv = ["ip", "netns", "exec", ns, "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            *cap_args, sys.executable, str(ROOT / "myason.py"), "agent", "-ac", str(conf), "--no-progress", *args]
    if proc_subset:
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec "$@"', "sh"] + argv
    agent = Agent.__new__(Agent)
    # Without writable executable memory numba cannot run: the agent captures on the python engine.
    agent.expected_sockets, agent.ring = (1, False) if preexec_fn is _mdwe else capture_sockets(conf, args)
    agent.proc = subprocess.Popen(argv, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=preexec_fn)
    return agent


def capabilities(pid):
    """(uid, effective capability bits) of a running process."""
    status = dict(line.split(":", 1) for line in Path("/proc/%d/status" % pid).read_text().splitlines())
    return int(status["Uid"].split()[1]), int(status["CapEff"].strip(), 16)


def thread_capabilities(pid):
    """{(tid, set name): bits} of every thread of a running process, for CapEff, CapPrm, CapInh and CapAmb."""
    out = {}
    for task in Path("/proc/%d/task" % pid).iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        status = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        for name in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
            out[(int(task.name), name)] = int(status[name].strip(), 16)
    return out


def net_admin_dropped(pid):
    """True once no thread of pid holds CAP_NET_ADMIN in any set (and some thread still has CAP_NET_RAW)."""
    sets = thread_capabilities(pid)
    return bool(sets) and not any(bits & (1 << CAP_NET_ADMIN) for bits in sets.values()) and any(
        bits & (1 << CAP_NET_RAW) for (_, name), bits in sets.items() if name == "CapEff")


@pytest.fixture()
def workdir():
    """A directory `nobody` can write its record file into."""
    path = Path(tempfile.mkdtemp(prefix="myason-caps-"))
    os.chmod(path, 0o755)
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def capture_as_nobody(workdir, caps, preexec_fn=None, proc_subset=False):
    """A live capture of known frames as nobody with `caps`: (stderr, capabilities while capturing, of every thread)."""
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
        agent = unprivileged_agent(nsp["agent_ns"], conf, caps, "--output", str(out), "--no-export",
                                   preexec_fn=preexec_fn, proc_subset=proc_subset)
        try:
            agent.wait_capturing(nsp["ifindex"])
            # A dropped capability goes right after the sockets' setup: poll for it, with a deadline.
            agent._poll("CAP_NET_ADMIN to be gone", lambda: net_admin_dropped(agent.proc.pid), 10)
            uid, eff = capabilities(agent.proc.pid)
            netns.sendp_in_ns(nsp["peer_ns"], PEER_IF, frames)
            agent.wait_drained(nsp["ifindex"])
            threads = thread_capabilities(agent.proc.pid)     # every thread runs by now
            code, _, err = agent.stop()
        finally:
            agent.kill()
    assert code == 0, err
    assert uid == pwd.getpwnam("nobody").pw_uid
    got = Counter()
    for r in read_records(out):
        if r["src_ip"] == "10.198.7.1":
            got[r["src_port"]] += r["packets"]
    assert dict(got) == counts
    s = parse_summary(err)
    assert s["kernel_drops"] == 0 and s["queue_dropped_packets"] == 0
    return err, eff, threads


@pytest.mark.skipif(not _nobody(), reason="no `nobody` user")
def test_live_capture_with_the_units_capabilities(workdir):
    """As the unit runs it: CAP_NET_RAW alone, a /proc of processes only (issue 12 item 17), the fast engine."""
    caps = unit_caps()
    assert caps == "+net_raw"
    err, eff, threads = capture_as_nobody(workdir, caps, None, proc_subset=shutil.which("unshare") is not None)
    assert eff == 1 << CAP_NET_RAW
    assert {bits for (_, name), bits in threads.items() if name in ("CapEff", "CapPrm")} == {1 << CAP_NET_RAW}
    assert "CAP_NET_ADMIN" not in err          # nothing to drop, nothing to complain about
    assert "capturing with the python engine" not in err


@pytest.mark.skipif(not _nobody(), reason="no `nobody` user")
def test_without_writable_executable_memory_the_agent_falls_back_to_the_python_engine(workdir):
    """Under MemoryDenyWriteExecute (a unit that adds it back) numba cannot load: the agent says so and still captures."""
    if not mdwe_available():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    err, eff, _ = capture_as_nobody(workdir, unit_caps(), _mdwe, proc_subset=shutil.which("unshare") is not None)
    assert eff == 1 << CAP_NET_RAW
    assert "capturing with the python engine" in err


@pytest.mark.skipif(not _nobody(), reason="no `nobody` user")
def test_net_admin_is_used_for_the_buffer_then_dropped_in_every_thread(workdir):
    """Issue 12 item 16: with CAP_NET_ADMIN too, it serves SO_RCVBUFFORCE and is gone before capture runs."""
    err, eff, threads = capture_as_nobody(workdir, "+net_raw,+net_admin")
    # Capture still works with CAP_NET_RAW alone, which every thread keeps for reloads.
    assert eff == 1 << CAP_NET_RAW
    assert {bits for (_, name), bits in threads.items() if name in ("CapEff", "CapPrm")} == {1 << CAP_NET_RAW}
    assert len({tid for tid, _ in threads}) >= 3       # main, messenger, sniffer, processor, exporter
    assert "CAP_NET_ADMIN dropped" in err
    # ... after SO_RCVBUFFORCE got the full buffer (else the capture log names net.core.rmem_max).
    assert "net.core.rmem_max" not in err


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
