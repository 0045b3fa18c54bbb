"""SIGHUP on a live agent: new key, a second collector, new cache timers, while traffic flows (root only).

The agent meters a veth end in a throw-away namespace and exports to real UDP receivers. Mid-
stream its key file is rotated in place and its config gains a second collector (which also
changes the capture filter's export exclusion, so the capture socket is reopened), a longer
idle timeout and a new agent_id (restart-only: logged and ignored). Every frame must be
metered exactly once, every flow must arrive exactly once at each receiver, the sequence must
run on without a gap, the datagrams after the switch must decrypt with the new key only, and
flows cached across the reload must stay one record. A broken config is then rejected.
"""
import threading
from collections import Counter

import pytest
from cryptography.fernet import Fernet, MultiFernet

from myason import keys, wire
from myason.schema import FIELDS
from tests.support import netns
from tests.support.agents import (AGENT_IF, OTHER_MAC, PEER_IF, Agent, DatagramSink, free_port, namespace_pair,
                                  read_records, wait_metric, write_conf)
from tests.support.summary import parse_summary

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not netns.have_netns(), reason="needs root and the `ip` tool")]

COL = {name: i for i, name in enumerate(FIELDS)}
AGENT_ID = "reload-it"
UDP_FLOWS = 10


def decode(datagram, *raw_keys):
    """The Batch, or None when none of raw_keys opens it."""
    from myason.errors import WireError
    try:
        return wire.decode_datagram(datagram, lambda _: MultiFernet([Fernet(k) for k in raw_keys]))
    except WireError:
        return None


class Stream(threading.Thread):
    """Sends one frame per UDP flow per round from the peer namespace until stopped; counts rounds."""

    def __init__(self, nsp):
        super().__init__(daemon=True)
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether
        self.frames = [bytes(Ether(src=nsp["peer_mac"], dst=OTHER_MAC) / IP(src="10.198.3.1", dst="10.198.3.2")
                             / UDP(sport=5000 + i, dport=6000) / (b"s" * (10 + i)))
                       for i in range(UDP_FLOWS)]
        self.sender = netns.NsSender(nsp["peer_ns"], PEER_IF)
        self.rounds = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                self.sender.send(self.frames)
                self.rounds += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def wait_rounds(self, n, deadline=20.0):
        """Block until n more rounds have gone out."""
        import time
        target, end = self.rounds + n, time.monotonic() + deadline
        while self.rounds < target:
            assert self.error is None and time.monotonic() < end, self.error or "sender stalled"
            time.sleep(0.01)


