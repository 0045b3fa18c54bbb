"""`myason agent` capturing live inside a network namespace, as a real process (root only).

Two throw-away namespaces are joined by a veth pair: the agent meters its end, a scapy process
in the other one sends known frames. IPv6 is disabled in both namespaces so the kernel sends
nothing of its own (no DAD, MLD or router solicitations) and the records can be checked exactly.
"""
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from tests.support import netns
from tests.support.agents import (AGENT_IF, AGENT_IP, KEY, OTHER_MAC, PEER_IF, PEER_IP, Agent, DatagramSink, blast,
                                  namespace_pair, read_records, snmp_counter, sum_by_key, write_conf)
from tests.support.summary import parse_summary

ROOT = Path(__file__).resolve().parents[2]
AGENT_ID = "live-it"

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not netns.have_netns(), reason="needs root and the `ip` tool")]


@pytest.fixture(scope="module")
def nsp():
    """The namespace pair shared by the module's tests."""
    with namespace_pair() as pair:
        yield pair


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    """A key file made by `myason keygen --out`."""
    path = tmp_path_factory.mktemp("live-keys") / "agent.key"
    subprocess.run([sys.executable, str(ROOT / "myason.py"), "keygen", "--out", str(path)],
                   cwd=str(ROOT), check=True, capture_output=True, timeout=60)
    return path


# ---- what the agent reports ------------------------------------------------------------

# ---- traffic ---------------------------------------------------------------------------

