"""The TPACKET_V3 block walker of the agent's live capture (myason.agent.ring), nogil.

A PACKET_RX_RING of TPACKET_V3 hands whole blocks to user space: a block descriptor
(struct tpacket_block_desc) then num_pkts frames, each a struct tpacket3_hdr followed, at tp_mac,
by tp_snaplen captured bytes; tp_next_offset chains them. walk_blocks() walks the blocks the
caller found ready (block_status & TP_STATUS_USER) and decodes every frame into a Chunk's arrays
(myason.kernels.decode's row layout) exactly as the reference engine decodes the frame LiveSource would have
built from the same socket: kernel timestamp tp_sec + tp_nsec * 1e-9, the VLAN tag the kernel took
out of the frame (hv1.tp_vlan_tci/tp_vlan_tpid under TP_STATUS_VLAN_VALID) counted as if it were
back in place, and on cooked (SOCK_DGRAM) devices the SLL header made from the sockaddr_ll that
follows the tpacket3_hdr. Frames it does not fully understand are left SLOW with the offset of
their header, and the caller rebuilds their bytes for the reference decode(). Returning a block
to the kernel (block_status = TP_STATUS_KERNEL) is the caller's: it must come after the slow
frames were copied out.

Layouts (include/uapi/linux/if_packet.h, native byte order):
  tpacket_block_desc: version u32 @0, offset_to_priv u32 @4, then tpacket_hdr_v1:
      block_status u32 @8, num_pkts u32 @12, offset_to_first_pkt u32 @16, blk_len u32 @20,
      seq_num u64 @24, ts_first_pkt @32, ts_last_pkt @40 (48 bytes)
  tpacket3_hdr: tp_next_offset u32 @0, tp_sec @4, tp_nsec @8, tp_snaplen @12, tp_len @16,
      tp_status @20, tp_mac u16 @24, tp_net u16 @26, hv1: tp_rxhash u32 @28, tp_vlan_tci u32 @32,
      tp_vlan_tpid u16 @36 (48 bytes, TPACKET_ALIGN'ed), then struct sockaddr_ll @48:
      sll_family u16 @48, sll_protocol be16 @50, sll_ifindex @52, sll_hatype u16 @56,
      sll_pkttype u8 @58, sll_halen u8 @59, sll_addr[8] @60
"""
import numpy as np

from myason.kernels import decode as fd
from myason.kernels.constants import (ARPHRD_NETLINK, ETHERTYPE_IPV4, ETHERTYPE_IPV6, LINKTYPE_ETHERNET,
                                      LINKTYPE_LINUX_SLL, VLAN_TPIDS)
from myason.kernels.registry import helper, kernel

# Block and frame header fields.
BLOCK_STATUS, BLOCK_NUM_PKTS, BLOCK_FIRST = 8, 12, 16
BLOCK_DESC_LEN = 48
HDR_NEXT, HDR_SEC, HDR_NSEC, HDR_SNAPLEN, HDR_LEN, HDR_STATUS, HDR_MAC = 0, 4, 8, 12, 16, 20, 24
HDR_VLAN_TCI, HDR_VLAN_TPID = 32, 36
HDR_SLL = 48                      # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
SLL_PROTOCOL, SLL_HATYPE, SLL_PKTTYPE, SLL_HALEN, SLL_ADDR = 2, 8, 10, 11, 12
TPACKET3_HDRLEN = HDR_SLL + 20    # + sizeof(struct sockaddr_ll): the least a frame takes
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
SLL_HDR_LEN = 16                  # the SLL header LiveSource puts in front of cooked frames
VLAN_TAG_LEN = 4


@helper(inline=True)
def _u16(b, p, little):
    if little:
        return (np.int64(b[p + 1]) << 8) | b[p]
    return (np.int64(b[p]) << 8) | b[p + 1]


@helper(inline=True)
def _digest(b, h, p, snap, little):
    """A 64-bit digest of a frame's kernel timestamp, lengths, VLAN tag and first 64 bytes.

    The same skb gives the same digest on every socket it reaches: a reload's two capture
    sockets recognise the frames both of them got with it.
    """
    x = np.uint64(fd._u32(b, h + HDR_SEC, little)) << np.uint64(32)
    x |= np.uint64(fd._u32(b, h + HDR_NSEC, little))
    x ^= (np.uint64(fd._u32(b, h + HDR_LEN, little)) << np.uint64(32)) | np.uint64(snap)
    x *= np.uint64(0x9E3779B97F4A7C15)
    x ^= np.uint64(fd._u32(b, h + HDR_VLAN_TCI, little)) | (np.uint64(_u16(b, h + HDR_VLAN_TPID, little))
                                                             << np.uint64(32))
    m = snap if snap < 64 else 64
    for j in range(m):
        x = (x ^ np.uint64(b[p + j])) * np.uint64(0x100000001B3)
    x ^= x >> np.uint64(29)
    return x


