"""Kernels of the fast path's phase 1: classic-pcap record walk and common-case frame decoding.

They fill per-packet arrays (myason.agent.fastdecode.Chunk) for the frames they fully
understand: Ethernet [+ one VLAN tag], raw IP, BSD null/loop and Linux SLL/SLL2 carrying
unfragmented IPv4 (options allowed) or IPv6 without extension headers. Every other frame is
marked SLOW and decoded by the reference decode() in Python (fastdecode.finish_slow), so exotic
encapsulations, fragments and extension chains keep the reference behaviour exactly.

Key words (uint64, per packet): src hi, src lo, dst hi, dst lo (IPv4 in the lo word, hi 0),
sport << 48 | dport << 32 | proto << 24 | tos << 16 | ip version, ifindex.
"""
import numpy as np

from myason.kernels.constants import (AF_INET6_BSD, AF_INET_BSD, ARPHRD_NETLINK, ETHERTYPE_IPV4,
                                      ETHERTYPE_IPV6, IPV6_EXT_HEADERS, LINKTYPE_ETHERNET,
                                      LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
                                      LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP, LINKTYPE_NULL,
                                      PCAP_MAX_RECORD, RAW_IP_LINKTYPES, VLAN_TPIDS)
from myason.kernels.registry import RO_BYTES, helper, kernel, ro

# Chunk.status values.
OK, SLOW, REJECTED = 0, 1, 2
KEY_WORDS = 6


# -- kernels ----------------------------------------------------------------------------------

@helper(inline=True)
def _member(x, values):
    """x in the constant tuple values (numba unrolls the loop over a global tuple)."""
    for v in values:
        if x == v:
            return True
    return False


@helper(inline=True)
def _transport(b, t, end, proto):
    """(sport, dport, tcp flags) exactly as decode._transport."""
    if proto == 6:
        if t + 20 <= end:
            return (b[t] << 8) | b[t + 1], (b[t + 2] << 8) | b[t + 3], np.int64(b[t + 13])
    elif proto == 17 or proto == 136:
        if t + 8 <= end:
            return (b[t] << 8) | b[t + 1], (b[t + 2] << 8) | b[t + 3], 0
    elif proto == 132:
        if t + 12 <= end:
            return (b[t] << 8) | b[t + 1], (b[t + 2] << 8) | b[t + 3], 0
    elif proto == 1 or proto == 58:
        if t + 2 <= end:
            return 0, (b[t] << 8) | b[t + 1], 0
    return 0, 0, 0


@helper(inline=True)
def _be64(b, p):
    r = np.uint64(0)
    for j in range(8):
        r = (r << np.uint64(8)) | np.uint64(b[p + j])
    return r


@helper(inline=True)
def _misc(sport, dport, proto, tos, version):
    return ((np.uint64(sport) << np.uint64(48)) | (np.uint64(dport) << np.uint64(32))
            | (np.uint64(proto) << np.uint64(24)) | (np.uint64(tos) << np.uint64(16))
            | np.uint64(version))


@helper(inline=True)
def _ipv4(b, q, end, vlan, i, kw, iplen, tflags, vlans):
    """Unfragmented IPv4 at q; False leaves the frame to decode()."""
    if q + 20 > end:
        return False
    vihl = b[q]
    if vihl >> 4 != 4:
        return False
    ihl = (vihl & 15) << 2
    t = q + ihl
    if ihl < 20 or t > end:
        return False
    if ((b[q + 6] << 8) | b[q + 7]) & 0x3FFF:
        return False   # a fragment: the processor attributes its ports in packet order
    ip_len = (b[q + 2] << 8) | b[q + 3]
    if ip_len:
        e = q + ip_len
        if e > end:
            e = end
    else:
        # TSO/GSO captures carry total length 0: the captured bytes, as decode() does.
        ip_len = end - q
        e = end
    proto = b[q + 9]
    sport, dport, fl = _transport(b, t, e, proto)
    src = np.uint64((b[q + 12] << 24) | (b[q + 13] << 16) | (b[q + 14] << 8) | b[q + 15])
    dst = np.uint64((b[q + 16] << 24) | (b[q + 17] << 16) | (b[q + 18] << 8) | b[q + 19])
    kw[i, 0] = 0
    kw[i, 1] = src
    kw[i, 2] = 0
    kw[i, 3] = dst
    kw[i, 4] = _misc(sport, dport, proto, b[q + 1], 4)
    iplen[i] = ip_len
    tflags[i] = fl
    vlans[i] = vlan
    return True


@helper(inline=True)
def _ipv6(b, q, end, vlan, i, kw, iplen, tflags, vlans):
    """IPv6 without extension headers at q; False leaves the frame to decode()."""
    if q + 40 > end or b[q] >> 4 != 6:
        return False
    nh = b[q + 6]
    if _member(nh, IPV6_EXT_HEADERS):
        return False
    plen = (b[q + 4] << 8) | b[q + 5]
    t = q + 40
    if plen:
        ip_len = 40 + plen
        e = t + plen
        if e > end:
            e = end
    else:
        ip_len = end - q
        e = end
    sport, dport, fl = _transport(b, t, e, nh)
    kw[i, 0] = _be64(b, q + 8)
    kw[i, 1] = _be64(b, q + 16)
    kw[i, 2] = _be64(b, q + 24)
    kw[i, 3] = _be64(b, q + 32)
    kw[i, 4] = _misc(sport, dport, nh, ((b[q] & 15) << 4) | (b[q + 1] >> 4), 6)
    iplen[i] = ip_len
    tflags[i] = fl
    vlans[i] = vlan
    return True


