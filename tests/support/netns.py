"""Throw-away network namespaces joined to the current one by a veth pair, for root-only tests."""
import contextlib
import ctypes
import fcntl
import itertools
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Subnets 10.199.<n>.0/24 and fd00:199:<n>::/64 are test-only; <n> is picked under a lock so
# that concurrent test processes on the same machine never get the same routes.
_LOCK_PATH = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "myason-netns.lock"
_counter = itertools.count()


@dataclass(frozen=True)
class VethPair:
    """Names and addresses of one veth pair: `host_*` in the current namespace, `ns_*` inside `ns`."""

    ns: str
    n: int
    host_if: str
    ns_if: str
    host_ip4: str
    ns_ip4: str
    host_ip6: str
    ns_ip6: str
    host_mac: str
    ns_mac: str


def have_netns():
    """True when network namespaces can be made here: root and the `ip` tool present."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def run_in_ns(ns, argv, input=None, timeout=30, check=True):
    """Run argv inside namespace ns (`ip netns exec`) and return the CompletedProcess (text mode)."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True,
                          text=True, timeout=timeout, check=check)


def _used_subnets():
    out = _ip("-o", "addr", "show").stdout
    return {int(m) for m in re.findall(r"\binet 10\.199\.(\d+)\.", out)}


def _mac(ifname, ns=None):
    argv = ["cat", "/sys/class/net/%s/address" % ifname]
    if ns:
        return run_in_ns(ns, argv).stdout.strip()
    return Path(argv[1]).read_text().strip()


def _cleanup(ns, host_if):
    # Deleting the namespace destroys its veth end, which takes the peer with it; the explicit
    # link delete covers a failure before the move into the namespace.
    _ip("netns", "delete", ns, check=False)
    _ip("link", "delete", host_if, check=False)


