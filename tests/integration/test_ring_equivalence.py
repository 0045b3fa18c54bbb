"""The ring engine against the reference engine on the same live traffic (root only).

Two agents meter the same veth end at the same time: the reference (`--engine python`, one
LiveSource, one frame at a time) and the fast engine (TPACKET_V3 rings, whole blocks decoded by
the compiled walker). Both sockets get every frame as the same skb, so both see the same kernel
timestamps: with one worker the two record files must be equal record for record (keys,
packets, bytes, flags, VLAN, end reasons, first and last times); with two workers (a
PACKET_FANOUT hash group, a flow cache each) the flow set and every flow's totals must be.

The traffic covers what each path decodes differently: IPv4 and IPv6, TCP ended by FIN and by
RST, 802.1Q and 802.1ad tags (the kernel strips the outer one; the ring gives it in its frame
header), QinQ (the inner tag stays in the frame: the reference decoder reads it), IPv4 options,
IPv4 fragments (attributed to their first fragment's ports), ARP and LLDP (rejected, counted),
more flows than cache_limit (LRU evictions), and frames the BPF filter keeps out.
"""
import itertools
import subprocess
from collections import Counter

import pytest

from tests.support import netns
from tests.support.agents import (AGENT_IF, AGENT_IP, OTHER_MAC, PEER_IF, PEER_IP, Agent, blast, namespace_pair,
                                  read_records, snmp_counter, sum_by_key, write_conf)
from tests.support.summary import parse_summary

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not netns.have_netns(), reason="needs root and the `ip` tool")]

BPF = "not (udp port 9)"


def _needs():
    pytest.importorskip("scapy")
    from myason.agent import capture
    from myason.agent.process import fast_engine_available
    from myason.errors import CaptureError
    if not fast_engine_available():
        pytest.skip("numba is not installed")
    try:
        capture.compile_bpf("udp", capture.LINKTYPE_ETHERNET, 65535)
    except CaptureError:
        pytest.skip("libpcap is not installed")


