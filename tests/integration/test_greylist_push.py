"""`myason greylist --push` applied with nft (and ipset) inside network namespaces (root only).

A hub namespace is joined by veth to two sender namespaces, A and B. Events whose source is A are
stored in a real SQLite store through its writer; the push, run as the real command line, applies
its script in the hub with `ip netns exec HUB nft -f {file}`. UDP and ICMP (IPv4) and ICMPv6 from A
must then be dropped in the hub's input (the rule's counter sees them, the socket does not) while
B's pass; when A's event leaves the window, or the allowlist covers A, the next push takes A out
and its traffic passes again.
"""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support import netns
from tests.support.greylist import idea_event, store_events, write_collector_conf, write_push_conf
from tests.support.services import wait_until

ROOT = Path(__file__).resolve().parents[2]
MYASON = [sys.executable, str(ROOT / "myason.py")]
PORT = 9999

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not netns.have_netns(), reason="needs root and the `ip` tool"),
              pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (Debian package nftables)")]


@pytest.fixture(scope="module")
def net():
    """(hub, A, B): the hub namespace and the two senders, removed at the end whatever happens."""
    with netns.hub_and_spokes(2) as (hub, (a, b)):
        yield hub, a, b


@pytest.fixture
def store(tmp_path):
    """(collector config path, SQLite path): the store `myason greylist` reads."""
    db = tmp_path / "flows.db"
    return write_collector_conf(tmp_path / "collector.yaml", db), db


def push(tmp_path, cc, hub, *args, **options):
    """One `myason greylist --push --once` run applying its file in the hub; returns its stderr."""
    options.setdefault("file", str(tmp_path / "greylist.nft"))
    options.setdefault("state_file", str(tmp_path / "greylist.state"))
    options.setdefault("command", ["ip", "netns", "exec", hub, "nft", "-f", "{file}"])
    conf = write_push_conf(tmp_path / "push.yaml", **options)
    proc = subprocess.run(MYASON + ["greylist", "-cc", cc, "--push", conf, "--once", *args], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def drops(hub):
    """{"ip": n, "ip6": n}: packets the greylist chain has dropped, from its rule counters."""
    text = netns.run_in_ns(hub, ["nft", "list", "chain", "inet", "myason", "greylist"]).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"\b(ip6?) saddr @\S+ counter packets (\d+)", text)}


def ns_socket(ns, family, kind, proto=0):
    with netns.in_netns(ns):
        return socket.socket(family, kind, proto)


def echo_request(ident, seq, v6=False):
    header = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, seq) + b"myason"
    if v6:
        return header               # the kernel fills in the ICMPv6 checksum
    total = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    total = (total >> 16) + (total & 0xFFFF)
    return header[:2] + struct.pack("!H", ~(total + (total >> 16)) & 0xFFFF) + header[4:]