@contextlib.contextmanager
def veth_pair():
    """Create a namespace and a veth pair (both ends up, addressed); yield a VethPair; always remove them."""
    if not have_netns():
        raise RuntimeError("veth_pair() needs root and the `ip` tool")
    k = next(_counter)
    pid = os.getpid()
    ns = "mya-%d-%d" % (pid, k)
    # IFNAMSIZ is 16 with the NUL: keep names to at most 15 characters.
    host_if = ("mh%dx%d" % (pid, k))[:15]
    ns_if = ("mn%dx%d" % (pid, k))[:15]
    with open(_LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            free = sorted(set(range(1, 255)) - _used_subnets())
            if not free:
                raise RuntimeError("no free 10.199.<n>.0/24 test subnet")
            n = free[0]
            try:
                _ip("netns", "add", ns)
                _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
                _ip("link", "set", ns_if, "netns", ns)
                # nodad: the IPv6 addresses are usable at once instead of after duplicate detection.
                _ip("addr", "add", "10.199.%d.1/24" % n, "dev", host_if)
                _ip("-6", "addr", "add", "fd00:199:%d::1/64" % n, "dev", host_if, "nodad")
                _ip("link", "set", host_if, "up")
                _ip("-n", ns, "addr", "add", "10.199.%d.2/24" % n, "dev", ns_if)
                _ip("-n", ns, "-6", "addr", "add", "fd00:199:%d::2/64" % n, "dev", ns_if, "nodad")
                _ip("-n", ns, "link", "set", ns_if, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            except BaseException:
                _cleanup(ns, host_if)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        yield VethPair(ns=ns, n=n, host_if=host_if, ns_if=ns_if,
                       host_ip4="10.199.%d.1" % n, ns_ip4="10.199.%d.2" % n,
                       host_ip6="fd00:199:%d::1" % n, ns_ip6="fd00:199:%d::2" % n,
                       host_mac=_mac(host_if), ns_mac=_mac(ns_if, ns))
    finally:
        _cleanup(ns, host_if)


# Reads hex frames, one a line, from stdin and sends them out of argv[1] with scapy's sendp.
SENDP_SCRIPT = (
    "import sys\n"
    "from scapy.all import sendp, Raw\n"
    "frames = [Raw(bytes.fromhex(line)) for line in sys.stdin.read().split()]\n"
    "sendp(frames, iface=sys.argv[1], verbose=0)\n"
)


def sendp_in_ns(ns, ifname, frames):
    """Send raw Ethernet frames (bytes) out of ifname inside namespace ns, using scapy's sendp."""
    data = "\n".join(bytes(f).hex() for f in frames)
    run_in_ns(ns, [sys.executable, "-c", SENDP_SCRIPT, ifname], input=data, timeout=60)


# The same, kept running: one line of hex frames in, "ok" out once scapy has sent them.
_SENDER_SCRIPT = (
    "import sys\n"
    "from scapy.all import sendp, Raw, conf\n"
    "sock = conf.L2socket(iface=sys.argv[1])\n"
    "for line in sys.stdin:\n"
    "    sendp([Raw(bytes.fromhex(h)) for h in line.split()], socket=sock, verbose=0)\n"
    "    print('ok', flush=True)\n"
)


class NsSender:
    """A scapy process inside ns that sends frames out of ifname on request (scapy imported once)."""

    def __init__(self, ns, ifname):
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", _SENDER_SCRIPT, ifname]
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, frames):
        """Send raw frames (bytes) and return once they are out."""
        self._proc.stdin.write(" ".join(bytes(f).hex() for f in frames) + "\n")
        self._proc.stdin.flush()
        if self._proc.stdout.readline().strip() != "ok":
            raise RuntimeError("the sender in the namespace died (exit %s)" % self._proc.poll())

    def close(self):
        """Stop the sender process."""
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()


@dataclass(frozen=True)
class Spoke:
    """A namespace joined to the hub namespace by its own veth pair, with addresses on both ends."""

    ns: str
    ip4: str
    ip6: str
    hub_ip4: str
    hub_ip6: str


@contextlib.contextmanager
def hub_and_spokes(count):
    """A hub namespace and `count` spoke namespaces, each joined to the hub by a veth pair
    (10.201.<i>.0/24, fd00:201:<i>::/64); nothing of the current namespace is touched.
    Yields (hub, [Spoke]); always removes them."""
    if not have_netns():
        raise RuntimeError("hub_and_spokes() needs root and the `ip` tool")
    tag = "%d-%d" % (os.getpid(), next(_counter))
    hub = "myhub-" + tag
    spokes = [Spoke("myspk%d-%s" % (i, tag), "10.201.%d.1" % i, "fd00:201:%d::1" % i, "10.201.%d.2" % i,
                    "fd00:201:%d::2" % i) for i in range(1, count + 1)]
    made = []
    try:
        for ns in [hub] + [s.ns for s in spokes]:
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for i, s in enumerate(spokes, 1):
            hub_if, ns_if = "hub%d" % i, "spk%d" % i
            _ip("-n", hub, "link", "add", hub_if, "type", "veth", "peer", "name", ns_if, "netns", s.ns)
            for ns, ifname, ip4, ip6 in ((hub, hub_if, s.hub_ip4, s.hub_ip6), (s.ns, ns_if, s.ip4, s.ip6)):
                _ip("-n", ns, "addr", "add", ip4 + "/24", "dev", ifname)
                _ip("-n", ns, "-6", "addr", "add", ip6 + "/64", "dev", ifname, "nodad")
                _ip("-n", ns, "link", "set", ifname, "up")
        yield hub, spokes
    finally:
        for ns in made:
            _ip("netns", "delete", ns, check=False)


_CLONE_NEWNET = 0x40000000


def _setns(fd):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(ns):
    """Run the body with the calling thread in namespace ns; sockets made there stay in ns afterwards."""
    with open("/proc/thread-self/ns/net") as home, open("/run/netns/%s" % ns) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


_TUNSETIFF = 0x400454CA
_TUNSETLINK = 0x400454CD
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


@contextlib.contextmanager
def tun_device(ns, name, arphrd=None):
    """A TUN device (raw IP, no packet-info header) inside ns, up; yields the fd whose writes it receives.

    arphrd, when given, changes the device's link type (TUNSETLINK) before it goes up.
    The device goes away when the fd is closed.
    """
    with in_netns(ns):
        fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
        if arphrd is not None:
            fcntl.ioctl(fd, _TUNSETLINK, arphrd)
        _ip("-n", ns, "link", "set", name, "up")
        yield fd
    finally:
        os.close(fd)
