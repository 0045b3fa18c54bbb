"""Crafted attacks (scans, a brute force, a SYN flood, a blocklisted peer) as timed frames, and the
detector settings under which each gives exactly one event."""
from scapy.layers.inet import IP, TCP

from tests.support import trafficgen as gen

ATTACKERS = {"hscan": "203.0.113.66", "vscan": "203.0.113.77", "brute": "203.0.113.9"}
VSCAN_TARGET, BRUTE_TARGET, FLOOD_TARGET = "10.0.0.80", "10.0.0.22", "10.0.0.99"
FLOOD_SOURCES = ["198.18.0.%d" % i for i in range(1, 6)]
LISTED, LISTED_PEER = "100.64.77.7", "10.0.0.5"
DETECT = {"detectors": {"dos": {"syn_packets": 500},
                        "blocklist": {"lists": [{"name": "testlist", "cidrs": ["100.64.77.0/24"],
                                                 "category": "Intrusion.Botnet"}]}}}


def syn(t, src, dst, sport, dport):
    """(t, frame) of one TCP SYN."""
    return (t, gen._eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def attacks(t0):
    """[(t, pkt)]: horizontal scan, vertical scan, SSH brute force, SYN flood, blocklisted peer."""
    pkts = []
    for i in range(60):         # 60 hosts on tcp/22
        pkts.append(syn(t0 + i * 0.05, ATTACKERS["hscan"], "10.0.1.%d" % (i + 1), 50000, 22))
    for i in range(70):         # 70 ports of one host
        pkts.append(syn(t0 + 5 + i * 0.05, ATTACKERS["vscan"], VSCAN_TARGET, 51000, 1000 + i))
    for i in range(25):         # 25 completed, short SSH logins
        pkts += gen.tcp_session(t0 + 10 + i * 0.5, ATTACKERS["brute"], BRUTE_TARGET, 42000 + i, 22, nreq=1, payload=80)
    for i in range(600):        # 600 SYN-only flows from 5 sources
        pkts.append(syn(t0 + 25 + i * 0.005, FLOOD_SOURCES[i % 5], FLOOD_TARGET, 20000 + i, 80))
    pkts += gen.tcp_session(t0 + 30, LISTED_PEER, LISTED, 45000, 443, nreq=2)
    pkts.sort(key=lambda p: p[0])
    return pkts
