"""Packet and capture-format constants shared by the reference code and the compiled kernels.

Defined once here, in the low layer both sides may import: the reference decoder
(myason.agent.decode), the pcap reader (myason.agent.pcapfile) and the flow cache
(myason.agent.cache) import them from this module, and so do the kernels of myason.kernels,
into whose machine code numba freezes them. Sets the kernels test membership in are tuples
(numba compiles a loop over a global tuple); the reference modules make frozensets of them.
Editing this file changes the kernels' source hash, so their cache is rebuilt (registry).
"""

# pcap LINKTYPE_* values
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_PPP_HDLC = 50      # PPP in HDLC-like framing (ff 03 prefix)
LINKTYPE_C_HDLC = 104       # Cisco HDLC: address, control, ethertype
# DLT_RAW is 12 on most BSDs and 14 on OpenBSD; some pcap writers store the DLT verbatim.
RAW_IP_LINKTYPES = (LINKTYPE_RAW, 12, 14)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# 802.1Q, 802.1ad and the pre-standard QinQ tags.
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100, 0x9200, 0x9300)
# Linux SLL/SLL2 hardware type of netlink captures: not IP.
ARPHRD_NETLINK = 824
# BSD null/loop address families: AF_INET everywhere; AF_INET6 of NetBSD/OpenBSD, FreeBSD, Darwin.
AF_INET_BSD = 2
AF_INET6_BSD = (24, 28, 30)

# IPv6 extension headers walked to find the upper-layer protocol; ESP (50) and No Next Header (59)
# end the walk. Mobility (135) and HIP (139) are not walked: they carry their message themselves
# and are followed by No Next Header, so they are the protocol an operator wants to see (as
# softflowd does).
IPV6_EXT_HEADERS = (0, 43, 44, 51, 60, 140)

# TCP flag bits the flow cache's aging rules look at.
TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04

# A classic-pcap record longer than this is corruption, not a packet (libpcap's bound).
PCAP_MAX_RECORD = 256 * 1024
