"""Packet decoder: one captured frame (bytes) to the fields a flow meter needs; pure, never raises."""
from struct import Struct

# The pcap LINKTYPE_* values and the protocol numbers the compiled kernels share (re-exported).
from myason.kernels.constants import (AF_INET6_BSD, ARPHRD_NETLINK, IPV6_EXT_HEADERS,  # noqa: F401
                                     LINKTYPE_C_HDLC, LINKTYPE_ETHERNET, LINKTYPE_IPV4,
                                     LINKTYPE_IPV6, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
                                     LINKTYPE_LOOP, LINKTYPE_NULL, LINKTYPE_PPP, LINKTYPE_PPP_HDLC,
                                     LINKTYPE_RAW, RAW_IP_LINKTYPES, VLAN_TPIDS)

_RAW_IP_LINKTYPES = frozenset(RAW_IP_LINKTYPES)
SUPPORTED_LINKTYPES = frozenset((
    LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_PPP, LINKTYPE_PPP_HDLC, LINKTYPE_C_HDLC,
    LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2,
)) | _RAW_IP_LINKTYPES

# Positions in the tuple decode() returns.
# (src, dst, sport, dport, proto, tos, ip_len, tcp_flags, ip_version, vlan, frag)
(P_SRC, P_DST, P_SPORT, P_DPORT, P_PROTO, P_TOS, P_IP_LEN, P_TCP_FLAGS, P_IP_VERSION, P_VLAN,
 P_FRAG) = range(11)

# Failure reasons decode() returns instead of a tuple (counter names).
REASONS = (
    "short_frame",           # the link layer or an encapsulation header is cut off
    "non_ip",                # ARP, STP, LLC, LLDP, PPPoE discovery, IPX...: counted, not an error
    "unsupported_linktype",
    "bad_ip_version",
    "short_ipv4_header",
    "bad_ipv4_ihl",
    "short_ipv6_header",
    "bad_ext_header",        # IPv6 extension chain ends in the captured data before the upper layer is known
)

# Fast-path layouts: ethertype, IPv4 header, ports (54 bytes); IPv4 header + ports; IPv6 header + ports.
_ETH_IP4_PORTS = Struct("!12xHBBHHHxB2x4s4sHH").unpack_from
_IP4_PORTS = Struct("!BBHHHxB2x4s4sHH").unpack_from
_IP6_PORTS = Struct("!IHBx16s16sHH").unpack_from
_IP4 = Struct("!BBHHHxB2x4s4s").unpack_from
_IP6 = Struct("!IHBx16s16s").unpack_from
_HH = Struct("!HH").unpack_from
_FRAG6 = Struct("!2xHI").unpack_from
_U32_BE = Struct("!I").unpack_from
_U32_LE = Struct("<I").unpack_from

_VLAN_TPIDS = frozenset(VLAN_TPIDS)
_IPV6_EXT = frozenset(IPV6_EXT_HEADERS)     # the extension headers walked (see constants)
_AF_INET6_BSD = frozenset(AF_INET6_BSD)
# PPP protocol -> ethertype; 0x0281/0x0283 are MPLS unicast/multicast.
_PPP_TO_ETHERTYPE = {0x0021: 0x0800, 0x0057: 0x86DD, 0x0281: 0x8847, 0x0283: 0x8848}
_ARPHRD_NETLINK = ARPHRD_NETLINK
_ZERO3 = (0, 0, 0)