@helper(inline=True)
def _tagged(b, p, n, tpid, tci, i, kw, iplen, tflags, vlans):
    """An Ethernet frame whose outer tag the kernel took out: decoded as if it were back."""
    if not fd._member(tpid, VLAN_TPIDS) or n < 14:
        return False
    et = (b[p + 12] << 8) | b[p + 13]
    vlan = tci & 0xFFF
    if et == ETHERTYPE_IPV4:
        return fd._ipv4(b, p + 14, p + n, vlan, i, kw, iplen, tflags, vlans)
    if et == ETHERTYPE_IPV6:
        return fd._ipv6(b, p + 14, p + n, vlan, i, kw, iplen, tflags, vlans)
    return False


@helper(inline=True)
def _cooked(b, h, p, n, little, i, kw, iplen, tflags, vlans):
    """A cooked frame (network header at p): the protocol and device type are in its sockaddr_ll."""
    sll = h + HDR_SLL
    if _u16(b, sll + SLL_HATYPE, little) == ARPHRD_NETLINK:
        return False
    et = (b[sll + SLL_PROTOCOL] << 8) | b[sll + SLL_PROTOCOL + 1]
    if et == ETHERTYPE_IPV4:
        return fd._ipv4(b, p, p + n, 0, i, kw, iplen, tflags, vlans)
    if et == ETHERTYPE_IPV6:
        return fd._ipv6(b, p, p + n, 0, i, kw, iplen, tflags, vlans)
    return False


@kernel("UniTuple(int64, 3)(uint8[::1], int64[::1], int64, boolean, int64, boolean, float64[::1], "
        "uint64[:, ::1], int64[::1], uint8[::1], uint16[::1], uint8[::1], int64[::1], int64[::1], "
        "int64[::1], uint64[::1])")
def walk_blocks(b, blocks, lt, little, ifindex, digest, ts, kw, iplen, tflags, vlans, status, offs,
                lens, hdrs, digests):
    """Decode every frame of the ring blocks at offsets `blocks` into rows 0.. of the arrays.

    lt: the source's link type (LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL for cooked). Per row: timestamp, key
    words (ifindex in word 5), IP length, TCP flags, VLAN, status (OK or SLOW), the frame's
    offset and captured length in b, its tpacket3_hdr's offset, and with `digest` its digest.
    The arrays hold at least the blocks' num_pkts rows. Returns (frames, bytes, truncated):
    bytes are those of the frames LiveSource would have built (tag and SLL header included),
    truncated the frames cut below their length on the wire.
    """
    i = 0
    nbytes = 0
    truncated = 0
    for k in range(blocks.shape[0]):
        blk = blocks[k]
        npk = fd._u32(b, blk + BLOCK_NUM_PKTS, little)
        h = blk + fd._u32(b, blk + BLOCK_FIRST, little)
        for _ in range(npk):
            sec = fd._u32(b, h + HDR_SEC, little)
            nsec = fd._u32(b, h + HDR_NSEC, little)
            snap = fd._u32(b, h + HDR_SNAPLEN, little)
            wire = fd._u32(b, h + HDR_LEN, little)
            st = fd._u32(b, h + HDR_STATUS, little)
            p = h + _u16(b, h + HDR_MAC, little)
            ts[i] = np.float64(sec) + np.float64(nsec) * 1e-9
            offs[i] = p
            lens[i] = snap
            hdrs[i] = h
            kw[i, 5] = ifindex
            if snap < wire:
                truncated += 1
            tagged = (st & TP_STATUS_VLAN_VALID) != 0
            if lt == LINKTYPE_ETHERNET:
                if tagged:
                    tpid = _u16(b, h + HDR_VLAN_TPID, little) if st & TP_STATUS_VLAN_TPID_VALID else VLAN_TPIDS[0]
                    ok = _tagged(b, p, snap, tpid, fd._u32(b, h + HDR_VLAN_TCI, little), i, kw, iplen,
                                 tflags, vlans)
                    nbytes += snap + VLAN_TAG_LEN
                else:
                    ok = fd._frame(b, p, snap, lt, i, kw, iplen, tflags, vlans)
                    nbytes += snap
            elif lt == LINKTYPE_LINUX_SLL:
                if tagged:
                    ok = False      # the tag goes between SLL header and payload: decode() reads it
                    nbytes += snap + SLL_HDR_LEN + VLAN_TAG_LEN
                else:
                    ok = _cooked(b, h, p, snap, little, i, kw, iplen, tflags, vlans)
                    nbytes += snap + SLL_HDR_LEN
            else:
                ok = fd._frame(b, p, snap, lt, i, kw, iplen, tflags, vlans)
                nbytes += snap
            status[i] = 0 if ok else 1
            if digest:
                digests[i] = _digest(b, h, p, snap, little)
            i += 1
            h += fd._u32(b, h + HDR_NEXT, little)
    return i, nbytes, truncated
