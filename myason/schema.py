"""The flow row: every column's name, type, order and meaning, for every layer.

A row is a list. The agent exports FIELDS (the WIRE columns; wire format v1, docs/protocol.md);
the collector appends COLLECTOR columns (when and from where the datagram came), then
enrichment appends ENRICH columns (docs/events.md). Writers store ROW_FIELDS or ENRICHED_ROW_FIELDS rows (a spool
written without enrichment holds ROW_FIELDS rows).

Everything that needs a column's position, type or default reads it here: the docs' field
tables are checked against COLUMNS by tests/unit/test_schema.py. A new column (NetFlow/IPFIX
fields, a distributed store's) is added here, at the end of its part, and nowhere else.
"""
from typing import NamedTuple


class Column(NamedTuple):
    name: str
    kind: type        # int, float or str
    part: str         # "wire", "collector" or "enrich"
    meaning: str      # the docs' text for the column (docs/protocol.md, docs/events.md)


def _part(part, *columns):
    return tuple(Column(name, kind, part, meaning) for name, kind, meaning in columns)


# Order matters: the wire format's row order and the CSV/JSON column order.
WIRE = _part(
    "wire",
    ("src_ip", str, "source address, text form (`192.0.2.1`, `2001:db8::1`)"),
    ("dst_ip", str, "destination address, text form"),
    ("src_port", int, "TCP/UDP/SCTP/UDP-Lite source port; 0 for other protocols"),
    ("dst_port", int, "destination port; for ICMP/ICMPv6 `type * 256 + code`; 0 otherwise"),
    ("proto", int, "IP protocol / IPv6 next header (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...)"),
    ("tos", int, "IPv4 ToS byte / IPv6 traffic class (part of the flow key)"),
    ("packets", int, "packets in the flow"),
    ("bytes", int, "sum of IP lengths (IP header + payload, no link header)"),
    ("first", float, "time of the first packet, Unix seconds"),
    ("last", float, "time of the last packet, Unix seconds"),
    ("tcp_flags", int, "OR of the TCP flags seen (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, "
                       "URG 0x20, ...); 0 if not TCP"),
    ("agent", str, "agent id of the exporter (the same as the body `agent`)"),
    ("if_name", str, "capture interface name (`\"\"` for a pcap replay without a name)"),
    ("in_if", int, "ifindex of the capture interface"),
    ("out_if", int, "ifindex of the route to `dst_ip` in the agent's routing table; 0 if unknown"),
    ("ip_version", int, "4 or 6"),
    ("vlan", int, "outermost 802.1Q VLAN id; 0 if untagged"),
    ("next_hop", str, "gateway of that route; `\"\"` if directly connected or unknown"),
    ("src_mask", int, "prefix length of the route covering `src_ip`; 0 if unknown"),
    ("dst_mask", int, "prefix length of the route covering `dst_ip`; 0 if unknown"),
    ("src_as", int, "AS number of `src_ip` from the ASN database; 0 if unknown"),
    ("dst_as", int, "AS number of `dst_ip`; 0 if unknown"),
    ("end_reason", str, "why the flow left the cache: `idle`, `active`, `fin`, `rst`, `cache_full`, "
                        "`shutdown`"),
)
COLLECTOR = _part(
    "collector",
    ("received", float, "when the collector's listener received the datagram, Unix seconds (UTC)"),
    ("exporter", str, "UDP source address of the datagram"),
)
ENRICH = _part(
    "enrich",
    ("direction", str, "`inbound` (to a local host), `outbound` (from one), `internal` (both local), "
                       "`external` (neither)"),
    ("service", str, "IANA service name of the server port (`https`, `domain`, `ssh`, `ms-wbt-server`)"),
    ("src_country", str, "ISO 3166 country code (`registered_country` when `country` is absent)"),
    ("dst_country", str, "ISO 3166 country code (`registered_country` when `country` is absent)"),
    ("src_asn", int, "autonomous system number"),
    ("dst_asn", int, "autonomous system number"),
    ("src_as_org", str, "autonomous system organisation"),
    ("dst_as_org", str, "autonomous system organisation"),
    ("src_host", str, "reverse DNS name"),
    ("dst_host", str, "reverse DNS name"),
)
COLUMNS = WIRE + COLLECTOR + ENRICH

FIELDS = tuple(c.name for c in WIRE)
COLLECTOR_FIELDS = tuple(c.name for c in COLLECTOR)
ROW_FIELDS = FIELDS + COLLECTOR_FIELDS
ENRICH_FIELDS = tuple(c.name for c in ENRICH)
ENRICHED_ROW_FIELDS = ROW_FIELDS + ENRICH_FIELDS

INT_FIELDS = frozenset(c.name for c in WIRE if c.kind is int)
FLOAT_FIELDS = frozenset(c.name for c in WIRE if c.kind is float)
STR_FIELDS = frozenset(c.name for c in WIRE if c.kind is str)
ENRICH_INT_FIELDS = frozenset(c.name for c in ENRICH if c.kind is int)

# Position of every column in a row (wire, collector and enriched rows share their prefixes).
INDEX = {c.name: i for i, c in enumerate(COLUMNS)}
# What a column holds when nothing is known: 0 for numbers, '' for text.
DEFAULTS = {c.name: c.kind() for c in COLUMNS}
ENRICH_DEFAULTS = tuple(DEFAULTS[name] for name in ENRICH_FIELDS)

# Why a flow left the cache, in the order the compiled flow table numbers them.
END_REASONS = ("idle", "active", "fin", "rst", "cache_full", "shutdown")


def indexes(*names):
    """Positions of the named columns in a row; KeyError names an unknown column."""
    return tuple(INDEX[n] for n in names)


def make_row(**values):
    """A wire row (FIELDS order) from column values; unset columns get their defaults."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise TypeError("unknown flow columns: %s" % ", ".join(sorted(unknown)))
    return [values.get(name, DEFAULTS[name]) for name in FIELDS]
