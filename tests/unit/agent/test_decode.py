"""Tests for myason.agent.decode: byte fixtures per encapsulation, fuzzing, and real captures."""
import random
import socket
import struct
from pathlib import Path

import pytest
from scapy.config import conf
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Jumbo, MIP6MH_BU, _MobilityHeader,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Dot3, Ether, LLC, SNAP, STP
from scapy.layers.ppp import PPP, PPPoE, PPPoED
from scapy.layers.sctp import SCTP
from scapy.layers.vxlan import VXLAN

from myason.agent import decode as D
from myason.agent.decode import (
    LINKTYPE_C_HDLC, LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP, LINKTYPE_NULL, LINKTYPE_PPP, LINKTYPE_PPP_HDLC, LINKTYPE_RAW,
    P_DPORT, P_DST, P_FRAG, P_IP_LEN, P_IP_VERSION, P_PROTO, P_SPORT, P_SRC, P_TCP_FLAGS, P_TOS,
    P_VLAN, REASONS, SUPPORTED_LINKTYPES, decode,
)

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"

A4, B4 = "192.0.2.1", "198.51.100.2"
A6, B6 = "2001:db8::1", "2001:db8:ffff::2"


def a4(text):
    return socket.inet_aton(text)


def a6(text):
    return socket.inet_pton(socket.AF_INET6, text)


def eth(**fields):
    """An Ethernet header with fixed addresses (scapy would otherwise resolve them over the network)."""
    return Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", **fields)


def dot3():
    """An 802.3 header with fixed addresses."""
    return Dot3(dst="01:80:c2:00:00:00", src="02:00:00:00:00:01")


def snap(code, oui=0):
    """LLC with the SNAP SAPs, then a SNAP header."""
    return LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=oui, code=code)


def dec(frame, linktype=LINKTYPE_ETHERNET):
    """decode(), checking that the fast path and the general decoder agree."""
    frame = bytes(frame)
    result = decode(frame, linktype)
    assert result == D._decode_link(frame, linktype)
    check_shape(result)
    return result


def check_shape(result):
    if isinstance(result, str):
        assert result in REASONS
        return
    assert type(result) is tuple and len(result) == 11
    version = result[P_IP_VERSION]
    assert version in (4, 6)
    assert type(result[P_SRC]) is bytes and len(result[P_SRC]) == (4 if version == 4 else 16)
    assert type(result[P_DST]) is bytes and len(result[P_DST]) == len(result[P_SRC])
    assert 0 <= result[P_SPORT] <= 0xFFFF and 0 <= result[P_DPORT] <= 0xFFFF and result[P_IP_LEN] >= 0
    assert 0 <= result[P_PROTO] <= 255 and 0 <= result[P_TOS] <= 255 and 0 <= result[P_TCP_FLAGS] <= 255
    assert 0 <= result[P_VLAN] <= 4095
    frag = result[P_FRAG]
    assert frag == 0 or (type(frag) is tuple and len(frag) == 3 and type(frag[2]) is bool)


def v4_tcp(**tcp):
    return IP(src=A4, dst=B4, tos=0x28) / TCP(sport=40000, dport=443, **tcp)


def v6_udp():
    return IPv6(src=A6, dst=B6, tc=0xB8) / UDP(sport=5353, dport=53)


# --- the common path ---------------------------------------------------------------------------

def test_ethernet_ipv4_tcp_fields_and_positions():
    pkt = eth() / v4_tcp(flags="SECA") / (b"x" * 10)
    r = dec(pkt)
    assert r == (a4(A4), a4(B4), 40000, 443, 6, 0x28, 50, 0xD2, 4, 0, 0)
    assert (P_SRC, P_DST, P_SPORT, P_DPORT, P_PROTO, P_TOS, P_IP_LEN, P_TCP_FLAGS, P_IP_VERSION,
            P_VLAN, P_FRAG) == tuple(range(11))


def test_ethernet_ipv4_udp_and_ip_len_ignores_padding():
    frame = bytes(eth() / IP(src=A4, dst=B4) / UDP(sport=1, dport=2)) + b"\0" * 18
    assert dec(frame) == (a4(A4), a4(B4), 1, 2, 17, 0, 28, 0, 4, 0, 0)


def test_ethernet_ipv6_tcp_and_udp():
    r = dec(eth() / IPv6(src=A6, dst=B6, tc=0x10) / TCP(sport=1234, dport=80, flags="C"))
    assert r == (a6(A6), a6(B6), 1234, 80, 6, 0x10, 60, 0x80, 6, 0, 0)
    assert dec(eth() / v6_udp())[:8] == (a6(A6), a6(B6), 5353, 53, 17, 0xB8, 48, 0)


