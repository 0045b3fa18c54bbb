"""A live `myason agent` in a network namespace: two namespaces joined by a veth pair, the agent
process, its config and record files, a UDP sink for its datagrams, and its metrics endpoint."""
import contextlib
import csv
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from myason.schema import FLOAT_FIELDS, INT_FIELDS
from tests.support import netns

ROOT = Path(__file__).resolve().parents[2]
AGENT_IF, PEER_IF = "mya0", "myp0"
AGENT_IP, PEER_IP = "10.198.0.1", "10.198.0.2"
OTHER_MAC = "02:00:00:00:99:99"  # not the agent's: its kernel ignores these frames, capture does not
_counter = itertools.count()     # namespace names unique within this process


# ---- namespaces ------------------------------------------------------------------------

def _ip(*args):
    """Run `ip ARGS`, fail on error, return stdout."""
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20).stdout


def _link_info(ns, ifname):
    out = _ip("-n", ns, "-o", "link", "show", "dev", ifname)
    index = int(out.split(":", 1)[0])
    mac = re.search(r"link/ether ([0-9a-f:]{17})", out).group(1)
    return index, mac


@contextlib.contextmanager
def namespace_pair():
    """Namespaces (agent, peer) joined by veth AGENT_IF <-> PEER_IF, IPv4 only; always removed."""
    tag = "%d-%d" % (os.getpid(), next(_counter))
    agent_ns, peer_ns = "myit-a-" + tag, "myit-p-" + tag
    try:
        for ns in (agent_ns, peer_ns):
            _ip("netns", "add", ns)
            # Before the veth exists, so its ends never get an IPv6 link-local address.
            netns.run_in_ns(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                                 "net.ipv6.conf.default.disable_ipv6=1"])
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", agent_ns, "link", "add", "name", AGENT_IF, "type", "veth",
            "peer", "name", PEER_IF, "netns", peer_ns)
        _ip("-n", agent_ns, "addr", "add", AGENT_IP + "/24", "dev", AGENT_IF)
        _ip("-n", peer_ns, "addr", "add", PEER_IP + "/24", "dev", PEER_IF)
        _ip("-n", agent_ns, "link", "set", AGENT_IF, "up")
        _ip("-n", peer_ns, "link", "set", PEER_IF, "up")
        agent_index, agent_mac = _link_info(agent_ns, AGENT_IF)
        _, peer_mac = _link_info(peer_ns, PEER_IF)
        yield {"agent_ns": agent_ns, "peer_ns": peer_ns, "ifindex": agent_index,
               "agent_mac": agent_mac, "peer_mac": peer_mac}
    finally:
        for ns in (agent_ns, peer_ns):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=20)


# ---- the agent process -----------------------------------------------------------------

def capture_sockets(conf, args=()):
    """(sockets per interface, ring engine) of an agent run with this config file and arguments:
    `workers` ring sockets on the fast engine, one LiveSource on the python engine."""
    from myason.agent.config import load_agent_config
    from myason.agent.process import fast_engine_available
    cfg = load_agent_config(str(conf))
    args = list(args)
    engine = args[args.index("--engine") + 1] if "--engine" in args else cfg.engine
    if engine == "fast" and fast_engine_available():
        return cfg.workers, True
    return 1, False


