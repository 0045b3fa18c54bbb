"""Synthetic but realistic traffic built with scapy, with the flow totals it must produce.

The expected totals are computed here from the IP headers scapy builds, independently of the
agent's decoder, so tests can check the agent end to end on captures they generate.
"""
import random
from collections import defaultdict

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, ICMPv6EchoRequest
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.utils import wrpcap

T0 = 1704067200.0  # 2024-01-01T00:00:00Z


def _eth():
    # Explicit MACs: scapy would otherwise look up routes and warn.
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _ip_len(pkt):
    if IP in pkt:
        return pkt[IP].len if pkt[IP].len is not None else len(pkt[IP])
    return 40 + len(pkt[IPv6].payload)


def tcp_session(t, cli, srv, sport, dport, nreq=3, payload=300, v6=False, vlan=None, tos=0):
    """A full TCP conversation: handshake, requests/responses, FIN teardown. Returns [(t, pkt)]."""
    ip = (lambda s, d: IPv6(src=s, dst=d, tc=tos)) if v6 else (lambda s, d: IP(src=s, dst=d, tos=tos))
    eth = _eth()
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    out = []

    def put(dt, s, d, sp, dp, flags, data=b""):
        nonlocal t
        t += dt
        out.append((t, eth / ip(s, d) / TCP(sport=sp, dport=dp, flags=flags) / data))

    put(0.0, cli, srv, sport, dport, "S")
    put(0.01, srv, cli, dport, sport, "SA")
    put(0.01, cli, srv, sport, dport, "A")
    for _ in range(nreq):
        put(0.05, cli, srv, sport, dport, "PA", b"G" * 40)
        put(0.02, srv, cli, dport, sport, "PA", b"R" * payload)
        put(0.01, cli, srv, sport, dport, "A")
    put(0.1, cli, srv, sport, dport, "FA")
    put(0.01, srv, cli, dport, sport, "FA")
    put(0.01, cli, srv, sport, dport, "A")
    return out


def dns_exchange(t, cli, srv, sport):
    eth = _eth()
    return [(t, eth / IP(src=cli, dst=srv) / UDP(sport=sport, dport=53) / (b"q" * 30)),
            (t + 0.02, eth / IP(src=srv, dst=cli) / UDP(sport=53, dport=sport) / (b"a" * 90))]


def pings(t, a, b, n=4, v6=False):
    out = []
    for i in range(n):
        if v6:
            out.append((t + i, _eth() / IPv6(src=a, dst=b) / ICMPv6EchoRequest(id=1, seq=i)))
        else:
            out.append((t + i, _eth() / IP(src=a, dst=b) / ICMP(type=8, id=1, seq=i) / (b"p" * 56)))
            out.append((t + i + 0.001, _eth() / IP(src=b, dst=a) / ICMP(type=0, id=1, seq=i) / (b"p" * 56)))
    return out


def fragmented_udp(t, a, b, sport, dport, size=3000):
    frags = fragment(IP(src=a, dst=b, id=4242) / UDP(sport=sport, dport=dport) / (b"f" * size), fragsize=1000)
    return [(t + i * 0.001, _eth() / f) for i, f in enumerate(frags)]


def scenario(seed=1):
    """A mixed capture (~600 packets over ~90 s): TCP v4/v6, VLAN, DNS, ICMP, fragments, ARP."""
    rnd = random.Random(seed)
    pkts = []
    t = T0
    for i in range(20):
        cli = "10.1.%d.%d" % (rnd.randrange(1, 250), rnd.randrange(1, 250))
        pkts += tcp_session(t + i * 2.5, cli, "192.0.2.80", 40000 + i, 80 if i % 3 else 443,
                            nreq=rnd.randrange(1, 5), payload=rnd.randrange(100, 1400))
    for i in range(5):
        pkts += tcp_session(t + 3 + i * 7, "2001:db8::%x" % (i + 1), "2001:db8:ffff::1", 50000 + i, 443,
                            v6=True, nreq=2)
    pkts += tcp_session(t + 1, "10.9.9.9", "10.9.9.1", 33333, 22, vlan=100, tos=0x10, nreq=4)
    for i in range(30):
        pkts += dns_exchange(t + i * 3.1, "10.1.1.%d" % (i % 5 + 1), "192.0.2.53", 20000 + i)
    pkts += pings(t + 10, "10.2.2.2", "198.51.100.7", n=6)
    pkts += pings(t + 20, "2001:db8::99", "2001:db8::1", n=3, v6=True)
    pkts += fragmented_udp(t + 40, "10.3.3.3", "10.4.4.4", 5000, 6000)
    pkts += [(t + 50 + i, Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.1.1.1")) for i in range(3)]
    # A long idle gap for a flow, so aging splits it (inactive timeout 15 s by default).
    pkts += dns_exchange(t + 60, "10.7.7.7", "192.0.2.53", 1111)
    pkts += dns_exchange(t + 88, "10.7.7.7", "192.0.2.53", 1111)
    pkts.sort(key=lambda tp: tp[0])
    return pkts


def expected_totals(pkts):
    """Per (src, dst, sport, dport, proto, tos): [packets, bytes] from scapy's own dissection.

    Non-first IPv4 fragments carry the ports of their first fragment (what the agent does).
    """
    totals = defaultdict(lambda: [0, 0])
    frag_ports = {}
    for _, p in pkts:
        p = p.__class__(bytes(p))  # dissect the real bytes, as a capture would hold them
        if IP in p:
            ip = p[IP]
            src, dst, proto, tos = ip.src, ip.dst, ip.proto, ip.tos
            if ip.frag > 0:
                sport, dport = frag_ports.get((src, dst, proto, ip.id), (0, 0))
            elif TCP in p or UDP in p:
                l4 = p[TCP] if TCP in p else p[UDP]
                sport, dport = l4.sport, l4.dport
                if ip.flags.MF:
                    frag_ports[(src, dst, proto, ip.id)] = (sport, dport)
            elif ICMP in p:
                sport, dport = 0, p[ICMP].type * 256 + p[ICMP].code
            else:
                sport = dport = 0
        elif IPv6 in p:
            ip6 = p[IPv6]
            src, dst, proto, tos = ip6.src, ip6.dst, ip6.nh, ip6.tc
            if TCP in p or UDP in p:
                l4 = p[TCP] if TCP in p else p[UDP]
                sport, dport = l4.sport, l4.dport
            elif proto == 58:
                icmp = ip6.payload
                sport, dport = 0, icmp.type * 256 + icmp.code
            else:
                sport = dport = 0
        else:
            continue
        tot = totals[(src, dst, sport, dport, proto, tos)]
        tot[0] += 1
        tot[1] += _ip_len(p)
    return dict(totals)


def write_pcap(path, pkts):
    """Write (time, packet) pairs to a classic pcap with their timestamps."""
    out = []
    for t, p in pkts:
        p = p.__class__(bytes(p))
        p.time = t
        out.append(p)
    wrpcap(str(path), out)