@helper(inline=True)
def _link(b, p, n, lt):
    """(IP offset, ethertype, vlan) behind the link layer of b[p:p+n]; ethertype 0: slow."""
    if lt == LINKTYPE_ETHERNET:
        if n < 14:
            return 0, 0, 0
        et = (b[p + 12] << 8) | b[p + 13]
        if _member(et, VLAN_TPIDS):
            if n < 18:
                return 0, 0, 0
            return p + 18, (b[p + 16] << 8) | b[p + 17], ((b[p + 14] << 8) | b[p + 15]) & 0xFFF
        return p + 14, et, 0
    if _member(lt, RAW_IP_LINKTYPES):
        if n < 1:
            return 0, 0, 0
        v = b[p] >> 4
        return p, ETHERTYPE_IPV4 if v == 4 else ETHERTYPE_IPV6 if v == 6 else 0, 0
    if lt == LINKTYPE_IPV4:
        return p, ETHERTYPE_IPV4, 0
    if lt == LINKTYPE_IPV6:
        return p, ETHERTYPE_IPV6, 0
    if lt == LINKTYPE_LINUX_SLL:
        if n < 16 or ((b[p + 2] << 8) | b[p + 3]) == ARPHRD_NETLINK:
            return 0, 0, 0
        return p + 16, (b[p + 14] << 8) | b[p + 15], 0
    if lt == LINKTYPE_LINUX_SLL2:
        if n < 20 or ((b[p + 8] << 8) | b[p + 9]) == ARPHRD_NETLINK:
            return 0, 0, 0
        return p + 20, (b[p] << 8) | b[p + 1], 0
    if lt == LINKTYPE_NULL or lt == LINKTYPE_LOOP:
        if n < 4:
            return 0, 0, 0
        be = (b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]
        if lt == LINKTYPE_LOOP:
            fam = be
        else:
            # Host byte order, unknown: a value above 16 bits means the other order.
            fam = (b[p + 3] << 24) | (b[p + 2] << 16) | (b[p + 1] << 8) | b[p]
            if fam > 0xFFFF:
                fam = be
        if fam == AF_INET_BSD:
            return p + 4, ETHERTYPE_IPV4, 0
        if _member(fam, AF_INET6_BSD):
            return p + 4, ETHERTYPE_IPV6, 0
    return 0, 0, 0


@helper(inline=True)
def _frame(b, p, n, lt, i, kw, iplen, tflags, vlans):
    """Decode the frame b[p:p+n] of link type lt into row i; False: leave it to decode()."""
    q, et, vlan = _link(b, p, n, lt)
    if et == ETHERTYPE_IPV4:
        return _ipv4(b, q, p + n, vlan, i, kw, iplen, tflags, vlans)
    if et == ETHERTYPE_IPV6:
        return _ipv6(b, q, p + n, vlan, i, kw, iplen, tflags, vlans)
    return False


@helper(inline=True)
def _u32(b, p, little):
    if little:
        return (np.int64(b[p + 3]) << 24) | (b[p + 2] << 16) | (b[p + 1] << 8) | b[p]
    return (np.int64(b[p]) << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]


@kernel("UniTuple(int64, 3)(%s, int64, int64, boolean, float64, int64, float64[::1], "
        "uint64[:, ::1], int64[::1], uint8[::1], uint16[::1], uint8[::1], int64[::1], int64[::1])"
        % RO_BYTES)
def walk_pcap(b, pos, end, little, div, lt, ts, kw, iplen, tflags, vlans, status, offs, lens):
    """Walk classic-pcap records from pos, decoding up to len(ts) frames.

    Returns (frames, next pos, stop): stop 0 = more to read, 1 = end of file, 2 = truncated
    record, 3 = absurd record length (pcapfile's truncated_records / bad_records rules).
    """
    cap = ts.shape[0]
    i = 0
    while i < cap:
        if pos + 16 > end:
            return i, pos, 2 if pos < end else 1
        incl = _u32(b, pos + 8, little)
        if incl > PCAP_MAX_RECORD:
            return i, pos, 3
        start = pos + 16
        if start + incl > end:
            return i, pos, 2
        sec = _u32(b, pos, little)
        frac = _u32(b, pos + 4, little)
        ts[i] = np.float64(sec) + np.float64(frac) / div
        offs[i] = start
        lens[i] = incl
        kw[i, 5] = 0
        status[i] = OK if _frame(b, start, incl, lt, i, kw, iplen, tflags, vlans) else SLOW
        pos = start + incl
        i += 1
    return i, pos, 1 if pos >= end else 0


@kernel("none(%s, %s, %s, %s, %s, uint64[:, ::1], int64[::1], uint8[::1], uint16[::1], uint8[::1])"
        % ((RO_BYTES,) + (ro("int64"),) * 4))
def decode_frames(b, offs, lens, lts, ifx, kw, iplen, tflags, vlans, status):
    """Decode frames given by offsets/lengths into b (pcapng, live batches)."""
    for i in range(offs.shape[0]):
        kw[i, 5] = ifx[i]
        status[i] = OK if _frame(b, offs[i], lens[i], lts[i], i, kw, iplen, tflags, vlans) else SLOW