def decode(frame, linktype):
    """Decode a bytes-like frame to the P_* tuple, or return a REASONS string; never raises."""
    # Fast path: Ethernet [+ one 802.1Q tag] -> unfragmented IPv4 without options, or IPv6 without
    # extension headers -> TCP/UDP, read with one unpack that includes the ports. Anything it does
    # not fully understand falls through to the general decoder, which gives the same answers.
    if linktype == 1:
        n = len(frame)
        if n >= 54:
            et, vihl, tos, ip_len, ident, fragw, proto, src, dst, sport, dport = _ETH_IP4_PORTS(frame, 0)
            if et == 0x0800:
                if vihl == 0x45 and not fragw & 0x3FFF:
                    if proto == 6:
                        if ip_len >= 40:
                            return (src, dst, sport, dport, 6, tos, ip_len, frame[47], 4, 0, 0)
                    elif proto == 17:
                        if ip_len >= 28:
                            return (src, dst, sport, dport, 17, tos, ip_len, 0, 4, 0, 0)
                return _ipv4(frame, 14, 0)
            off = 14
            vlan = 0
            if et == 0x8100:
                # The "IPv4 header" just unpacked is really the tag: TCI, then the inner ethertype.
                vlan = ((vihl << 8) | tos) & 0xFFF
                et = ip_len
                off = 18
                if et == 0x0800:
                    vihl, tos, ip_len, ident, fragw, proto, src, dst, sport, dport = _IP4_PORTS(frame, 18)
                    if vihl == 0x45 and not fragw & 0x3FFF:
                        if proto == 6:
                            if ip_len >= 40 and n >= 58:
                                return (src, dst, sport, dport, 6, tos, ip_len, frame[51], 4, vlan, 0)
                        elif proto == 17:
                            if ip_len >= 28:
                                return (src, dst, sport, dport, 17, tos, ip_len, 0, 4, vlan, 0)
                    return _ipv4(frame, 18, vlan)
            if et == 0x86DD:
                if n >= off + 44:
                    vtcfl, plen, nh, src, dst, sport, dport = _IP6_PORTS(frame, off)
                    if vtcfl >> 28 == 6:
                        if nh == 6:
                            if plen >= 20 and n >= off + 60:
                                return (src, dst, sport, dport, 6, (vtcfl >> 20) & 0xFF, plen + 40,
                                        frame[off + 53], 6, vlan, 0)
                        elif nh == 17:
                            if plen >= 8 and n >= off + 48:
                                return (src, dst, sport, dport, 17, (vtcfl >> 20) & 0xFF, plen + 40,
                                        0, 6, vlan, 0)
                return _ipv6(frame, off, vlan)
            return _ether(frame, off, et, vlan)
    return _decode_link(frame, linktype)


def _decode_link(frame, linktype):
    """General decoder: strip the link layer named by linktype, then decode IP."""
    n = len(frame)
    if linktype == 1:
        if n < 14:
            return "short_frame"
        return _ether(frame, 14, (frame[12] << 8) | frame[13], 0)
    if linktype in _RAW_IP_LINKTYPES:
        if not n:
            return "short_frame"
        version = frame[0] >> 4
        if version == 4:
            return _ipv4(frame, 0, 0)
        if version == 6:
            return _ipv6(frame, 0, 0)
        return "bad_ip_version"
    if linktype == LINKTYPE_IPV4:
        return _ipv4(frame, 0, 0) if n else "short_frame"
    if linktype == LINKTYPE_IPV6:
        return _ipv6(frame, 0, 0) if n else "short_frame"
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return "short_frame"
        if (frame[2] << 8 | frame[3]) == _ARPHRD_NETLINK:
            return "non_ip"
        return _ether(frame, 16, (frame[14] << 8) | frame[15], 0)
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return "short_frame"
        if (frame[8] << 8 | frame[9]) == _ARPHRD_NETLINK:
            return "non_ip"
        return _ether(frame, 20, (frame[0] << 8) | frame[1], 0)
    if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if n < 4:
            return "short_frame"
        if linktype == LINKTYPE_LOOP:
            family = _U32_BE(frame, 0)[0]
        else:
            # The header is in the capturing host's byte order, which the file does not tell us;
            # address families are small, so a value above 16 bits means the other order.
            family = _U32_LE(frame, 0)[0]
            if family > 0xFFFF:
                family = _U32_BE(frame, 0)[0]
        if family == 2:
            return _ipv4(frame, 4, 0)
        if family in _AF_INET6_BSD:
            return _ipv6(frame, 4, 0)
        return "non_ip"
    if linktype == LINKTYPE_PPP or linktype == LINKTYPE_PPP_HDLC:
        if n < 2:
            return "short_frame"
        if frame[0] == 0xFF and frame[1] == 0x03:
            et, off = _ppp_protocol(frame, 2)
        elif (frame[0] == 0x0F or frame[0] == 0x8F) and frame[1] == 0:
            # Cisco HDLC framing inside a PPP-labelled capture (routers do this).
            if n < 4:
                return "short_frame"
            et, off = (frame[2] << 8) | frame[3], 4
        else:
            et, off = _ppp_protocol(frame, 0)
        if et < 0:
            return "short_frame"
        return _ether(frame, off, et, 0) if et else "non_ip"
    if linktype == LINKTYPE_C_HDLC:
        if n < 4:
            return "short_frame"
        return _ether(frame, 4, (frame[2] << 8) | frame[3], 0)
    return "unsupported_linktype"