class Agent:
    """`myason agent` running inside a namespace; stop() sends SIGTERM and returns its results."""

    # Until __init__ says otherwise (helpers that make the process themselves).
    expected_sockets, ring = 1, False

    def __init__(self, ns, conf, *args):
        argv = ["ip", "netns", "exec", ns, sys.executable, str(ROOT / "myason.py"), "agent",
                "-ac", str(conf), "--no-progress", *args]
        self.expected_sockets, self.ring = capture_sockets(conf, args)
        # `ip netns exec` execs the command, so this pid is the agent's own (SIGTERM reaches it).
        self.proc = subprocess.Popen(argv, cwd=str(ROOT), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def _sockets(self, ifindex):
        # /proc/PID/net is the agent's namespace: its packet sockets bound to ETH_P_ALL on ifindex.
        try:
            text = Path("/proc/%d/net/packet" % self.proc.pid).read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) >= 7 and f[3] == "0003" and int(f[4]) == ifindex:
                out.append(int(f[6]))  # Rmem: bytes waiting in the socket
        return out

    def _poll(self, what, cond, deadline):
        end = time.monotonic() + deadline
        while not cond():
            if self.proc.poll() is not None:
                raise AssertionError("agent exited (%s) while waiting for %s:\n%s"
                                     % (self.proc.returncode, what, self.proc.stderr.read()))
            if time.monotonic() > end:
                raise AssertionError("timed out waiting for %s" % what)
            time.sleep(0.02)

    def wait_capturing(self, ifindex, deadline=30.0):
        """Return once the agent's capture sockets on ifindex are bound (a LiveSource's filter is
        attached first; the ring sockets of a fanout group get theirs right after the last one
        joined, hence the short pause)."""
        self._poll("the capture sockets", lambda: len(self._sockets(ifindex)) >= self.expected_sockets,
                   deadline)
        if self.expected_sockets > 1:
            time.sleep(0.1)

    def wait_drained(self, ifindex, deadline=10.0):
        """Return once the agent has read every frame queued in its capture sockets.

        A ring holds no socket buffer (Rmem stays 0): its last block is handed over within
        ring_block_timeout (0.05 s by default), hence the pause.
        """
        self._poll("the capture sockets to drain",
                   lambda: (lambda socks: bool(socks) and not any(socks))(self._sockets(ifindex)), deadline)
        if self.ring:
            time.sleep(0.2)

    def stop(self, timeout=60):
        """SIGTERM, wait, and return (exit code, stdout, stderr)."""
        try:
            self.proc.send_signal(signal.SIGTERM)
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode, out, err

    def kill(self):
        """Make sure the process is gone (test clean-up)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def write_conf(path, **values):
    """An agent YAML config from keyword values (JSON values are valid YAML)."""
    path.write_text("".join("%s: %s\n" % (k, json.dumps(v)) for k, v in values.items()))
    return path


def read_records(path):
    """A record file (.csv) as dicts with typed values."""
    with open(path, newline="") as fh:
        return [{k: int(v) if k in INT_FIELDS else float(v) if k in FLOAT_FIELDS else v
                 for k, v in row.items()} for row in csv.DictReader(fh)]


class DatagramSink:
    """A UDP socket (made in the current thread's namespace) with a thread keeping what it gets."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.datagrams = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                self.datagrams.append(self.sock.recv(70000))
            except socket.timeout:
                if self._stop.is_set():
                    return

    def close(self):
        """Drain what is queued, stop the thread and close the socket."""
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


# ---- the agent's metrics endpoint -------------------------------------------------------

# One sample line of the Prometheus text format: name, optional {labels}, value.
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def free_port(ns):
    """A TCP port free on 127.0.0.1 inside namespace ns."""
    with netns.in_netns(ns):
        s = socket.socket()
    with s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_metrics(ns, port):
    """GET /metrics from 127.0.0.1:port in namespace ns: {'name{labels}': value}; {} if not up yet."""
    with netns.in_netns(ns):
        s = socket.socket()
    try:
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        return {}
    finally:
        s.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    assert head.split()[1] == "200", head
    out = {}
    for line in body.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def wait_metric(agent, ns, port, name, cond, deadline=15.0):
    """Scrape until cond(value of name) holds; return the whole scrape."""
    end = time.monotonic() + deadline
    while True:
        m = scrape_metrics(ns, port)
        if name in m and cond(m[name]):
            return m
        if agent.proc.poll() is not None:
            raise AssertionError("agent exited: %s" % agent.proc.stderr.read())
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for %s (last scrape: %s)" % (name, m.get(name)))
        time.sleep(0.05)


# ---- what the agent reports, and traffic ----------------------------------------------

def snmp_counter(pid, table, name):
    """A counter of /proc/PID/net/snmp (the namespace of that process), e.g. ('Icmp', 'OutEchoReps')."""
    lines = [l.split() for l in Path("/proc/%d/net/snmp" % pid).read_text().splitlines()
             if l.startswith(table + ":")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))[name])


KEY = ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "tos")


def sum_by_key(records):
    """Records merged per flow key: packets and bytes summed, tcp flags OR-ed, the rest kept as sets."""
    agg = {}
    for r in records:
        k = tuple(r[f] for f in KEY)
        a = agg.setdefault(k, {"packets": 0, "bytes": 0, "tcp_flags": 0, "in_if": set(), "if_name": set(),
                               "vlan": set(), "ip_version": set(), "agent": set(), "out_if": set()})
        a["packets"] += r["packets"]
        a["bytes"] += r["bytes"]
        a["tcp_flags"] |= r["tcp_flags"]
        for f in ("in_if", "if_name", "vlan", "ip_version", "agent", "out_if"):
            a[f].add(r[f])
    return agg


def blast(nsp, n):
    """Send n identical UDP frames from the peer as fast as a packet socket takes them; return how many went."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    frame = bytes(Ether(src=nsp["peer_mac"], dst=OTHER_MAC) / IP(src="10.198.9.1", dst="10.198.9.2")
                  / UDP(sport=1111, dport=2222) / (b"z" * 200))
    with netns.in_netns(nsp["peer_ns"]):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with tx:
        tx.bind((PEER_IF, 0))
        sent = 0
        for _ in range(n):
            try:
                tx.send(frame)
                sent += 1
            except OSError:  # ENOBUFS: the frame never left, so it is not counted
                pass
    return sent