def test_ip_len_is_header_value_not_captured_length():
    frame = bytes(eth() / v4_tcp() / (b"p" * 1000))[:96]   # snaplen 96
    assert dec(frame)[P_IP_LEN] == 1040
    frame = bytes(eth() / IPv6(src=A6, dst=B6) / TCP() / (b"p" * 1000))[:96]
    assert dec(frame)[P_IP_LEN] == 1060


# --- VLANs -------------------------------------------------------------------------------------

def test_dot1q_single_tag():
    r = dec(eth() / Dot1Q(vlan=123, prio=5) / v4_tcp())
    assert r[:5] == (a4(A4), a4(B4), 40000, 443, 6) and r[P_VLAN] == 123
    r = dec(eth() / Dot1Q(vlan=7) / v6_udp())
    assert r[P_SPORT:P_PROTO + 1] == (5353, 53, 17) and r[P_VLAN] == 7 and r[P_IP_VERSION] == 6


@pytest.mark.parametrize("outer_type", [0x88A8, 0x9100, 0x8100])
def test_qinq_records_outer_vlan(outer_type):
    frame = eth(type=outer_type) / Dot1AD(vlan=300) / Dot1Q(vlan=400) / Dot1Q(vlan=500) / v4_tcp()
    r = dec(frame)
    assert r[P_VLAN] == 300 and r[P_SPORT:P_PROTO + 1] == (40000, 443, 6)


def test_priority_tag_does_not_hide_inner_vlan():
    assert dec(eth() / Dot1Q(vlan=0) / Dot1Q(vlan=42) / v4_tcp())[P_VLAN] == 42
    assert dec(eth() / Dot1Q(vlan=0) / v4_tcp())[P_VLAN] == 0


def test_vlan_cut_short():
    assert dec(bytes(eth() / Dot1Q(vlan=1) / v4_tcp())[:16]) == "short_frame"


# --- 802.3 / LLC / SNAP -------------------------------------------------------------------------

def test_llc_snap_ipv4_and_ipv6():
    r = dec(dot3() / snap(code=0x0800) / v4_tcp())
    assert r[:5] == (a4(A4), a4(B4), 40000, 443, 6)
    r = dec(dot3() / snap(code=0x86DD) / v6_udp())
    assert r[:5] == (a6(A6), a6(B6), 5353, 53, 17)


def test_llc_non_ip():
    assert dec(dot3() / LLC(dsap=0x42, ssap=0x42, ctrl=3) / STP()) == "non_ip"
    # CDP: SNAP with Cisco's OUI, so 0x2000 is not an ethertype.
    assert dec(dot3() / snap(0x2000, oui=0x0C) / (b"c" * 30)) == "non_ip"
    assert dec(dot3() / snap(code=0x0806) / ARP()) == "non_ip"
    assert dec(dot3() / LLC(dsap=0xE0, ssap=0xE0, ctrl=3) / (b"\xff\xff" + b"i" * 40)) == "non_ip"   # IPX
    assert dec(dot3() / snap(code=0x0100) / (b"\x45" * 40)) == "non_ip"
    assert dec(bytes(dot3() / snap(code=0x0800))[:20]) == "short_frame"


# --- MPLS --------------------------------------------------------------------------------------

def test_mpls_label_stack_ipv4_and_ipv6():
    r = dec(eth(type=0x8847) / MPLS(label=16, s=0) / MPLS(label=17, s=0) / MPLS(label=18, s=1) / v4_tcp())
    assert r[:5] == (a4(A4), a4(B4), 40000, 443, 6)
    r = dec(eth(type=0x8848) / MPLS(label=99, s=1) / v6_udp())
    assert r[:5] == (a6(A6), a6(B6), 5353, 53, 17)
    r = dec(eth() / Dot1Q(vlan=9, type=0x8847) / MPLS(label=5, s=1) / v4_tcp())
    assert r[P_VLAN] == 9 and r[P_PROTO] == 6


def test_mpls_pseudowire_control_word_then_ethernet():
    inner = bytes(eth() / Dot1Q(vlan=33) / v4_tcp())
    frame = bytes(eth(type=0x8847) / MPLS(label=1000, s=1)) + b"\0\0\0\0" + inner
    r = dec(frame)
    assert r[:5] == (a4(A4), a4(B4), 40000, 443, 6) and r[P_VLAN] == 33


def test_mpls_bad_stacks():
    assert dec(bytes(eth(type=0x8847) / MPLS(label=1, s=0) / MPLS(label=2, s=0))) == "short_frame"
    assert dec(bytes(eth(type=0x8847) / MPLS(label=1, s=1)) + b"\x30" * 30) == "non_ip"