class Probe:
    """UDP datagrams and ICMP/ICMPv6 echoes from a sender namespace to the hub."""

    def __init__(self, hub, spoke, receiver):
        self.hub, self.spoke, self.receiver = hub, spoke, receiver
        self.udp = ns_socket(spoke.ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.icmp = ns_socket(spoke.ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.icmp6 = ns_socket(spoke.ns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        self.seq = 0

    def close(self):
        for s in (self.udp, self.icmp, self.icmp6):
            s.close()

    def udp_passes(self):
        """True when a datagram reaches the hub's socket; False when the greylist rule dropped it."""
        self.seq += 1
        payload = b"%s %d" % (self.spoke.ns.encode(), self.seq)
        before = drops(self.hub).get("ip", 0)
        self.udp.sendto(payload, (self.spoke.hub_ip4, PORT))
        return self._outcome(lambda: self._received(payload), lambda: drops(self.hub).get("ip", 0) > before)

    def echo_passes(self, v6=False):
        """True when the hub answers an echo request; False when the rule dropped it."""
        key = "ip6" if v6 else "ip"
        before = drops(self.hub).get(key, 0)
        sock = self._echo(v6)
        return self._outcome(lambda: self._replied(sock, v6), lambda: drops(self.hub).get(key, 0) > before)

    def answered(self, v6=False):
        """True when an echo request is answered within a second (while the links come up)."""
        sock = self._echo(v6)
        try:
            return wait_until(lambda: self._replied(sock, v6), 1)
        except TimeoutError:
            return False

    def _echo(self, v6):
        self.seq += 1
        sock, dst = (self.icmp6, self.spoke.hub_ip6) if v6 else (self.icmp, self.spoke.hub_ip4)
        sock.sendto(echo_request(os.getpid() & 0xFFFF, self.seq, v6), (dst, 0))
        return sock

    @staticmethod
    def _outcome(passed, dropped):
        # Either the answer comes or the drop counter moves; a packet neither passed nor dropped
        # fails the test at the deadline.
        return wait_until(lambda: "passed" if passed() else ("dropped" if dropped() else None), 10) == "passed"

    def _received(self, payload):
        try:
            while True:
                if self.receiver.recv(2048) == payload:
                    return True
        except BlockingIOError:
            return False

    def _replied(self, sock, v6):
        sock.setblocking(False)
        want = (129 if v6 else 0, os.getpid() & 0xFFFF, self.seq)
        try:
            while True:
                data = sock.recv(2048)
                icmp = data if v6 else data[(data[0] & 0x0F) * 4:]     # raw IPv4 sockets get the IP header
                if len(icmp) >= 8 and (icmp[0], *struct.unpack("!HH", icmp[4:8])) == want:
                    return True
        except BlockingIOError:
            return False


@pytest.fixture(scope="module")
def probes(net):
    hub, a, b = net
    receiver = ns_socket(hub, socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("0.0.0.0", PORT))
    receiver.setblocking(False)
    pa, pb = Probe(hub, a, receiver), Probe(hub, b, receiver)
    # The links are up once every echo is answered (there is no greylist table yet).
    wait_until(lambda: all(p.answered(v6) for p in (pa, pb) for v6 in (False, True)), 20)
    yield pa, pb
    pa.close()
    pb.close()
    receiver.close()


def test_listed_sources_are_dropped_until_they_leave_the_window_or_are_allowed(tmp_path, net, store, probes):
    hub, a, b = net
    pa, pb = probes
    cc, db = store
    now = time.time()
    store_events(db, [idea_event(a.ip4, now - 7200), idea_event(a.ip6, now - 60), idea_event(a.ip6, now - 30)])

    assert "applied 1 IPv4 and 1 IPv6 elements" in push(tmp_path, cc, hub)
    assert pa.udp_passes() is False and pa.echo_passes() is False and pa.echo_passes(v6=True) is False
    assert pb.udp_passes() is True and pb.echo_passes() is True and pb.echo_passes(v6=True) is True
    # Nothing changed: the command is not run again (the set's drop counters would be reset).
    assert "greylist push: applied" not in push(tmp_path, cc, hub)
    assert drops(hub) == {"ip": 2, "ip6": 1}

    # A's IPv4 event is two hours old: with a one-hour window it leaves the set.
    assert "applied 0 IPv4 and 1 IPv6 elements" in push(tmp_path, cc, hub, "--since", "1h")
    assert pa.udp_passes() is True and pa.echo_passes() is True and pa.echo_passes(v6=True) is False

    # The allowlist covers A's IPv6 network; then A's two IPv6 events are enough for min_events 2,
    # not for 3.
    assert "applied 0 IPv4 and 0 IPv6 elements" in push(tmp_path, cc, hub, since="1h",
                                                         allowlist=["fd00:201:1::/64"])
    assert pa.echo_passes(v6=True) is True
    push(tmp_path, cc, hub, since="1h", min_events=2)
    assert pa.echo_passes(v6=True) is False
    push(tmp_path, cc, hub, since="1h", min_events=3)
    assert pa.echo_passes(v6=True) is True and pb.udp_passes() is True


def test_the_loop_follows_the_store_and_a_failed_apply_leaves_the_set_whole(tmp_path, net, store, probes):
    hub, a, b = net
    pa, pb = probes
    cc, db = store
    store_events(db, [idea_event(b.ip4, time.time() - 60)])
    conf = write_push_conf(tmp_path / "push.yaml", file=str(tmp_path / "greylist.nft"), interval=0.2,
                           command=["ip", "netns", "exec", hub, "nft", "-f", "{file}"])
    proc = subprocess.Popen(MYASON + ["greylist", "-cc", cc, "--push", conf], cwd=str(ROOT),
                            stderr=subprocess.PIPE, text=True)
    try:
        def listed():
            return netns.run_in_ns(hub, ["nft", "list", "set", "inet", "myason", "greylist4"], check=False).stdout
        wait_until(lambda: b.ip4 in listed(), 30)
        assert pb.udp_passes() is False and pa.udp_passes() is True
        store_events(db, [idea_event(a.ip4, time.time() - 10)])
        wait_until(lambda: a.ip4 in listed(), 30)
        assert pa.udp_passes() is False
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "greylist push stopped: rounds" in err and "command_failures 0" in err and "rows 2" in err

    # A transaction the kernel refuses half-way (after the script's own delete and re-create of
    # the table: here a last command that deletes a table that does not exist) changes nothing:
    # the sets and their drop counters stay as they were, and the failure is reported.
    before = drops(hub)
    failing = ["ip", "netns", "exec", hub, "sh", "-c",
               '{ cat "$1"; echo "delete table inet myason_absent"; } | nft -f -', "apply", "{file}"]
    conf = write_push_conf(tmp_path / "bad.yaml", file=str(tmp_path / "bad.nft"), command=failing,
                           allowlist=[b.ip4 + "/32"])
    bad = subprocess.run(MYASON + ["greylist", "-cc", cc, "--push", conf, "--once"], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "exit status 1; stderr: " in bad.stderr and "retried next round" in bad.stderr
    assert "delete table inet myason\n" in (tmp_path / "bad.nft").read_text()
    assert a.ip4 in listed() and b.ip4 in listed() and drops(hub) == before
    assert pa.udp_passes() is False and pb.udp_passes() is False


@pytest.mark.skipif(shutil.which("ipset") is None, reason="needs ipset (Debian package ipset)")
def test_the_ipset_file_swaps_whole_sets_in(tmp_path, net, store):
    hub, a, _ = net
    cc, db = store
    store_events(db, [idea_event(a.ip4, time.time() - 60), idea_event(a.ip6, time.time() - 60)])
    options = dict(format="ipset", file=str(tmp_path / "greylist.ipset"), ipset={"set4": "t-grey4", "set6": "t-grey6"},
                   command=["ip", "netns", "exec", hub, "ipset", "restore", "-file", "{file}"])

    def members():
        text = netns.run_in_ns(hub, ["ipset", "list"]).stdout
        sets = dict(re.findall(r"Name: (\S+)\n(?:.*\n)*?Members:\n((?:\S+\n)*)", text))
        return {name: sorted(m.split()) for name, m in sets.items()}
    try:
        push(tmp_path, cc, hub, **options)
        assert members() == {"t-grey4": [a.ip4], "t-grey6": [a.ip6]}
        push(tmp_path, cc, hub, "--since", "1s", **options)
        assert members() == {"t-grey4": [], "t-grey6": []}
    finally:
        netns.run_in_ns(hub, ["ipset", "destroy"], check=False)