def traffic(nsp, fragments=True):
    """Rounds of raw frames for the peer to send (each round one sendp call)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

    def eth(pkt, dst=OTHER_MAC):
        return bytes(Ether(src=nsp["peer_mac"], dst=dst) / pkt)

    rounds = []
    # UDP flows of varied sizes, one with a ToS; more of them than cache_limit holds.
    r = []
    for n, count in enumerate((3, 9, 20)):
        for j in range(count):
            r.append(eth(IP(src="10.198.5.%d" % (n + 1), dst="10.198.5.200", tos=0x28 if n == 1 else 0)
                         / UDP(sport=4001 + n, dport=5001) / (b"u" * ((j * 37 + n) % 700 + 1))))
    for k in range(40):
        r.append(eth(IP(src="10.198.8.%d" % (k + 1), dst="10.198.8.250") / UDP(sport=1000 + k, dport=53)
                     / (b"q" * (20 + k))))
    rounds.append(r)
    # TCP: a conversation ended by FINs, another reset; IPv4 options on one packet.
    cli, srv = ("10.198.6.1", 40500), ("10.198.6.2", 80)
    r = []
    for (a, b), flags, data in [((cli, srv), "S", b""), ((srv, cli), "SA", b""), ((cli, srv), "A", b""),
                                ((cli, srv), "PA", b"G" * 120), ((srv, cli), "PA", b"R" * 700),
                                ((cli, srv), "FA", b""), ((srv, cli), "FA", b""), ((cli, srv), "A", b"")]:
        r.append(eth(IP(src=a[0], dst=b[0]) / TCP(sport=a[1], dport=b[1], flags=flags) / data))
    r.append(eth(IP(src="10.198.6.3", dst="10.198.6.4", options=b"\x01" * 4) / TCP(sport=5, dport=6, flags="S")))
    r += [eth(IP(src="10.198.6.5", dst="10.198.6.6") / TCP(sport=7, dport=8, flags=f)) for f in ("S", "A", "R")]
    rounds.append(r)
    # IPv6, tagged frames (802.1Q, 802.1ad, QinQ), ICMP to the agent and its replies.
    r = []
    for n, count in enumerate((3, 6)):
        r += [eth(IPv6(src="fd00:198::5", dst="fd00:198::6") / UDP(sport=6001 + n, dport=7001) / (b"v" * (50 + 90 * j)))
              for j in range(count)]
    l3 = IP(src="10.198.7.1", dst="10.198.7.2") / UDP(sport=7100, dport=7200) / (b"t" * 40)
    r += [eth(Dot1Q(vlan=42, prio=5) / l3) for _ in range(4)]
    r += [eth(Dot1AD(vlan=7) / IPv6(src="fd00:198::7", dst="fd00:198::8") / TCP(sport=1, dport=2, flags="S"))]
    r += [eth(Dot1AD(vlan=300) / Dot1Q(vlan=42) / IP(src="10.198.7.1", dst="10.198.7.2") / UDP(sport=7101, dport=7200)
              / (b"t" * 40)) for _ in range(3)]
    r += [eth(IP(src=PEER_IP, dst=AGENT_IP) / ICMP(type=8, id=0x4D59, seq=i) / (b"p" * 56), dst=nsp["agent_mac"])
          for i in range(3)]
    rounds.append(r)
    # Rejected frames and frames the filter keeps out.
    r = [eth(ARP(psrc="10.198.0.9", pdst="10.198.0.10")) for _ in range(2)]
    r += [bytes(Ether(src=nsp["peer_mac"], dst="01:80:c2:00:00:0e", type=0x88CC) / (b"\x02" * 30))]
    r += [eth(IP(src="10.198.9.1", dst="10.198.9.2") / UDP(sport=1234, dport=9) / b"filtered") for _ in range(5)]
    if fragments:
        big = IP(src="10.198.10.1", dst="10.198.10.2", id=4242) / UDP(sport=3333, dport=4444) / (b"F" * 2400)
        from scapy.layers.inet import fragment
        r += [eth(f) for f in fragment(big, fragsize=800)]
        r += [eth(IP(src="10.198.10.1", dst="10.198.10.2") / UDP(sport=3333, dport=4444) / b"whole")]
    rounds.append(r)
    return rounds


def run_pair(tmp_path, fast_conf, fragments=True, pings=3):
    """Meter the traffic with both engines at once; (reference records, fast records, summaries)."""
    common = dict(agent_id="equiv", interfaces=[{"name": AGENT_IF, "bpf_filter": BPF}], cache_limit=30,
                  cache_inactive_timeout=120, cache_fin_timeout=0, tick=0.1, stats_interval=0)
    with namespace_pair() as nsp:
        rounds = traffic(nsp, fragments)
        ref_conf = write_conf(tmp_path / "ref.yaml", **common)
        conf = write_conf(tmp_path / "fast.yaml", **dict(common, **fast_conf))
        ref = Agent(nsp["agent_ns"], ref_conf, "--output", str(tmp_path / "ref.csv"), "--no-export",
                    "--engine", "python")
        fast = Agent(nsp["agent_ns"], conf, "--output", str(tmp_path / "fast.csv"), "--no-export",
                     "--engine", "fast")
        sender = None
        try:
            ref.wait_capturing(nsp["ifindex"])
            fast.wait_capturing(nsp["ifindex"])
            assert fast.ring
            sender = netns.NsSender(nsp["peer_ns"], PEER_IF)
            for r in rounds:
                sender.send(r)
            ref._poll("the echo replies", lambda: snmp_counter(ref.proc.pid, "Icmp", "OutEchoReps") >= pings, 10)
            for a in (ref, fast):
                a.wait_drained(nsp["ifindex"])
            results = [a.stop() for a in (ref, fast)]
        finally:
            if sender is not None:
                sender.close()
            ref.kill()
            fast.kill()
    for code, _, err in results:
        assert code == 0, err
    assert "live capture on the fast engine: %d worker" % fast_conf["workers"] in results[1][2]
    assert "fast engine" not in results[0][2]
    sums = [parse_summary(err) for _, _, err in results]
    return read_records(tmp_path / "ref.csv"), read_records(tmp_path / "fast.csv"), sums, rounds


def _row(r):
    return tuple(sorted(r.items()))


def test_one_worker_records_equal_the_reference(tmp_path):
    _needs()
    ref, fast, (sref, sfast), rounds = run_pair(tmp_path, {"workers": 1})
    assert ref, "the reference engine metered nothing"
    # Record for record: same keys, counts, flags, VLAN, end reasons and times (one skb, one
    # kernel timestamp for both sockets).
    assert Counter(map(_row, fast)) == Counter(map(_row, ref))
    reasons = Counter(r["end_reason"] for r in ref)
    assert reasons["fin"] and reasons["rst"] and reasons["cache_full"] and reasons["shutdown"]
    assert {r["vlan"] for r in ref} >= {0, 7, 42, 300}
    assert not [r for r in ref if r["dst_port"] == 9], "the BPF filter let port 9 through"
    assert sum(r["packets"] for r in ref if r["src_ip"] == "10.198.10.1") == 5    # 4 fragments + 1
    for key in ("frames", "packets_metered", "flows_created", "flows_exported", "fragments",
                "fragments_unmatched", "rejects", "exported_by_reason"):
        assert sfast[key] == sref[key], key
    assert sfast["rejects"].get("non_ip", 0) >= 3
    for s in (sref, sfast):
        assert s["kernel_drops"] == 0 and s["queue_dropped_packets"] == 0
    assert sfast.get("kernel_freezes", 0) == 0
    assert sfast["kernel_packets"] == sfast["frames"]


def test_two_workers_same_flows_and_totals(tmp_path):
    """Fanout: a flow cache per worker, the same flows and totals (each worker evicts within its
    share of cache_limit, and a datagram's fragments may reach another worker than the flow's
    whole packets: the split of records may differ, not the sums)."""
    _needs()
    ref, fast, (sref, sfast), _ = run_pair(tmp_path, {"workers": 2})
    got, want = sum_by_key(fast), sum_by_key(ref)
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        for f in ("packets", "bytes", "tcp_flags", "vlan", "ip_version", "in_if", "if_name"):
            assert g[f] == w[f], (key, f)
    firsts = {}
    for rows, side in ((ref, "ref"), (fast, "fast")):
        for r in rows:
            k = tuple(r[f] for f in ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "tos"))
            lo, hi = firsts.setdefault((side, k), [r["first"], r["last"]])
            firsts[(side, k)] = [min(lo, r["first"]), max(hi, r["last"])]
    for (side, k), span in firsts.items():
        if side == "ref":
            assert firsts[("fast", k)] == span, k
    # Both directions of a conversation in one worker: the FIN flow pair ended by its FINs.
    fins = [r for r in fast if r["end_reason"] == "fin"]
    assert {(r["src_ip"], r["dst_ip"]) for r in fins} == {("10.198.6.1", "10.198.6.2"), ("10.198.6.2", "10.198.6.1")}
    for key in ("frames", "packets_metered", "rejects", "fragments", "fragments_unmatched"):
        assert sfast[key] == sref[key], key
    assert sfast["kernel_drops"] == 0 and sfast["queue_dropped_packets"] == 0
    assert sfast["kernel_packets"] == sfast["frames"]


def test_fanout_spreads_flows_over_the_workers(tmp_path):
    """Many flows through two workers: every worker gets some, no frame twice."""
    _needs()
    from myason.agent.ring import RingCapture
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    with namespace_pair() as nsp:
        frames = [bytes(Ether(src=nsp["peer_mac"], dst=OTHER_MAC) / IP(src="10.198.11.%d" % (i % 200 + 1),
                                                                     dst="10.198.12.1")
                        / UDP(sport=2000 + i, dport=53) / b"x") for i in range(400)]
        with netns.in_netns(nsp["agent_ns"]):
            cap = RingCapture(AGENT_IF, "udp and dst host 10.198.12.1", workers=2, block_timeout=0.01)
            cap.open()
        try:
            assert cap.fanout is not None and all(m.fanout == cap.fanout for m in cap.members)
            sender = netns.NsSender(nsp["peer_ns"], PEER_IF)
            try:
                sender.send(frames)
            finally:
                sender.close()
            import threading
            import time
            stop = threading.Event()
            stop.set()
            per = [[] for _ in cap.members]
            end = time.monotonic() + 10
            while sum(map(len, per)) < len(frames) and time.monotonic() < end:
                for m, ports in zip(cap.members, per):
                    chunk = m.read_batch(stop)
                    if chunk:
                        ports += [int(w) >> 48 for w in chunk.kw[:, 4]]
        finally:
            cap.close()
    assert sorted(itertools.chain(*per)) == list(range(2000, 2400))
    assert all(len(p) > 50 for p in per), [len(p) for p in per]


def test_a_full_ring_counts_its_drops(tmp_path):
    """A tiny ring and a stopped agent: what the ring cannot hold is counted, nothing is silent."""
    _needs()
    import signal
    with namespace_pair() as nsp:
        conf = write_conf(tmp_path / "tiny.yaml", agent_id="tiny", interfaces=[AGENT_IF], workers=1,
                          ring_blocks=2, ring_block_size=65536, stats_interval=0)
        agent = Agent(nsp["agent_ns"], conf, "--output", str(tmp_path / "tiny.csv"), "--no-export")
        try:
            agent.wait_capturing(nsp["ifindex"])
            agent.proc.send_signal(signal.SIGSTOP)
            try:
                sent = blast(nsp, 5000)
            finally:
                agent.proc.send_signal(signal.SIGCONT)
            agent.wait_drained(nsp["ifindex"])
            code, _, err = agent.stop()
        finally:
            agent.kill()
    assert code == 0, err
    s = parse_summary(err)
    assert s["kernel_packets"] == sent
    assert s["kernel_drops"] > 0 and s["kernel_freezes"] > 0
    assert s["frames"] + s["kernel_drops"] == sent and s["queue_dropped_packets"] == 0
    # Two blocks of 64 KiB hold a few hundred of these 242-byte frames.
    assert 100 < s["frames"] < 1000
    assert sum(r["packets"] for r in read_records(tmp_path / "tiny.csv")) == s["packets_metered"] == s["frames"]


# ---- the ring source beside a LiveSource, on every link type --------------------------------

def _read_both(live, ring, want, deadline=10.0):
    """Frames from the LiveSource and chunks from the RingSource until each has `want` frames."""
    import threading
    import time
    from myason.agent import fastdecode
    frames, chunks = [], []
    stop = threading.Event()
    end = time.monotonic() + deadline
    while time.monotonic() < end and (len(frames) < want or sum(c.n for c in chunks) < want):
        frames.extend(live.read_batch(stop))
        got = ring.read_batch(stop)
        if got:
            chunks.append(got)
    return fastdecode.chunk_from_batch(frames, live.linktype, live.ifindex), chunks


def _assert_same_rows(want, chunks):
    import numpy as np
    from myason.agent import fastdecode
    n = sum(c.n for c in chunks)
    assert n == want.n
    cat = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in ("ts", "kw", "iplen", "flags",
                                                                                   "vlan", "status")}
    np.testing.assert_array_equal(cat["ts"], want.ts)
    np.testing.assert_array_equal(cat["status"], want.status)
    ok = want.status == fastdecode.OK
    for name in ("kw", "iplen", "flags", "vlan"):
        np.testing.assert_array_equal(cat[name][ok], getattr(want, name)[ok], err_msg=name)
    base, rejects = 0, []
    for c in chunks:
        rejects += [(i + base, r) for i, r, _ in c.rejects]
        base += c.n
    assert rejects == [(i, r) for i, r, _ in want.rejects]


@pytest.mark.parametrize("arphrd", [None, 519])
def test_ring_reads_tun_devices_as_livesource(arphrd):
    """Raw IP (ARPHRD_NONE) and cooked (SOCK_DGRAM, the SLL header from sockaddr_ll) devices."""
    import os
    _needs()
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    from myason.agent.capture import LiveSource
    from myason.agent.ring import RingSource
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun")
    packets = [bytes(IP(src="10.198.0.2", dst="10.198.0.1") / UDP(sport=5000, dport=7001) / (b"t" * i))
               for i in range(1, 6)]
    packets += [bytes(IPv6(src="fd00::2", dst="fd00::1") / UDP(sport=5, dport=7001)),
                bytes(IP(src="10.198.0.2", dst="10.198.0.1", flags="MF", id=9) / UDP(sport=1, dport=7001) / (b"f" * 8)),
                bytes(IP(src="10.198.0.2", dst="10.198.0.1", proto=47) / b"gre!")]
    with netns.veth_pair() as pair, netns.tun_device(pair.ns, "myatun1", arphrd) as fd:
        with netns.in_netns(pair.ns):
            live = LiveSource("myatun1", poll_timeout=0.05)
            ring = RingSource("myatun1", poll_timeout=0.05, block_timeout=0.01)
            live.open()
            ring.open()
        try:
            assert ring.linktype == live.linktype == (101 if arphrd is None else 113)
            for p in packets:
                os.write(fd, p)
            want, chunks = _read_both(live, ring, len(packets))
        finally:
            live.close()
            ring.close()
    _assert_same_rows(want, chunks)
    assert ring.stats["bytes"] == live.stats["bytes"] and ring.stats["frames"] == len(packets)


def test_ring_reads_lo_once_and_counts_truncation():
    """Loopback: the OUTGOING copy dropped in the filter; snaplen cuts frames and counts them."""
    _needs()
    import os
    import socket

    from myason.agent.capture import LiveSource
    from myason.agent.ring import RingSource
    with namespace_pair() as nsp:
        with netns.in_netns(nsp["agent_ns"]):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            live = LiveSource("lo", "udp", snaplen=100, poll_timeout=0.05)
            ring = RingSource("lo", "udp", snaplen=100, poll_timeout=0.05, block_timeout=0.01)
            live.open()
            ring.open()
        try:
            rx.bind(("127.0.0.1", 0))
            for i in range(10):
                tx.sendto(b"lo-%d-" % os.getpid() + b"x" * (30 * i), rx.getsockname())
            want, chunks = _read_both(live, ring, 10)
        finally:
            live.close()
            ring.close()
            rx.close()
            tx.close()
    _assert_same_rows(want, chunks)
    assert ring.stats["truncated"] == live.stats["truncated"] > 0
    assert ring.kernel_stats()["kernel_packets"] == 10


def test_ring_interface_down_then_deleted():
    _needs()
    import socket
    import threading

    from myason.agent.ring import RingSource
    from myason.errors import CaptureError
    with netns.veth_pair() as pair:
        src = RingSource(pair.host_if, poll_timeout=0.05, block_timeout=0.01)
        src.open()
        stop = threading.Event()
        try:
            subprocess.run(["ip", "link", "set", pair.host_if, "down"], check=True)
            for _ in range(40):
                src.read_batch(stop)
                if src.stats["enetdown"]:
                    break
            assert src.stats["enetdown"] == 1
            subprocess.run(["ip", "link", "set", pair.host_if, "up"], check=True)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"after-up", (pair.ns_ip4, 9))
            got = 0
            for _ in range(100):
                chunk = src.read_batch(stop)
                got += chunk.n if chunk else 0
                if got:
                    break
            assert got
            subprocess.run(["ip", "netns", "delete", pair.ns], check=True)
            with pytest.raises(CaptureError, match="gone"):
                for _ in range(100):
                    src.read_batch(stop)
        finally:
            src.close()