# --- PPPoE and PPP -----------------------------------------------------------------------------

def test_pppoe_session_ipv4_ipv6_and_discovery():
    r = dec(eth() / PPPoE(sessionid=7) / PPP(proto=0x0021) / v4_tcp())
    assert r[:5] == (a4(A4), a4(B4), 40000, 443, 6)
    r = dec(eth() / Dot1Q(vlan=2) / PPPoE() / PPP(proto=0x0057) / v6_udp())
    assert r[:5] == (a6(A6), a6(B6), 5353, 53, 17) and r[P_VLAN] == 2
    assert dec(eth() / PPPoED()) == "non_ip"
    assert dec(eth() / PPPoE() / PPP(proto=0xC021) / (b"\x01" * 10)) == "non_ip"   # LCP
    assert dec(bytes(eth() / PPPoE())[:18]) == "short_frame"


def test_ppp_linktype_variants():
    ip4, ip6 = bytes(v4_tcp()), bytes(v6_udp())
    expect4 = (a4(A4), a4(B4), 40000, 443, 6)
    assert dec(b"\xff\x03\x00\x21" + ip4, LINKTYPE_PPP)[:5] == expect4
    assert dec(b"\x00\x21" + ip4, LINKTYPE_PPP)[:5] == expect4
    assert dec(b"\x21" + ip4, LINKTYPE_PPP)[:5] == expect4                 # protocol-field compression
    assert dec(b"\xff\x03\x00\x57" + ip6, LINKTYPE_PPP)[P_PROTO] == 17
    assert dec(b"\xff\x03\x00\x21" + ip4, LINKTYPE_PPP_HDLC)[:5] == expect4
    assert dec(b"\x0f\x00\x08\x00" + ip4, LINKTYPE_PPP)[:5] == expect4     # Cisco HDLC framing
    assert dec(b"\x0f\x00\x08\x00" + ip4, LINKTYPE_C_HDLC)[:5] == expect4
    assert dec(b"\x8f\x00\x88\x47" + bytes(MPLS(label=3, s=1)) + ip4, LINKTYPE_C_HDLC)[:5] == expect4
    assert dec(b"\xff\x03\x02\x81" + bytes(MPLS(label=3, s=1)) + ip4, LINKTYPE_PPP)[:5] == expect4
    assert dec(b"\xff\x03\xc0\x21\x01\x01\x00\x04", LINKTYPE_PPP) == "non_ip"
    assert dec(b"\xff\x03\x00", LINKTYPE_PPP) == "short_frame"
    assert dec(b"\x0f\x00\x08", LINKTYPE_PPP) == "short_frame"


# --- Linux cooked captures ----------------------------------------------------------------------

def test_linux_sll_and_sll2():
    expect = (a4(A4), a4(B4), 40000, 443, 6)
    assert dec(CookedLinux(proto=0x0800) / v4_tcp(), LINKTYPE_LINUX_SLL)[:5] == expect
    r = dec(CookedLinux(proto=0x8100) / Dot1Q(vlan=55) / v4_tcp(), LINKTYPE_LINUX_SLL)
    assert r[:5] == expect and r[P_VLAN] == 55
    assert dec(CookedLinux(proto=0x0806) / ARP(), LINKTYPE_LINUX_SLL) == "non_ip"
    r = dec(CookedLinuxV2(proto=0x86DD) / v6_udp(), LINKTYPE_LINUX_SLL2)
    assert r[:5] == (a6(A6), a6(B6), 5353, 53, 17)
    r = dec(CookedLinuxV2(proto=0x8100) / Dot1Q(vlan=66) / v6_udp(), LINKTYPE_LINUX_SLL2)
    assert r[P_VLAN] == 66 and r[P_PROTO] == 17
    assert dec(CookedLinuxV2(proto=0x0806) / ARP(), LINKTYPE_LINUX_SLL2) == "non_ip"
    # Netlink monitor captures (ARPHRD_NETLINK) carry no packets even when the bytes look like IP.
    assert dec(CookedLinux(lladdrtype=824, proto=0x0800) / v4_tcp(), LINKTYPE_LINUX_SLL) == "non_ip"
    assert dec(CookedLinuxV2(lladdrtype=824, proto=0x0800) / v4_tcp(), LINKTYPE_LINUX_SLL2) == "non_ip"
    assert dec(b"\0" * 15, LINKTYPE_LINUX_SLL) == "short_frame"
    assert dec(b"\0" * 19, LINKTYPE_LINUX_SLL2) == "short_frame"


