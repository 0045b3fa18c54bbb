"""Two throw-away network namespaces joined by a veth pair, for live-capture benchmarks (root).

The sender's end lives in one namespace and the meters' end in the other, so nothing else on
the machine sends into the link and the meters see exactly what the sender put on it. Both
ends carry no address and have IPv6 off (no router solicitations, no neighbour discovery): the
only frames on the link are the ones replayed. Everything is removed on exit, on an exception
or Ctrl-C; namespaces of an earlier run whose process is gone (killed with -9) are removed at
the next start.

(A helper of its own: the tests' tests/support/netns.py joins a namespace to the current one and
gives both ends addresses.)
"""
import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PREFIX = "mybl"      # namespaces mybl-<pid>-snd / -rcv, interfaces myblS<pid> / myblR<pid>


@dataclass(frozen=True)
class Link:
    """The namespaces and interface names of one veth pair."""

    snd_ns: str
    rcv_ns: str
    snd_if: str
    rcv_if: str


def available():
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs the `ip` tool (iproute2)"
    return None


def ip(*args, check=True):
    """Run `ip ARGS`; the CompletedProcess (text)."""
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def in_ns(ns, argv):
    """argv run inside namespace ns (`ip netns exec` execs it: the process keeps its pid)."""
    return ["ip", "netns", "exec", ns, *argv]


def _sysctl(ns, name, value):
    subprocess.run(in_ns(ns, ["sh", "-c", "echo %s > /proc/sys/%s" % (value, name.replace(".", "/"))]),
                   check=True, capture_output=True, timeout=30)


def remove_stale():
    """Delete namespaces of earlier runs whose process no longer exists."""
    root = Path("/run/netns")
    if not root.is_dir():
        return
    for entry in root.iterdir():
        m = re.fullmatch(r"%s-(\d+)-(snd|rcv)" % PREFIX, entry.name)
        if m and not Path("/proc", m.group(1)).exists():
            ip("netns", "delete", entry.name, check=False)


def _cleanup(link):
    # Deleting a namespace destroys the veth end inside it, which takes its peer along; the
    # link delete covers a failure before the ends were moved.
    ip("netns", "delete", link.snd_ns, check=False)
    ip("netns", "delete", link.rcv_ns, check=False)
    ip("link", "delete", link.snd_if, check=False)


@contextlib.contextmanager
def veth_namespaces(mtu=None):
    """Yield a Link: namespaces and veth ends up, no addresses, IPv6 off; always removed after."""
    why = available()
    if why:
        raise RuntimeError("veth_namespaces(): " + why)
    remove_stale()
    pid = os.getpid()
    link = Link("%s-%d-snd" % (PREFIX, pid), "%s-%d-rcv" % (PREFIX, pid),
                ("%sS%d" % (PREFIX, pid))[:15], ("%sR%d" % (PREFIX, pid))[:15])
    try:
        ip("netns", "add", link.snd_ns)
        ip("netns", "add", link.rcv_ns)
        ip("link", "add", link.snd_if, "type", "veth", "peer", "name", link.rcv_if)
        for ns, ifname in ((link.snd_ns, link.snd_if), (link.rcv_ns, link.rcv_if)):
            for key in ("all", "default"):
                _sysctl(ns, "net.ipv6.conf.%s.disable_ipv6" % key, 1)
            ip("link", "set", ifname, "netns", ns)
            _sysctl(ns, "net.ipv6.conf.%s.disable_ipv6" % ifname, 1)
            if mtu:
                ip("-n", ns, "link", "set", ifname, "mtu", str(mtu))
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", ifname, "up")
        yield link
    finally:
        _cleanup(link)
