"""LiveSource on real interfaces: veth pairs in throw-away namespaces, TUN devices and lo (root only)."""
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from myason.agent import capture
from myason.agent.capture import LiveSource
from myason.errors import CaptureError
from tests.support import netns

REPO = Path(__file__).resolve().parents[2]
_skip_unless_root = pytest.mark.skipif(not netns.have_netns(), reason="needs root and the `ip` tool")


def live(test):
    """Mark a test as needing root (namespaces, packet sockets); it skips cleanly otherwise."""
    return pytest.mark.root(_skip_unless_root(test))


def _libpcap():
    try:
        capture.compile_bpf("udp", capture.LINKTYPE_ETHERNET, 65535)
        return True
    except CaptureError:
        return False


needs_libpcap = pytest.mark.skipif(not _libpcap(), reason="libpcap is not installed")


def collect(src, until, deadline=5.0):
    """Read batches until until(frames) holds (then one more short drain) or the deadline passes."""
    frames = []
    stop = threading.Event()
    end = time.monotonic() + deadline
    while time.monotonic() < end and not until(frames):
        frames.extend(src.read_batch(stop))
    # Late duplicates would arrive right behind the originals: one more empty poll catches them.
    while True:
        batch = src.read_batch(stop)
        if not batch:
            return frames
        frames.extend(batch)


def has_all(expected):
    """until() predicate: every expected frame (bytes) has been seen."""
    want = set(expected)
    return lambda frames: want <= {f for _, f in frames}


# ---- pure helpers (no root needed) ----

def test_linktype_for_arphrd():
    assert capture.linktype_for_arphrd(1) == 1
    assert capture.linktype_for_arphrd(772) == 1
    assert capture.linktype_for_arphrd(65534) == 101
    assert capture.linktype_for_arphrd(512) == 101
    assert capture.linktype_for_arphrd(778) == 113
    assert capture.linktype_for_arphrd(519) == 113


def test_build_filter():
    assert capture.build_filter("", ()) == ""
    assert capture.build_filter("  tcp ", ()) == "(tcp)"
    assert capture.build_filter("tcp", [("10.0.0.1", 2055), ("fd00::1", "4739")]) == (
        "(tcp) and not (udp and dst host 10.0.0.1 and dst port 2055)"
        " and not (udp and dst host fd00::1 and dst port 4739)")
    assert capture.build_filter("", [("fe80::1%eth0", 1)]) == "not (udp and dst host fe80::1 and dst port 1)"
    with pytest.raises(ValueError):
        capture.build_filter("", [("10.0.0.1", 70000)])
    with pytest.raises(ValueError):
        capture.build_filter("", [("not-an-ip", 1)])


def test_drop_outgoing_prefix():
    prog = capture.drop_outgoing([(0x06, 0, 0, 99)])
    assert prog[-1] == (0x06, 0, 0, 99)
    assert prog[1][1:] == (0, 1, 4)  # jeq #OUTGOING: fall through to `ret #0`, else skip it
    assert prog[2] == (0x06, 0, 0, 0)


@needs_libpcap
def test_compile_bpf_raises_snaplen_and_names_bad_filter():
    prog = capture.compile_bpf("udp", capture.LINKTYPE_ETHERNET, 262144)
    rets = [k for code, _, _, k in prog if code == 0x06]
    assert set(rets) == {0, 262144}
    with pytest.raises(CaptureError, match="udp portt"):
        capture.compile_bpf("udp portt 5", capture.LINKTYPE_ETHERNET, 100)
    assert capture.compile_bpf("", capture.LINKTYPE_RAW, 7) == [(0x06, 0, 0, 7)]