# --- raw IP, BSD loopback ----------------------------------------------------------------------

@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, 12, 14])
def test_raw_ip_by_version_nibble(linktype):
    assert dec(v4_tcp(), linktype)[:5] == (a4(A4), a4(B4), 40000, 443, 6)
    assert dec(v6_udp(), linktype)[:5] == (a6(A6), a6(B6), 5353, 53, 17)
    assert dec(b"\x50" + b"\0" * 40, linktype) == "bad_ip_version"
    assert dec(b"", linktype) == "short_frame"


def test_raw_ipv4_and_ipv6_linktypes():
    assert dec(v4_tcp(), LINKTYPE_IPV4)[P_PROTO] == 6
    assert dec(v6_udp(), LINKTYPE_IPV6)[P_PROTO] == 17
    assert dec(v6_udp(), LINKTYPE_IPV4) == "bad_ip_version"
    assert dec(v4_tcp(), LINKTYPE_IPV6) == "bad_ip_version"


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("family", [24, 28, 30])
def test_bsd_null_both_byte_orders(order, family):
    r = dec(struct.pack(order + "I", 2) + bytes(v4_tcp()), LINKTYPE_NULL)
    assert r[:5] == (a4(A4), a4(B4), 40000, 443, 6)
    r = dec(struct.pack(order + "I", family) + bytes(v6_udp()), LINKTYPE_NULL)
    assert r[:5] == (a6(A6), a6(B6), 5353, 53, 17)


def test_bsd_loop_and_null_non_ip():
    assert dec(struct.pack(">I", 2) + bytes(v4_tcp()), LINKTYPE_LOOP)[P_PROTO] == 6
    assert dec(struct.pack(">I", 24) + bytes(v6_udp()), LINKTYPE_LOOP)[P_PROTO] == 17
    assert dec(struct.pack("<I", 7) + bytes(v4_tcp()), LINKTYPE_NULL) == "non_ip"
    assert dec(b"\x02\0\0", LINKTYPE_NULL) == "short_frame"


# --- IPv4 details ------------------------------------------------------------------------------

def test_ipv4_options():
    pkt = IP(src=A4, dst=B4, options=b"\x94\x04\x00\x00" + b"\x01" * 8) / TCP(sport=22, dport=2222, flags="PA")
    r = dec(eth() / pkt)
    assert r[:5] == (a4(A4), a4(B4), 22, 2222, 6) and r[P_TCP_FLAGS] == 0x18 and r[P_IP_LEN] == 52


def test_ipv4_bad_headers():
    good = bytes(eth() / v4_tcp())
    assert dec(good[:14] + b"\x44" + good[15:]) == "bad_ipv4_ihl"
    assert dec(good[:14] + b"\x65" + good[15:]) == "bad_ip_version"
    assert dec(good[:33]) == "short_ipv4_header"
    assert dec(good[:14]) == "short_ipv4_header"
    with_options = bytes(eth() / IP(options=b"\x01" * 8) / TCP())
    assert dec(with_options[:40]) == "short_ipv4_header"   # options cut by the snap length
    assert dec(good[:13]) == "short_frame"


def test_ipv4_fragments():
    first = eth() / IP(src=A4, dst=B4, id=4321, flags="MF", frag=0) / UDP(sport=7, dport=9) / (b"d" * 32)
    assert dec(first) == (a4(A4), a4(B4), 7, 9, 17, 0, 60, 0, 4, 0, (4321, 0, True))
    middle = eth() / IP(src=A4, dst=B4, id=4321, flags="MF", frag=5, proto=17) / (b"d" * 40)
    assert dec(middle) == (a4(A4), a4(B4), 0, 0, 17, 0, 60, 0, 4, 0, (4321, 40, True))
    last = eth() / Dot1Q(vlan=8) / IP(src=A4, dst=B4, id=4321, frag=10, proto=6) / (b"d" * 20)
    assert dec(last) == (a4(A4), a4(B4), 0, 0, 6, 0, 40, 0, 4, 8, (4321, 80, False))
    dont_fragment = eth() / IP(flags="DF") / TCP()
    assert dec(dont_fragment)[P_FRAG] == 0


def test_ipv4_total_length_zero_uses_captured_length():
    frame = bytes(eth() / IP(src=A4, dst=B4, len=0) / TCP() / (b"z" * 100))
    assert dec(frame)[P_IP_LEN] == 140
    frame = bytes(eth() / Dot1Q(vlan=3) / IP(src=A4, dst=B4, len=0) / UDP() / (b"z" * 10))
    assert dec(frame)[P_IP_LEN] == 38