def rst_flow(nsp, host):
    """Three packets of a TCP flow ended by RST (exported at once) from 10.198.4.<host>."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    return [bytes(Ether(src=nsp["peer_mac"], dst=OTHER_MAC) / IP(src="10.198.4.%d" % host, dst="10.198.4.200")
                  / TCP(sport=1000 + host, dport=80, flags=f)) for f in ("S", "A", "R")]


def test_sighup_rotates_key_adds_collector_and_keeps_every_flow(tmp_path):
    pytest.importorskip("scapy")
    key1, key2 = keys.generate_key(), keys.generate_key()
    key_file = tmp_path / "agent.key"
    keys.write_key_file(key_file, key1)
    with namespace_pair() as nsp:
        ns = nsp["agent_ns"]
        with netns.in_netns(ns):
            col_a, col_b = DatagramSink(), DatagramSink()
        port = free_port(ns)
        common = dict(interfaces=[AGENT_IF], key_file=str(key_file), export_interval=0.1, tick=0.1,
                      cache_fin_timeout=0, stats_interval=0, metrics="127.0.0.1:%d" % port)
        conf = write_conf(tmp_path / "agent.yaml", agent_id=AGENT_ID, collectors=["127.0.0.1:%d" % col_a.port],
                          cache_inactive_timeout=30, **common)
        agent = Agent(ns, conf)
        stream = None
        try:
            agent.wait_capturing(nsp["ifindex"])
            sender = netns.NsSender(nsp["peer_ns"], PEER_IF)
            sender.send(rst_flow(nsp, 1))
            wait_metric(agent, ns, port, "myason_agent_datagrams_sent_total", lambda v: v >= 1)
            stream = Stream(nsp)
            stream.start()
            stream.wait_rounds(10)
            # The rotation: the key file is rewritten in place, the config gains collector B.
            keys.write_key_file(key_file, key2, overwrite=True)
            write_conf(conf, agent_id="renamed", collectors=["127.0.0.1:%d" % col_a.port,
                                                             "127.0.0.1:%d" % col_b.port],
                       cache_inactive_timeout=60, **common)
            agent.proc.send_signal(1)
            wait_metric(agent, ns, port, "myason_agent_reloads_total", lambda v: v == 1)
            stream.wait_rounds(10)
            stream.stop.set()
            stream.join(30)
            # A broken file is refused; the running (reloaded) setup goes on.
            conf.write_text(conf.read_text() + "cache_limit: 0\n")
            agent.proc.send_signal(1)
            wait_metric(agent, ns, port, "myason_agent_reload_errors_total", lambda v: v == 1)
            sender.send(rst_flow(nsp, 2))
            agent._poll("the last RST flow at B", lambda: any(
                r[COL["src_ip"]] == "10.198.4.2" for d in list(col_b.datagrams)
                for r in (decode(d, key2).rows if decode(d, key2) else [])), 15)
            sender.close()
            agent.wait_drained(nsp["ifindex"])
            code, _, err = agent.stop()
        finally:
            if stream is not None:
                stream.stop.set()
                stream.join(30)
                stream.sender.close()
            agent.kill()
            col_a.close()
            col_b.close()
    assert code == 0, err
    assert stream.error is None
    assert "needs a restart" in err and "agent_id" in err
    assert "reload rejected" in err and "cache_limit" in err
    assert "capture socket reopened" in err
    s = parse_summary(err)
    assert s["reloads"] == 1 and s["reload_errors"] == 1
    assert s["kernel_drops"] == 0 and s["queue_dropped_packets"] == 0

    # Receiver A: one sequence from 0 without gap or repeat; key 1 up to the switch, key 2 after.
    a = [(decode(d, key1), decode(d, key2)) for d in col_a.datagrams]
    assert all((b1 is None) != (b2 is None) for b1, b2 in a), "each datagram opens with exactly one key"
    used = [1 if b1 is not None else 2 for b1, _ in a]
    switch = used.index(2)
    assert used == [1] * switch + [2] * (len(used) - switch) and switch >= 1
    batches_a = [b1 or b2 for b1, b2 in a]
    assert [b.seq for b in batches_a] == list(range(len(batches_a)))
    # Receiver B: exactly the datagrams sent after the switch, all with the new key only.
    batches_b = [decode(d, key2) for d in col_b.datagrams]
    assert None not in batches_b
    assert [b.seq for b in batches_b] == [b.seq for b in batches_a[switch:]]
    assert [b.rows for b in batches_b] == [b.rows for b in batches_a[switch:]]

    rows = [r for b in batches_a for r in b.rows]
    assert {r[COL["agent"]] for r in rows} == {AGENT_ID}       # agent_id waits for a restart
    assert s["flows_exported"] == len(rows)
    # Every frame of the stream metered once: across the reopened capture socket, no loss, no
    # duplicate; each flow stayed one record in the kept cache.
    udp = [r for r in rows if r[COL["src_ip"]] == "10.198.3.1"]
    per_flow = Counter(r[COL["src_port"]] for r in udp)
    assert per_flow == Counter({5000 + i: 1 for i in range(UDP_FLOWS)})
    assert {r[COL["src_port"]]: r[COL["packets"]] for r in udp} == {5000 + i: stream.rounds for i in range(UDP_FLOWS)}
    assert {r[COL["end_reason"]] for r in udp} == {"shutdown"}
    rst = sorted((r[COL["src_ip"]], r[COL["packets"]]) for r in rows if r[COL["src_ip"]].startswith("10.198.4."))
    assert rst == [("10.198.4.1", 3), ("10.198.4.2", 3)]


def test_sighup_swaps_interfaces_and_rejects_a_bad_filter(tmp_path):
    """Removing an interface flushes its flows; an added one is metered; a bad BPF is refused by key."""
    pytest.importorskip("scapy")
    from myason.agent import capture
    from myason.errors import CaptureError
    try:
        capture.compile_bpf("udp", capture.LINKTYPE_ETHERNET, 65535)
    except CaptureError:
        pytest.skip("libpcap is not installed")
    import socket
    with namespace_pair() as nsp:
        ns = nsp["agent_ns"]
        port = free_port(ns)
        out = tmp_path / "flows.csv"
        common = dict(agent_id=AGENT_ID, cache_inactive_timeout=60, tick=0.1, stats_interval=0,
                      metrics="127.0.0.1:%d" % port)
        conf = write_conf(tmp_path / "agent.yaml", interfaces=[AGENT_IF], **common)
        agent = Agent(ns, conf, "--output", str(out), "--no-export")
        try:
            agent.wait_capturing(nsp["ifindex"])
            sender = netns.NsSender(nsp["peer_ns"], PEER_IF)
            sender.send(Stream(nsp).frames[:3])
            agent.wait_drained(nsp["ifindex"])
            wait_metric(agent, ns, port, "myason_agent_flows_cached", lambda v: v == 3)
            # A filter that does not compile: rejected, naming the interface entry.
            write_conf(conf, interfaces=[{"name": AGENT_IF, "bpf_filter": "udp and and"}], **common)
            agent.proc.send_signal(1)
            wait_metric(agent, ns, port, "myason_agent_reload_errors_total", lambda v: v == 1)
            # Move capture from the veth to lo (UDP only there).
            write_conf(conf, interfaces=[{"name": "lo", "bpf_filter": "udp"}], **common)
            agent.proc.send_signal(1)
            wait_metric(agent, ns, port, "myason_agent_reloads_total", lambda v: v == 1)
            agent.wait_capturing(1)
            with netns.in_netns(ns):
                rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with rx, tx:
                rx.bind(("127.0.0.1", 0))
                for _ in range(4):
                    tx.sendto(b"x" * 20, rx.getsockname())
                lo_key = ("127.0.0.1", tx.getsockname()[1], rx.getsockname()[1])
                wait_metric(agent, ns, port, "myason_agent_packets_total", lambda v: v == 3 + 4)
            # The veth lane has retired once its 3 flows left the cache (only lo's is cached).
            wait_metric(agent, ns, port, "myason_agent_flows_cached", lambda v: v == 1)
            sender.send(Stream(nsp).frames[:3])     # the veth is not captured any more
            sender.close()
            code, _, err = agent.stop()
        finally:
            agent.kill()
    assert code == 0, err
    assert "interfaces[0]" in err and "reload rejected" in err
    rows = read_records(out)
    veth = [r for r in rows if r["src_ip"] == "10.198.3.1"]
    # Flushed when the veth lane retired: one packet each, never the second round.
    assert sorted((r["src_port"], r["packets"], r["end_reason"]) for r in veth) == \
        [(5000 + i, 1, "shutdown") for i in range(3)]
    lo = [r for r in rows if (r["src_ip"], r["src_port"], r["dst_port"]) == lo_key]
    assert [(r["packets"], r["bytes"], r["if_name"]) for r in lo] == [(4, 4 * 48, "lo")]