def build_traffic(nsp):
    """Frames for the peer to send, and the per-key totals the agent must report for them."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    frames = []
    expected = defaultdict(lambda: {"packets": 0, "bytes": 0, "tcp_flags": 0, "ip_version": 4})

    def put(pkt, dst_mac=OTHER_MAC):
        raw = bytes(Ether(src=nsp["peer_mac"], dst=dst_mac) / pkt)
        frames.append(raw)
        p = Ether(raw)
        if IP in p:
            l3, ver, tos, length = p[IP], 4, p[IP].tos, p[IP].len
            proto = l3.proto
        else:
            l3, ver, tos, length = p[IPv6], 6, p[IPv6].tc, 40 + p[IPv6].plen
            proto = l3.nh
        if TCP in p or UDP in p:
            l4 = p[TCP] if TCP in p else p[UDP]
            sport, dport = l4.sport, l4.dport
        else:
            sport, dport = 0, p[ICMP].type * 256 + p[ICMP].code
        e = expected[(l3.src, l3.dst, sport, dport, proto, tos)]
        e["packets"] += 1
        e["bytes"] += length
        e["ip_version"] = ver
        if TCP in p:
            e["tcp_flags"] |= int(p[TCP].flags)
        return p

    # IPv4 UDP flows with known counts and varied sizes; one with a DSCP/ToS value.
    for n, count in enumerate((5, 17, 40)):
        for j in range(count):
            put(IP(src="10.198.5.%d" % (n + 1), dst="10.198.5.200", tos=0x28 if n == 1 else 0)
                / UDP(sport=4001 + n, dport=5001) / (b"u" * ((j * 37 + n) % 900 + 1)))
    # A TCP conversation: handshake, data both ways, FIN teardown.
    cli, srv = ("10.198.6.1", 40500), ("10.198.6.2", 80)
    for (a, b), flags, data in [((cli, srv), "S", b""), ((srv, cli), "SA", b""), ((cli, srv), "A", b""),
                                ((cli, srv), "PA", b"G" * 120), ((srv, cli), "A", b""),
                                ((srv, cli), "PA", b"R" * 700), ((cli, srv), "A", b""),
                                ((cli, srv), "FA", b""), ((srv, cli), "FA", b""), ((cli, srv), "A", b"")]:
        put(IP(src=a[0], dst=b[0]) / TCP(sport=a[1], dport=b[1], flags=flags, seq=1000, ack=2000) / data)
    # IPv6 UDP (the agent's kernel has IPv6 disabled: capture still sees the frames).
    for n, count in enumerate((3, 6)):
        for j in range(count):
            put(IPv6(src="fd00:198::5", dst="fd00:198::6", tc=0) / UDP(sport=6001 + n, dport=7001)
                / (b"v" * (50 + 100 * j)))
    # ICMP echo to the agent's own address: its kernel answers, and capture sees both directions.
    pings = 4
    for i in range(pings):
        put(IP(src=PEER_IP, dst=AGENT_IP) / ICMP(type=8, id=0x4D59, seq=i) / (b"p" * 56),
            dst_mac=nsp["agent_mac"])
    request = expected[(PEER_IP, AGENT_IP, 0, 8 * 256, 1, 0)]
    expected[(AGENT_IP, PEER_IP, 0, 0, 1, 0)] = dict(request)  # echo replies mirror the requests
    return frames, dict(expected), pings


# ---- tests -----------------------------------------------------------------------------

def test_live_veth_records_are_exact(nsp, tmp_path):
    pytest.importorskip("scapy")
    frames, expected, pings = build_traffic(nsp)
    out = tmp_path / "out.csv"
    conf = write_conf(tmp_path / "conf.yaml", agent_id=AGENT_ID, interfaces=[AGENT_IF],
                      cache_inactive_timeout=0.5, tick=0.2, stats_interval=0)
    sender = netns.NsSender(nsp["peer_ns"], PEER_IF)
    agent = Agent(nsp["agent_ns"], conf, "--output", str(out), "--no-export")
    try:
        agent.wait_capturing(nsp["ifindex"])
        sender.send(frames)
        pid = agent.proc.pid
        agent._poll("the echo replies", lambda: snmp_counter(pid, "Icmp", "OutEchoReps") >= pings, 10)
        agent.wait_drained(nsp["ifindex"])
        code, _, err = agent.stop()
    finally:
        sender.close()
        agent.kill()
    assert code == 0, err
    summary = parse_summary(err)
    got = sum_by_key(read_records(out))
    assert set(got) == set(expected), "unexpected %s / missing %s" % (set(got) - set(expected),
                                                                      set(expected) - set(got))
    for key, e in expected.items():
        g = got[key]
        assert (g["packets"], g["bytes"], g["tcp_flags"]) == (e["packets"], e["bytes"], e["tcp_flags"]), key
        assert g["ip_version"] == {e["ip_version"]}, key
        assert g["in_if"] == {nsp["ifindex"]} and g["if_name"] == {AGENT_IF}, key
        assert g["vlan"] == {0} and g["agent"] == {AGENT_ID}, key
    # Routes come from the agent's namespace: only the veth subnet is routed there.
    assert got[(AGENT_IP, PEER_IP, 0, 0, 1, 0)]["out_if"] == {nsp["ifindex"]}
    assert got[("10.198.5.1", "10.198.5.200", 4001, 5001, 17, 0)]["out_if"] == {0}
    # Every frame is accounted: metered, or rejected (the ARP exchange behind the echo replies).
    ip_frames = sum(e["packets"] for e in expected.values())
    assert summary["packets_metered"] == ip_frames
    assert summary["frames"] == ip_frames + sum(summary["rejects"].values())
    assert set(summary["rejects"]) <= {"non_ip"}
    assert summary["flows_exported"] == len(read_records(out))
    # Drop counters are reported (and nothing was dropped at this rate).
    assert summary["kernel_drops"] == 0 and summary["queue_dropped_packets"] == 0
    assert summary["kernel_packets"] >= summary["frames"]
    assert "datagrams_sent" not in summary


def _rows(datagrams, keyring):
    """Every flow row of the datagrams, decoded with keyring."""
    from myason import wire
    return [r for d in list(datagrams) for r in wire.decode_datagram(d, lambda a: keyring).rows]


@pytest.mark.parametrize("exclude", [True, False])
def test_own_export_traffic_is_not_metered(nsp, key_file, tmp_path, exclude):
    from myason import keys
    from myason.agent import capture
    from myason.errors import CaptureError
    from myason.schema import FIELDS
    if exclude:
        try:
            capture.compile_bpf("udp", capture.LINKTYPE_ETHERNET, 65535)
        except CaptureError:
            pytest.skip("libpcap is not installed")
    col = {name: i for i, name in enumerate(FIELDS)}
    keyring = keys.load_key_file(key_file)
    ns = nsp["agent_ns"]
    with netns.in_netns(ns):
        collector = DatagramSink()
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx.bind(("127.0.0.1", 0))
    our_key = ("127.0.0.1", "127.0.0.1", tx.getsockname()[1], rx.getsockname()[1], 17, 0)
    lo_index = 1  # lo is always ifindex 1 in a namespace
    conf = write_conf(tmp_path / "conf.yaml", agent_id=AGENT_ID, interfaces=["lo"],
                      key_file=str(key_file), collectors=["127.0.0.1:%d" % collector.port],
                      exclude_export_traffic=exclude, cache_inactive_timeout=0.3, tick=0.1,
                      export_interval=0.1, stats_interval=0)
    agent = Agent(ns, conf)

    def ours(rows):
        return [r for r in rows if tuple(r[col[f]] for f in KEY) == our_key]
    try:
        agent.wait_capturing(lo_index)
        sent = 0
        # Two rounds: the second goes on while the agent is already exporting.
        for count in (5, 7):
            for _ in range(count):
                tx.sendto(b"m" * 100, rx.getsockname())
            sent += count
            agent._poll("our flow in the export",
                        lambda sent=sent: sum(r[col["packets"]] for r in ours(_rows(collector.datagrams, keyring))) == sent,
                        15)
        agent.wait_drained(lo_index)
        code, _, err = agent.stop()
    finally:
        agent.kill()
        collector.close()
        rx.close()
        tx.close()
    assert code == 0, err
    summary = parse_summary(err)
    rows = _rows(collector.datagrams, keyring)
    assert sum(r[col["packets"]] for r in ours(rows)) == 12
    assert sum(r[col["bytes"]] for r in ours(rows)) == 12 * (20 + 8 + 100)
    export_rows = [r for r in rows if r[col["proto"]] == 17 and r[col["dst_port"]] == collector.port]
    if exclude:
        assert export_rows == []
        assert summary["packets_metered"] == 12
    else:
        # The control: without the exclusion the agent meters its own datagrams.
        assert export_rows and sum(r[col["packets"]] for r in export_rows) <= len(collector.datagrams)
    assert summary["datagrams_sent"] == len(collector.datagrams)
    assert summary["flows_exported"] == len(rows)
    assert summary["kernel_drops"] == 0 and summary["queue_dropped_packets"] == 0


def _flood_run(nsp, tmp_path, drain):
    """Meter a 50k-frame burst, SIGTERM (after the socket drained, or at once); return (sent, summary)."""
    pytest.importorskip("scapy")
    out = tmp_path / "flood.csv"
    # A tiny packet queue and a burst faster than Python reads: drops are likely, and must add up.
    conf = write_conf(tmp_path / "conf.yaml", agent_id=AGENT_ID, interfaces=[AGENT_IF], packet_queue=2,
                      cache_inactive_timeout=0.5, tick=0.2, stats_interval=0)
    agent = Agent(nsp["agent_ns"], conf, "--output", str(out), "--no-export")
    try:
        agent.wait_capturing(nsp["ifindex"])
        sent = blast(nsp, 50_000)
        if drain:
            agent.wait_drained(nsp["ifindex"], deadline=30)
        code, _, err = agent.stop()
    finally:
        agent.kill()
    assert code == 0, err
    s = parse_summary(err)
    records = read_records(out)
    assert sum(r["packets"] for r in records) == s["packets_metered"] == s["frames"]
    return sent, s


def test_drops_are_reported_and_add_up(nsp, tmp_path):
    sent, s = _flood_run(nsp, tmp_path, drain=True)
    # Every frame the kernel handed to the capture socket: read and metered, dropped from the
    # full packet queue, or dropped by the kernel when the socket buffer was full.
    assert s["kernel_packets"] == sent
    assert s["frames"] + s["queue_dropped_packets"] + s["kernel_drops"] == sent


def test_frames_queued_at_shutdown_are_not_lost(nsp, tmp_path):
    sent, s = _flood_run(nsp, tmp_path, drain=False)
    assert s["kernel_packets"] == sent
    assert s["frames"] + s["queue_dropped_packets"] + s["kernel_drops"] == sent
