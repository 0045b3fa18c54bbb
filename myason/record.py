"""FlowRecord: the one flow record type shared by agent, wire format, collector and writers."""
import ipaddress

# Order matters: it is the CSV column order and the wire format's row order.
FIELDS = (
    "src_ip", "dst_ip", "src_port", "dst_port", "proto", "tos", "packets", "bytes",
    "first", "last", "tcp_flags",
    "agent", "if_name", "in_if", "out_if", "ip_version", "vlan", "next_hop",
    "src_mask", "dst_mask", "src_as", "dst_as", "end_reason",
)
INT_FIELDS = frozenset((
    "src_port", "dst_port", "proto", "tos", "packets", "bytes", "tcp_flags", "in_if",
    "out_if", "ip_version", "vlan", "src_mask", "dst_mask", "src_as", "dst_as",
))
FLOAT_FIELDS = frozenset(("first", "last"))
STR_FIELDS = frozenset(("src_ip", "dst_ip", "agent", "if_name", "next_hop", "end_reason"))

# Why a flow left the cache.
END_REASONS = ("idle", "active", "fin", "rst", "cache_full", "shutdown")

_DEFAULTS = {name: (0 if name in INT_FIELDS else 0.0 if name in FLOAT_FIELDS else "") for name in FIELDS}


class FlowRecord:
    """One unidirectional flow as exported by the agent; field meanings in docs/protocol.md."""

    __slots__ = FIELDS

    def __init__(self, **values):
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise TypeError("unknown FlowRecord fields: %s" % ", ".join(sorted(unknown)))
        for name in FIELDS:
            setattr(self, name, values.get(name, _DEFAULTS[name]))

    @classmethod
    def from_row(cls, row):
        """Build a record from a sequence in FIELDS order (the wire format's rows)."""
        rec = cls.__new__(cls)
        if len(row) != len(FIELDS):
            raise ValueError("a flow row has %d fields, expected %d" % (len(row), len(FIELDS)))
        for name, value in zip(FIELDS, row):
            setattr(rec, name, value)
        return rec

    def to_row(self):
        """The record as a list in FIELDS order."""
        return [getattr(self, name) for name in FIELDS]

    def to_dict(self):
        """The record as a dict keyed by field name (JSON lines output)."""
        return {name: getattr(self, name) for name in FIELDS}

    def key5(self):
        """(src_ip, dst_ip, src_port, dst_port, proto): the conversation key other meters use."""
        return (self.src_ip, self.dst_ip, self.src_port, self.dst_port, self.proto)

    def __eq__(self, other):
        return isinstance(other, FlowRecord) and self.to_row() == other.to_row()

    def __repr__(self):
        return "FlowRecord(%s)" % ", ".join("%s=%r" % (n, getattr(self, n)) for n in FIELDS)


def address_text(raw):
    """Text form of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
    return str(ipaddress.ip_address(bytes(raw)))