@needs_libpcap
def test_cook_program_shifts_offsets_past_sll_header():
    sll = capture.compile_bpf("udp port 53", capture.LINKTYPE_LINUX_SLL, 1000)
    cooked = capture.cook_program(sll)
    assert len(cooked) == len(sll)
    loads = [(a, b) for a, b in zip(sll, cooked)
             if a[0] & 0x07 in (0, 1) and a[0] & 0xE0 in (0x20, 0x40, 0xA0)]
    assert loads
    for (_, _, _, k_sll), (_, _, _, k_cooked) in loads:
        if k_sll == 14:  # the SLL protocol field becomes the kernel's skb->protocol
            assert k_cooked == 0xFFFFF000
        else:
            assert k_cooked == k_sll - 16
    assert capture.cook_program([(0x28, 0, 0, 6)]) is None  # a load from the SLL address field


# ---- live capture ----

def _udp_frames(vp, scapy, dports, v6=False, sport=40000, tag=b"mya"):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    l3 = IPv6(src=vp.ns_ip6, dst=vp.host_ip6) if v6 else IP(src=vp.ns_ip4, dst=vp.host_ip4)
    return [bytes(Ether(src=vp.ns_mac, dst=vp.host_mac) / l3 / UDP(sport=sport + i, dport=p)
                  / (tag + b"-%d-%d" % (p, i) + b"." * 32)) for i, p in enumerate(dports)]


@pytest.fixture(scope="module")
def vp():
    if not netns.have_netns():
        pytest.skip("needs root and the `ip` tool")
    with netns.veth_pair() as pair:
        yield pair


@pytest.fixture(scope="module")
def scapy():
    return pytest.importorskip("scapy.all")


@pytest.fixture(scope="module")
def sender(vp, scapy):
    """Sends frames from inside the namespace with scapy's sendp (one process for the module)."""
    s = netns.NsSender(vp.ns, vp.ns_if)
    yield s
    s.close()


@live
def test_veth_frames_arrive_once_each_direction(vp, scapy, sender):
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    assert scapy
    udp4 = _udp_frames(vp, scapy, range(33000, 33020))
    udp6 = _udp_frames(vp, scapy, range(33100, 33104), v6=True)
    icmp = [bytes(Ether(src=vp.ns_mac, dst=vp.host_mac) / IP(src=vp.ns_ip4, dst=vp.host_ip4)
                  / ICMP(id=0x4D59, seq=i) / (b"ping%d" % i)) for i in range(5)]
    sent = udp4 + udp6 + icmp
    with LiveSource(vp.host_if, poll_timeout=0.1) as src:
        assert src.linktype == 1 and src.ifindex == socket.if_nametoindex(vp.host_if)
        before = time.time()
        sender.send(sent)
        # Outgoing direction: the kernel's echo replies, and a datagram from a local socket.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.sendto(b"outgoing-probe", (vp.ns_ip4, 9))

        def replies(frames):
            return [f for _, f in frames if IP in Ether(f) and ICMP in Ether(f)
                    and Ether(f)[ICMP].type == 0 and Ether(f)[ICMP].id == 0x4D59]

        def probes(frames):
            # The namespace answers with an ICMP error quoting the probe: count the UDP frame only.
            return [f for _, f in frames if f.endswith(b"outgoing-probe") and ICMP not in Ether(f)]

        def done(frames):
            return set(sent) <= {f for _, f in frames} and len(replies(frames)) >= 5 and probes(frames)

        frames = collect(src, done)
        after = time.time()
        stats = src.kernel_stats()
    got = [f for _, f in frames]
    for frame in sent:
        assert got.count(frame) == 1, Ether(frame).summary()
    assert sorted(Ether(f)[ICMP].seq for f in replies(frames)) == list(range(5))
    assert len(probes(frames)) == 1
    assert all(before - 1 <= ts <= after + 1 for ts, _ in frames)
    assert stats["kernel_packets"] >= len(frames) and stats["kernel_drops"] == 0
    assert src.stats["frames"] == len(frames)