def _ppp_protocol(frame, off):
    """(ethertype, offset after the PPP protocol field); ethertype 0 if not IP/MPLS, -1 if cut off."""
    n = len(frame)
    if off >= n:
        return -1, off
    first = frame[off]
    if first & 1:
        # Protocol-field compression (RFC 1661 6.5): a one-byte protocol has an odd low byte.
        protocol, off = first, off + 1
    else:
        if off + 2 > n:
            return -1, off
        protocol, off = (first << 8) | frame[off + 1], off + 2
    return _PPP_TO_ETHERTYPE.get(protocol, 0), off


def _ether(frame, off, et, vlan):
    """Decode from an ethertype on: VLANs, MPLS, PPPoE, 802.1ah, VN-Tag, FabricPath, LLC/SNAP, then IP.

    A loop rather than recursion so that adversarial nesting cannot exhaust the stack.
    """
    n = len(frame)
    while True:
        if et == 0x0800:
            return _ipv4(frame, off, vlan)
        if et == 0x86DD:
            return _ipv6(frame, off, vlan)
        if et in _VLAN_TPIDS:
            if off + 4 > n:
                return "short_frame"
            tci, et = _HH(frame, off)
            off += 4
            if not vlan:
                vlan = tci & 0xFFF
            continue
        if et == 0x8847 or et == 0x8848:
            while True:
                if off + 4 > n:
                    return "short_frame"
                bottom = frame[off + 2] & 1
                off += 4
                if bottom:
                    break
            if off >= n:
                return "short_frame"
            version = frame[off] >> 4
            if version == 4:
                et = 0x0800
            elif version == 6:
                et = 0x86DD
            elif version == 0 and off + 18 <= n:
                # Ethernet pseudowire with a control word (RFC 4448): 4-byte word, then Ethernet.
                et = (frame[off + 16] << 8) | frame[off + 17]
                off += 18
            else:
                return "non_ip"
            continue
        if et == 0x8864:
            # PPPoE session: ver/type, code, session id, length, then the PPP protocol.
            if off + 6 > n:
                return "short_frame"
            et, off = _ppp_protocol(frame, off + 6)
            if et < 0:
                return "short_frame"
            if not et:
                return "non_ip"
            continue
        if et == 0x88E7:
            # 802.1ah provider backbone bridging: I-TAG (4 bytes), then the customer's Ethernet header.
            if off + 18 > n:
                return "short_frame"
            et = (frame[off + 16] << 8) | frame[off + 17]
            off += 18
            continue
        if et == 0x8926:
            # VN-Tag (Cisco/IEEE 802.1Qbh): 4 bytes of tag, then the next ethertype.
            if off + 6 > n:
                return "short_frame"
            et = (frame[off + 4] << 8) | frame[off + 5]
            off += 6
            continue
        if et == 0x8903:
            # Cisco FabricPath: FTag/TTL (2 bytes), then the classical Ethernet header.
            if off + 16 > n:
                return "short_frame"
            et = (frame[off + 14] << 8) | frame[off + 15]
            off += 16
            continue
        if et <= 1500:
            # 802.3 length field: LLC follows; only SNAP with an ethertype can carry IP.
            if off + 3 > n:
                return "short_frame"
            if frame[off] != 0xAA or frame[off + 1] != 0xAA or frame[off + 2] != 3:
                return "non_ip"
            if off + 8 > n:
                return "short_frame"
            if frame[off + 3] or frame[off + 4] or frame[off + 5] not in (0, 0xF8):
                return "non_ip"   # an organisation-specific protocol id (CDP, ...), not an ethertype
            et = (frame[off + 6] << 8) | frame[off + 7]
            off += 8
            if et <= 1500:
                return "non_ip"
            continue
        return "non_ip"