# --- transport fields --------------------------------------------------------------------------

def test_icmp_and_icmpv6_type_code():
    r = dec(eth() / IP(src=A4, dst=B4) / ICMP(type=3, code=1))
    assert r[P_SPORT:P_PROTO + 1] == (0, 3 * 256 + 1, 1)
    r = dec(eth() / IPv6(src=A6, dst=B6) / ICMPv6EchoRequest())
    assert r[P_SPORT:P_PROTO + 1] == (0, 128 * 256, 58)
    r = dec(eth() / IPv6(src=A6, dst=B6) / ICMPv6DestUnreach(code=4))
    assert r[P_SPORT:P_PROTO + 1] == (0, 1 * 256 + 4, 58)


def test_sctp_and_udplite_ports():
    assert dec(eth() / IP() / SCTP(sport=2905, dport=2906))[P_SPORT:P_PROTO + 1] == (2905, 2906, 132)
    assert dec(eth() / IPv6() / SCTP(sport=36412, dport=38412))[P_SPORT:P_PROTO + 1] == (36412, 38412, 132)
    udplite = struct.pack("!HHHH", 5004, 5005, 8, 0)
    assert dec(eth() / IP(proto=136) / udplite)[P_SPORT:P_PROTO + 1] == (5004, 5005, 136)


def test_other_protocols_have_no_ports():
    r = dec(eth() / IP(proto=89) / (b"\x01\x02\x03\x04" * 8))   # OSPF
    assert r[P_SPORT:P_TCP_FLAGS + 1] == (0, 0, 89, 0, 32 + 20, 0)


@pytest.mark.parametrize("cut", [0, 1, 4, 13, 19])
def test_truncated_tcp_still_counts_with_ports_zero(cut):
    full = bytes(eth() / v4_tcp(flags="S"))
    r = dec(full[:34 + cut])
    assert r[:5] == (a4(A4), a4(B4), 0, 0, 6) and r[P_TCP_FLAGS] == 0 and r[P_IP_LEN] == 40
    full6 = bytes(eth() / IPv6(src=A6, dst=B6) / TCP(flags="S"))
    assert dec(full6[:54 + cut])[P_SPORT:P_TCP_FLAGS + 1] == (0, 0, 6, 0, 60, 0)


def test_truncated_udp_and_icmp():
    assert dec(bytes(eth() / IP() / UDP(sport=1, dport=2))[:41])[P_SPORT:P_PROTO + 1] == (0, 0, 17)
    assert dec(bytes(eth() / IP() / ICMP(type=8))[:35])[P_SPORT:P_PROTO + 1] == (0, 0, 1)


# --- IPv6 extension headers --------------------------------------------------------------------

def test_ipv6_ext_chain_to_tcp():
    pkt = (eth() / IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
           / IPv6ExtHdrRouting(addresses=["2001:db8::9"]) / IPv6ExtHdrDestOpt()
           / TCP(sport=5, dport=6, flags="F"))
    r = dec(pkt)
    assert r[:5] == (a6(A6), a6(B6), 5, 6, 6) and r[P_TCP_FLAGS] == 1 and r[P_FRAG] == 0
    assert r[P_IP_LEN] == len(bytes(pkt)) - 14


def test_ipv6_first_and_non_first_fragment():
    first = (eth() / IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop()
             / IPv6ExtHdrFragment(id=0xDEADBEEF, offset=0, m=1) / UDP(sport=53, dport=3333) / (b"q" * 64))
    r = dec(first)
    assert r[:5] == (a6(A6), a6(B6), 53, 3333, 17) and r[P_FRAG] == (0xDEADBEEF, 0, True)
    rest = eth() / IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=0xDEADBEEF, offset=9, m=0, nh=17) / (b"q" * 24)
    r = dec(rest)
    assert r == (a6(A6), a6(B6), 0, 0, 17, 0, 72, 0, 6, 0, (0xDEADBEEF, 72, False))
    atomic = eth() / IPv6() / IPv6ExtHdrFragment(id=1, offset=0, m=0) / TCP(sport=1, dport=2)
    assert dec(atomic)[P_SPORT:P_PROTO + 1] == (1, 2, 6) and dec(atomic)[P_FRAG] == 0