@live
@needs_libpcap
def test_veth_bpf_filter(vp, scapy, sender):
    wanted = _udp_frames(vp, scapy, [34001] * 3, tag=b"keep")
    other = (_udp_frames(vp, scapy, [34002] * 3, tag=b"drop")
             + _udp_frames(vp, scapy, [34001], v6=True, tag=b"v6"))
    with LiveSource(vp.host_if, bpf_filter="udp port 34001", poll_timeout=0.1) as src:
        sender.send(other + wanted)
        frames = collect(src, has_all(wanted + other[-1:]))
        stats = src.kernel_stats()
    got = sorted(f for _, f in frames)
    assert got == sorted(wanted + other[-1:])  # v4 and v6 on port 34001, nothing else
    assert stats["kernel_packets"] >= len(frames)


@live
@needs_libpcap
def test_veth_exclude(vp, scapy, sender):
    excluded = (_udp_frames(vp, scapy, [2055, 2055]) + _udp_frames(vp, scapy, [2055], v6=True))
    kept = (_udp_frames(vp, scapy, [2056], tag=b"k1")
            + _udp_frames(vp, scapy, [2056], v6=True, tag=b"k2")
            + _udp_frames(vp, scapy, [9000], sport=2055, tag=b"k3"))  # source port 2055 stays
    exclude = [(vp.host_ip4, 2055), (vp.host_ip6, "2055")]
    bpf = "udp and (dst host %s or dst host %s)" % (vp.host_ip4, vp.host_ip6)
    with LiveSource(vp.host_if, bpf_filter=bpf, exclude=exclude, poll_timeout=0.1) as src:
        assert "not (udp and dst host %s and dst port 2055)" % vp.host_ip6 in src.filter_expression
        sender.send(excluded + kept)
        frames = collect(src, has_all(kept))
    got = [f for _, f in frames]
    assert sorted(got) == sorted(kept)
    assert not set(excluded) & set(got)


@live
def test_veth_vlan_tags_put_back(vp, scapy, sender):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
    l3 = IP(src=vp.ns_ip4, dst=vp.host_ip4) / UDP(sport=1, dport=35000) / (b"vlan" * 10)
    # The kernel always takes the outer tag out of a received frame; it comes back from auxdata.
    tagged = [bytes(Ether(src=vp.ns_mac, dst=vp.host_mac) / Dot1Q(vlan=42, prio=5) / l3),
              bytes(Ether(src=vp.ns_mac, dst=vp.host_mac) / Dot1AD(vlan=7) / Dot1Q(vlan=42) / l3)]
    with LiveSource(vp.host_if, poll_timeout=0.1) as src:
        sender.send(tagged)
        frames = collect(src, has_all(tagged))
    got = [f for _, f in frames]
    assert [got.count(f) for f in tagged] == [1, 1]


@live
def test_snaplen_cuts_and_counts():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        marker = struct.pack("!H", port) * 8
        with LiveSource("lo", snaplen=80, poll_timeout=0.1) as src:
            rx.sendto(marker + b"x" * 300, ("127.0.0.1", port))
            frames = collect(src, lambda fs: any(marker in f for _, f in fs))
    hits = [f for _, f in frames if marker in f]
    assert len(hits) == 1 and len(hits[0]) == 80
    assert src.stats["truncated"] >= 1


@live
def test_interface_down_then_deleted():
    with netns.veth_pair() as pair:
        src = LiveSource(pair.host_if, poll_timeout=0.05)
        src.open()
        try:
            subprocess.run(["ip", "link", "set", pair.host_if, "down"], check=True)
            # The multicast leave reports sent while going down may still come through.
            collect(src, lambda f: src.stats["enetdown"], deadline=2)
            assert src.stats["enetdown"] == 1
            subprocess.run(["ip", "link", "set", pair.host_if, "up"], check=True)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                # IPv4 addresses (unlike IPv6 ones) survive the link going down.
                s.sendto(b"after-up", (pair.ns_ip4, 9))
            frames = collect(src, lambda fs: any(f.endswith(b"after-up") for _, f in fs))
            assert any(f.endswith(b"after-up") for _, f in frames)
            subprocess.run(["ip", "netns", "delete", pair.ns], check=True)
            with pytest.raises(CaptureError, match="gone"):
                collect(src, lambda f: False, deadline=2)
        finally:
            src.close()