def _ipv4(frame, off, vlan):
    """Decode an IPv4 packet starting at off."""
    n = len(frame)
    if off >= n:
        return "short_ipv4_header"
    vihl = frame[off]
    if vihl >> 4 != 4:
        return "bad_ip_version"
    if off + 20 > n:
        return "short_ipv4_header"
    ihl = (vihl & 15) << 2
    if ihl < 20:
        return "bad_ipv4_ihl"
    t = off + ihl
    if t > n:
        return "short_ipv4_header"
    _, tos, ip_len, ident, fragw, proto, src, dst = _IP4(frame, off)
    if ip_len:
        end = off + ip_len
        if end > n:
            end = n
    else:
        # TSO/GSO captures carry total length 0: the captured bytes are the best we have.
        ip_len = n - off
        end = n
    offset = (fragw & 0x1FFF) << 3
    if offset:
        return (src, dst, 0, 0, proto, tos, ip_len, 0, 4, vlan, (ident, offset, bool(fragw & 0x2000)))
    sport, dport, flags = _transport(frame, t, end, proto)
    frag = (ident, 0, True) if fragw & 0x2000 else 0
    return (src, dst, sport, dport, proto, tos, ip_len, flags, 4, vlan, frag)


def _ipv6(frame, off, vlan):
    """Decode an IPv6 packet starting at off, walking the extension-header chain."""
    n = len(frame)
    if off >= n:
        return "short_ipv6_header"
    if frame[off] >> 4 != 6:
        return "bad_ip_version"
    if off + 40 > n:
        return "short_ipv6_header"
    vtcfl, plen, nh, src, dst = _IP6(frame, off)
    tc = (vtcfl >> 20) & 0xFF
    t = off + 40
    if plen:
        ip_len = 40 + plen
        end = t + plen
        if end > n:
            end = n
    else:
        ip_len = n - off
        end = n
    frag = 0
    while nh in _IPV6_EXT:
        if t + 2 > end:
            return "bad_ext_header"
        if nh == 44:
            if t + 8 > end:
                return "bad_ext_header"
            fragw, ident = _FRAG6(frame, t)
            offset = fragw & 0xFFF8
            nh = frame[t]
            t += 8
            if offset or fragw & 1:
                frag = (ident, offset, bool(fragw & 1))
                if offset:
                    return (src, dst, 0, 0, nh, tc, ip_len, 0, 6, vlan, frag)
            continue
        if nh == 51:
            size = (frame[t + 1] + 2) << 2
        else:
            size = (frame[t + 1] + 1) << 3
            if nh == 0 and not plen and t == off + 40:
                jumbo = _jumbo_length(frame, t + 2, min(t + size, end))
                if jumbo:
                    ip_len = 40 + jumbo
        nh = frame[t]
        t += size
    sport, dport, flags = _transport(frame, t, end, nh)
    return (src, dst, sport, dport, nh, tc, ip_len, flags, 6, vlan, frag)


def _jumbo_length(frame, p, stop):
    """The Jumbo Payload option's length (RFC 2675) among hop-by-hop options in [p, stop), or 0."""
    while p < stop:
        kind = frame[p]
        if kind == 0:   # Pad1 has no length byte
            p += 1
            continue
        if p + 2 > stop:
            return 0
        size = frame[p + 1]
        if kind == 0xC2 and size == 4 and p + 6 <= stop:
            return _U32_BE(frame, p + 2)[0]
        p += 2 + size
    return 0


def _transport(frame, t, end, proto):
    """(sport, dport, tcp_flags) of the transport header at t; zeros if it is cut before end."""
    # Minimum header sizes as softflowd checks them: a shorter header still counts, with ports 0.
    if proto == 6:
        if t + 20 <= end:
            sport, dport = _HH(frame, t)
            return sport, dport, frame[t + 13]
    elif proto == 17 or proto == 136:
        if t + 8 <= end:
            sport, dport = _HH(frame, t)
            return sport, dport, 0
    elif proto == 132:
        if t + 12 <= end:
            sport, dport = _HH(frame, t)
            return sport, dport, 0
    elif proto == 1 or proto == 58:
        if t + 2 <= end:
            return 0, (frame[t] << 8) | frame[t + 1], 0
    return _ZERO3