def test_ipv6_ah_mobility_esp_and_no_next_header():
    ah = struct.pack("!BBHII", 6, 4, 0, 0x100, 1) + b"\0" * 12   # (4 + 2) * 4 = 24 bytes
    r = dec(eth() / IPv6(src=A6, dst=B6, nh=51) / ah / TCP(sport=179, dport=50000))
    assert r[:5] == (a6(A6), a6(B6), 179, 50000, 6)
    r = dec(eth() / IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / MIP6MH_BU())
    assert r[P_PROTO] == 135   # mobility is the protocol, not walked
    assert dec(eth() / IPv6(nh=50) / (b"\0\0\0\1" * 8))[P_PROTO] == 50
    assert dec(eth() / IPv6(nh=59))[P_SPORT:P_PROTO + 1] == (0, 0, 59)
    # AH in IPv4 is not walked: the flow is AH's.
    assert dec(eth() / IP(proto=51) / ah / TCP())[P_SPORT:P_PROTO + 1] == (0, 0, 51)


def test_ipv6_ext_chain_truncated():
    pkt = bytes(eth() / IPv6() / IPv6ExtHdrHopByHop(options=[]) / IPv6ExtHdrDestOpt() / TCP())
    assert dec(pkt[:54 + 8]) == "bad_ext_header"       # hop-by-hop complete, next header unknown
    assert dec(pkt[:54 + 1]) == "bad_ext_header"
    r = dec(pkt[:54 + 8 + 4])                            # destination options cut: proto still known
    assert r[P_SPORT:P_PROTO + 1] == (0, 0, 6)
    frag = bytes(eth() / IPv6() / IPv6ExtHdrFragment(offset=3) / (b"x" * 8))
    assert dec(frag[:54 + 6]) == "bad_ext_header"
    assert dec(frag[:53]) == "short_ipv6_header"


def test_ipv6_jumbogram_lengths():
    hop_by_hop = IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=100000)])
    pkt = IPv6(src=A6, dst=B6, plen=0) / hop_by_hop / UDP(sport=1, dport=2)
    r = dec(eth() / pkt)
    assert r[P_IP_LEN] == 40 + 100000 and r[P_SPORT:P_PROTO + 1] == (1, 2, 17)
    # Pad1 options before the jumbo option, PadN after it: 2 + 2 + 6 + 6 = 16 bytes.
    options = b"\x00\x00" + b"\xc2\x04" + struct.pack("!I", 70000) + b"\x01\x04\0\0\0\0"
    hop_by_hop = struct.pack("!BB", 6, 1) + options
    r = dec(eth() / IPv6(src=A6, dst=B6, plen=0, nh=0) / hop_by_hop / TCP(sport=3, dport=4))
    assert r[P_IP_LEN] == 40 + 70000 and r[P_SPORT:P_PROTO + 1] == (3, 4, 6)
    no_jumbo = bytes(eth() / IPv6(src=A6, dst=B6, plen=0) / UDP(sport=1, dport=2) / (b"j" * 12))
    assert dec(no_jumbo)[P_IP_LEN] == 60


# --- tunnels stay outer, non-IP, bad input -----------------------------------------------------

def test_tunnels_are_not_decapsulated():
    assert dec(eth() / IP(src=A4, dst=B4) / GRE() / IP() / TCP())[:5] == (a4(A4), a4(B4), 0, 0, 47)
    assert dec(eth() / IP(src=A4, dst=B4) / IP() / TCP())[P_PROTO] == 4
    assert dec(eth() / IP(src=A4, dst=B4) / IPv6() / TCP())[P_PROTO] == 41
    r = dec(eth() / IP(src=A4, dst=B4) / UDP(sport=55555, dport=4789) / VXLAN() / eth() / IP() / TCP())
    assert r[:5] == (a4(A4), a4(B4), 55555, 4789, 17)
    assert dec(eth() / IPv6(src=A6, dst=B6) / IP() / UDP())[:5] == (a6(A6), a6(B6), 0, 0, 4)


def test_non_ip_and_short_frames():
    assert dec(eth() / ARP()) == "non_ip"
    assert dec(eth(type=0x88CC) / (b"\0" * 46)) == "non_ip"   # LLDP
    assert dec(b"") == "short_frame"
    assert dec(b"\0" * 13) == "short_frame"
    assert dec(bytes(eth() / IPv6())[:40]) == "short_ipv6_header"
    assert dec(v4_tcp(), 147) == "unsupported_linktype"
    assert dec(v4_tcp(), None) == "unsupported_linktype"


def test_pbb_provider_backbone():
    itag = b"\x00\x01\x02\x03" + bytes(eth()/ v4_tcp())
    r = dec(eth() / Dot1AD(vlan=12, type=0x88E7) / itag)
    assert r[:5] == (a4(A4), a4(B4), 40000, 443, 6) and r[P_VLAN] == 12