@live
@pytest.mark.parametrize("bpf", ["", "udp"])
def test_lo_datagrams_once(bpf):
    if bpf and not _libpcap():
        pytest.skip("libpcap is not installed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        payloads = [b"lo-%d-%d-%d" % (os.getpid(), port, i) for i in range(10)]
        with LiveSource("lo", bpf_filter=bpf, poll_timeout=0.1) as src:
            assert src.linktype == 1
            for p in payloads:
                tx.sendto(p, ("127.0.0.1", port))

            def done(frames):
                return all(any(f.endswith(p) for _, f in frames) for p in payloads)

            frames = collect(src, done)
            stats = src.kernel_stats()
    for p in payloads:
        hits = [f for _, f in frames if f.endswith(p)]
        assert len(hits) == 1
        assert hits[0][:12] == bytes(12) and hits[0][12:14] == b"\x08\x00"
    assert stats["kernel_packets"] >= len(frames)


def _ip_udp(dport, payload):
    from scapy.layers.inet import IP, UDP
    return bytes(IP(src="10.198.0.2", dst="10.198.0.1") / UDP(sport=5000, dport=dport) / payload)


@live
@pytest.mark.parametrize("arphrd", [None, 519])
def test_tun_raw_ip_and_cooked(scapy, arphrd):
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun")
    with netns.veth_pair() as pair, netns.tun_device(pair.ns, "myatun0", arphrd) as fd:
        bpf = "udp port 7001" if _libpcap() else ""
        with netns.in_netns(pair.ns):
            src = LiveSource("myatun0", bpf_filter=bpf, poll_timeout=0.1)
            src.open()
        try:
            wanted = [_ip_udp(7001, b"tun-%d" % i) for i in range(4)]
            for pkt in [_ip_udp(7002, b"other")] + wanted:
                os.write(fd, pkt)
            if arphrd is None:
                assert src.linktype == 101
                expected = wanted
            else:
                assert src.linktype == 113
                # SLL: PACKET_HOST, ARPHRD 519, no link address, protocol IPv4.
                expected = [struct.pack("!HHH8sH", 0, 519, 0, b"", 0x0800) + p for p in wanted]
            frames = collect(src, has_all(expected))
        finally:
            src.close()
    got = sorted(f for _, f in frames)
    if bpf:
        assert got == sorted(expected)
    else:
        assert all(got.count(e) == 1 for e in expected)


@live
@needs_libpcap
def test_exclude_host_names_are_resolved():
    with LiveSource("lo", exclude=[("localhost", 2055)]) as src:
        assert "not (udp and dst host 127.0.0.1 and dst port 2055)" in src.filter_expression


@live
def test_errors_name_the_problem():
    with pytest.raises(CaptureError, match="no such network interface"):
        LiveSource("mya-missing0").open()
    if _libpcap():
        with pytest.raises(CaptureError, match="udp portt 9"):
            LiveSource("lo", bpf_filter="udp portt 9").open()
    with pytest.raises(CaptureError, match="not open"):
        LiveSource("lo").read_batch(threading.Event())
    with pytest.raises(CaptureError, match="exclude"):
        LiveSource("lo", exclude=[("127.0.0.1", 0)]).open()


@live
def test_without_cap_net_raw_says_so():
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is missing")
    code = ("from myason.agent.capture import LiveSource\n"
            "from myason.errors import CaptureError\n"
            "try:\n    LiveSource('lo').open()\nexcept CaptureError as e:\n    print(e)\n")
    argv = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-c", code]
    res = subprocess.run(argv,
                         capture_output=True, text=True, cwd=REPO, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "needs root or CAP_NET_RAW" in res.stdout, res.stdout + res.stderr