def test_vn_tag_and_fabricpath():
    vntag = b"\x80\x01\x00\x02\x81\x00" + bytes(Dot1Q(vlan=11) / v4_tcp())
    r = dec(eth(type=0x8926) / vntag)
    assert r[:5] == (a4(A4), a4(B4), 40000, 443, 6) and r[P_VLAN] == 11
    fabricpath = b"\x00\x3f" + bytes(eth() / v6_udp())
    assert dec(eth(type=0x8903) / fabricpath)[:5] == (a6(A6), a6(B6), 5353, 53, 17)
    assert dec(bytes(eth(type=0x8903) / fabricpath)[:29]) == "short_frame"
    assert dec(bytes(eth(type=0x8926) / vntag)[:19]) == "short_frame"


def test_supported_linktypes_and_reasons():
    assert {0, 1, 9, 12, 14, 101, 108, 113, 228, 229, 276} <= SUPPORTED_LINKTYPES
    assert {"short_frame", "non_ip", "unsupported_linktype", "bad_ip_version", "short_ipv4_header",
            "bad_ipv4_ihl", "short_ipv6_header", "bad_ext_header"} <= set(REASONS)


def test_memoryview_and_bytearray_input():
    frame = bytes(eth() / Dot1Q(vlan=4) / v6_udp())
    assert decode(memoryview(frame), 1) == decode(bytearray(frame), 1) == decode(frame, 1)


# --- robustness --------------------------------------------------------------------------------

def _valid_fixtures():
    tcp4, udp6 = bytes(v4_tcp()), bytes(v6_udp())
    ext6 = bytes(IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(m=1) / IPv6ExtHdrDestOpt() / TCP())
    return [
        (bytes(eth() / v4_tcp()), 1),
        (bytes(eth() / Dot1Q(vlan=5) / v6_udp()), 1),
        (bytes(eth(type=0x88A8) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IP(options=b"\1" * 4) / UDP()), 1),
        (bytes(eth(type=0x8847) / MPLS(s=0) / MPLS(s=1) / IPv6() / ICMPv6EchoRequest()), 1),
        (bytes(eth() / PPPoE() / PPP(proto=0x21) / IP(flags="MF") / TCP()), 1),
        (bytes(dot3() / snap(code=0x86DD)) + ext6, 1),
        (bytes(eth() / IPv6() / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=9)]) / UDP()), 1),
        (bytes(eth(type=0x8926)) + b"\0\0\0\0\x89\x03\0\0" + bytes(eth() / IP() / ICMP()), 1),
        (bytes(CookedLinux(proto=0x8100) / Dot1Q() / IP() / SCTP()), 113),
        (bytes(CookedLinuxV2(proto=0x86DD)) + ext6, 276),
        (tcp4, 101), (udp6, 12), (tcp4, 228), (ext6, 229),
        (b"\x02\0\0\0" + tcp4, 0), (b"\0\0\0\x1e" + udp6, 0), (b"\0\0\0\x18" + ext6, 108),
        (b"\xff\x03\x00\x21" + tcp4, 9), (b"\x57" + udp6, 9), (b"\x0f\x00\x86\xdd" + udp6, 104),
    ]


def test_fuzz_random_bytes_never_raise():
    rng = random.Random(20240601)
    linktypes = sorted(SUPPORTED_LINKTYPES) + [2, 105, 239, 65535]
    # Plausible prefixes steer random bytes into the deeper decoders.
    prefixes = [b"", b"\0" * 12 + b"\x08\x00\x45", b"\0" * 12 + b"\x86\xdd\x60", b"\0" * 12 + b"\x81\x00",
                b"\0" * 12 + b"\x88\x47", b"\0" * 12 + b"\x88\x64\x11\x00\0\0\0\0",
                b"\0" * 12 + b"\x00\x30\xaa\xaa\x03", b"\0" * 12 + b"\x89\x26", b"\0" * 12 + b"\x89\x03",
                b"\x45", b"\x60\0\0\0\0\0\x00", b"\x60\0\0\0\0\0\x2c", b"\xff\x03", b"\0" * 12 + b"\x88\xe7"]
    for _ in range(20000):
        frame = rng.choice(prefixes) + rng.randbytes(rng.randrange(0, 120))
        result = decode(frame, rng.choice(linktypes))
        check_shape(result)


def test_fuzz_truncations_and_mutations_never_raise():
    rng = random.Random(7)
    for frame, linktype in _valid_fixtures():
        assert not isinstance(dec(frame, linktype), str), (frame.hex(), linktype)
        for cut in range(len(frame) + 1):
            check_shape(dec(frame[:cut], linktype))
        for _ in range(200):
            mutated = bytearray(frame)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            check_shape(dec(bytes(mutated), linktype))


def test_deep_nesting_does_not_recurse():
    # MPLS -> control word -> Ethernet -> PPPoE -> PPP MPLS -> ... thousands of times, then IPv4.
    unit = (bytes(MPLS(label=1, s=1)) + b"\0\0\0\0" + b"\0" * 12 + b"\x88\x64"
            + b"\x11\x00\x00\x01\x00\x00" + b"\x02\x81")
    frame = bytes(eth(type=0x8847)) + unit * 2500 + bytes(MPLS(s=1)) + bytes(v4_tcp())  # ~70 kB
    assert dec(frame)[:5] == (a4(A4), a4(B4), 40000, 443, 6)
    tags = b"\x00\x01\x81\x00" * 4999 + b"\x00\x01\x08\x00"
    assert dec(bytes(eth(type=0x8100)) + tags + bytes(v4_tcp()))[P_VLAN] == 1


# --- real captures (../shared) -----------------------------------------------------------------

REAL_FILES = [
    "zeek__mixed-vlan-mpls.pcap", "zeek__pppoe.pcap", "zeek__pbb.pcap", "zeek__snap-tcp.pcap",
    "ndpi__dns_fragmented.pcap", "zeek__ipv6-http-atomic-frag.pcap", "ndpi__syslog.pcap",
    "zeek__ipv6-mobility-dst-opts.pcap", "ndpi__ah.pcap", "zeek__communityid__sctp.pcap",
    "ndpi__alexa-app.pcap", "ndpi__capwap.pcap", "ndpi__android.pcap",
    "ndpi__vxlan.pcap", "zeek__ipv6-hbh-routing0.pcap", "zeek__raw_packets.pcap",
    # other link types: null, raw, raw IPv4, SLL, SLL2, PPP (one with Cisco HDLC framing), C-HDLC
    "ndpi__nats.pcap", "ndpi__bjnp.pcap", "zeek__dns__dns_extended_rcode.pcap", "ndpi__http2.pcap",
    "zeek__linux_dlt_sll2.pcap", "zeek__ppp__quic-interop-retry.pcap", "ndpi__BGP_Cisco_hdlc_slarp.pcap",
    "ndpi__BGP_redist.pcap",
]


def read_pcap(path):
    """(linktype, [frame bytes]) of a classic pcap file."""
    data = path.read_bytes()
    if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise ValueError("not a classic pcap: %s" % path)
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(order + "I", data, off + 8)[0]
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return linktype, frames


def scapy_expectation(frame, linktype):
    """(src, dst, upper-layer proto) of the outermost IP header as scapy dissects it, or None."""
    ext = (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrFragment, IPv6ExtHdrDestOpt, AH, _MobilityHeader)
    for layer in conf.l2types[linktype](frame).iterpayloads():
        if type(layer) is IP:
            return a4(layer.src), a4(layer.dst), layer.proto
        if type(layer) is IPv6:
            nh, inner = layer.nh, layer.payload
            while isinstance(inner, ext):
                nh, inner = inner.nh, inner.payload
            return a6(layer.src), a6(layer.dst), nh
    return None


@pytest.mark.shared
def test_real_captures_against_scapy():
    real = SHARED / "pcaps" / "real"
    if not real.is_dir():
        pytest.skip("../shared/pcaps/real is absent")
    for name in REAL_FILES:
        linktype, frames = read_pcap(real / name)
        decoded = [decode(frame, linktype) for frame in frames]
        for result in decoded:
            check_shape(result)
        # These captures hold only IP traffic apart from ARP/LLC/PPPoE discovery and the like.
        assert all(r == "non_ip" or not isinstance(r, str) for r in decoded), name
        assert any(not isinstance(r, str) for r in decoded), name
        if linktype not in conf.l2types:
            continue
        for index, frame in enumerate(frames[:300]):
            expected = scapy_expectation(frame, linktype)
            got = decoded[index]
            if expected is not None:
                assert not isinstance(got, str) and got[:2] + (got[P_PROTO],) == expected, (name, index, got)
            elif linktype == LINKTYPE_ETHERNET:
                assert isinstance(got, str), (name, index, got)


def test_ipv6_mobility_header_is_the_protocol():
    from scapy.layers.l2 import Ether as _E
    from scapy.layers.inet6 import IPv6 as _I6
    frame = bytes(_E(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                  _I6(src="2001:db8::1", dst="2001:db8::2", nh=135) / (b"\x3b\x01\x05\x00" + bytes(12)))
    p = decode(frame, 1)
    assert p[P_PROTO] == 135 and p[P_SPORT] == p[P_DPORT] == 0
