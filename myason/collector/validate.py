"""Per-flow validation of decoded agent rows: types, ranges, address syntax and a sane clock.

Pure functions. A row is a list in myason.schema.FIELDS order, as wire.decode_datagram returns
it. The fast path checks every field in one chained condition (about 2 us per row here); only a
row that fails it goes through the slow path, which finds the exact reason.
"""
import math
import socket
from dataclasses import dataclass

from myason.errors import MyasonError
from myason.schema import END_REASONS, FIELDS, FLOAT_FIELDS, INT_FIELDS

# The epoch: replayed captures (test suites, synthetic traces) do carry times near 0, so only
# negative times are impossible.
MIN_TIME = 0.0
MAX_IF_NAME = 64
U32 = (1 << 32) - 1
# Counters are stored as signed 64-bit integers (PostgreSQL bigint, SQLite INTEGER), so a
# larger value would make a whole batch unwritable later; reject it here instead.
MAX_COUNTER = (1 << 63) - 1

_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_inet_pton = socket.inet_pton
_END_REASONS = frozenset(END_REASONS)
_NFIELDS = len(FIELDS)
_TYPES = tuple(int if f in INT_FIELDS else float if f in FLOAT_FIELDS else str for f in FIELDS)
_INT_RANGES = {
    "src_port": (0, 65535), "dst_port": (0, 65535), "proto": (0, 255), "tos": (0, 255),
    "packets": (1, MAX_COUNTER), "bytes": (1, MAX_COUNTER), "tcp_flags": (0, 255),
    "in_if": (0, U32), "out_if": (0, U32), "ip_version": (4, 6), "vlan": (0, 4095),
    "src_mask": (0, 128), "dst_mask": (0, 128), "src_as": (0, U32), "dst_as": (0, U32),
}
_ADDR_ERRORS = (OSError, ValueError, TypeError)


class ValidationError(MyasonError):
    """A row or datagram field is invalid; `reason` is a short counter name."""

    def __init__(self, reason, message=""):
        self.reason = reason
        super().__init__("%s%s" % (reason, ": " + message if message else ""))


@dataclass(frozen=True)
class Limits:
    """Clock limits: token ttl, tolerated clock skew and the longest plausible flow (seconds)."""

    ttl: float = 5.0
    clock_skew: float = 60.0
    max_duration: float = 31 * 86400.0


DEFAULT_LIMITS = Limits()


def check_sent(sent, now, limits=DEFAULT_LIMITS):
    """Raise ValidationError('sent') unless now - ttl - skew <= sent <= now + skew."""
    if type(sent) is not float and not _is_int(sent):
        raise ValidationError("sent", "not a number")
    # Written so that NaN fails too.
    if not now - limits.ttl - limits.clock_skew <= sent <= now + limits.clock_skew:
        raise ValidationError("sent", "%.3f s away from the collector clock" % (sent - now))


def validate_row(row, batch_agent, sent, now, limits=DEFAULT_LIMITS):
    """The row normalised (ints as int, floats as float), or raise ValidationError(reason)."""
    check_sent(sent, now, limits)
    return _row(row, batch_agent, sent + limits.clock_skew, limits.max_duration)


def validate_rows(rows, batch_agent, sent, now, limits=DEFAULT_LIMITS):
    """Every row normalised (same list, rows replaced in place if needed); raise on the first bad one."""
    check_sent(sent, now, limits)
    latest, max_duration = sent + limits.clock_skew, limits.max_duration
    for i, row in enumerate(rows):
        good = _row(row, batch_agent, latest, max_duration)
        if good is not row:
            rows[i] = good
    return rows


def _row(row, agent, latest, max_duration):
    # Fast path: one chained condition; anything odd (a wrong type raises TypeError or
    # AttributeError in the comparisons, a bad address OSError) falls to _slow, which is the
    # authority on reasons. Strings need no type test: a non-str fails inet_pton, the agent
    # equality, str.isprintable or the END_REASONS lookup. `type() is` excludes bool.
    try:
        (src_ip, dst_ip, src_port, dst_port, proto, tos, packets, nbytes, first, last, tcp_flags,
         r_agent, if_name, in_if, out_if, ipv, vlan, next_hop, src_mask, dst_mask, src_as,
         dst_as, end_reason) = row
        maxmask = 32 if ipv == 4 else 128
        if (int is type(src_port) is type(dst_port) is type(proto) is type(tos) is type(packets)
                is type(nbytes) is type(tcp_flags) is type(in_if) is type(out_if) is type(ipv)
                is type(vlan) is type(src_mask) is type(dst_mask) is type(src_as) is type(dst_as)
                and float is type(first) is type(last)
                and 0 <= src_port <= 65535 and 0 <= dst_port <= 65535 and 0 <= proto <= 255
                and 0 <= tos <= 255 and 1 <= packets <= nbytes <= MAX_COUNTER
                and nbytes <= packets << 32 and MIN_TIME <= first <= last <= latest
                and last - first <= max_duration and 0 <= tcp_flags <= 255 and r_agent == agent
                and len(if_name) <= MAX_IF_NAME and if_name.isprintable()
                and 0 <= in_if <= U32 and 0 <= out_if <= U32 and (ipv == 4 or ipv == 6)
                and 0 <= vlan <= 4095 and 0 <= src_mask <= maxmask and 0 <= dst_mask <= maxmask
                and 0 <= src_as <= U32 and 0 <= dst_as <= U32 and end_reason in _END_REASONS):
            family = _AF_INET if ipv == 4 else _AF_INET6
            _inet_pton(family, src_ip)
            _inet_pton(family, dst_ip)
            if next_hop == "" or _is_address(next_hop):
                return row
    except (TypeError, ValueError, AttributeError, OSError):
        pass
    return _slow(row, agent, latest, max_duration)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_address(text, family=None):
    # A next hop may be of the other family (RFC 5549: IPv4 routes via an IPv6 gateway).
    for fam in ((family,) if family else (_AF_INET, _AF_INET6)):
        try:
            _inet_pton(fam, text)
            return True
        except _ADDR_ERRORS:
            pass
    return False


def _slow(row, agent, latest, max_duration):
    # Find the first failing check in field order and name it; normalise numeric subclasses.
    if not isinstance(row, (list, tuple)) or len(row) != _NFIELDS:
        raise ValidationError("shape", "not a sequence of %d values" % _NFIELDS)
    out = list(row)
    for i, (name, kind) in enumerate(zip(FIELDS, _TYPES)):
        v = out[i]
        if kind is int:
            if not _is_int(v):
                raise ValidationError(name, "not an integer")
            lo, hi = _INT_RANGES[name]
            if not lo <= v <= hi:
                raise ValidationError(name, "out of range")
            out[i] = int(v)
        elif kind is float:
            if not (_is_int(v) or isinstance(v, float)):
                raise ValidationError(name, "not a number")
            v = out[i] = float(v)
            if not math.isfinite(v):
                raise ValidationError(name, "not finite")
        elif not isinstance(v, str):
            raise ValidationError(name, "not a string")
        else:
            out[i] = str(v)
    (src_ip, dst_ip, _sp, _dp, _pr, _tos, packets, nbytes, first, last, _fl, r_agent, if_name,
     _in, _out, ipv, _vlan, next_hop, src_mask, dst_mask, _sas, _das, end_reason) = out
    if ipv not in (4, 6):
        raise ValidationError("ip_version", "not 4 or 6")
    family = _AF_INET if ipv == 4 else _AF_INET6
    if not _is_address(src_ip, family):
        raise ValidationError("src_ip", "not an IPv%d address" % ipv)
    if not _is_address(dst_ip, family):
        raise ValidationError("dst_ip", "not an IPv%d address" % ipv)
    if nbytes < packets:
        raise ValidationError("bytes", "fewer bytes than packets")
    if nbytes > packets << 32:
        raise ValidationError("bytes", "more than 2**32 bytes per packet")
    if first < MIN_TIME:
        raise ValidationError("first", "before 1970")
    if first > last:
        raise ValidationError("first_after_last")
    if last > latest:
        raise ValidationError("last", "later than the datagram's send time")
    if last - first > max_duration:
        raise ValidationError("duration", "longer than %d s" % max_duration)
    if r_agent != agent:
        raise ValidationError("agent", "differs from the datagram's agent")
    if len(if_name) > MAX_IF_NAME or not if_name.isprintable():
        raise ValidationError("if_name", "too long or not printable")
    maxmask = 32 if ipv == 4 else 128
    if src_mask > maxmask:
        raise ValidationError("src_mask", "over %d" % maxmask)
    if dst_mask > maxmask:
        raise ValidationError("dst_mask", "over %d" % maxmask)
    if next_hop and not _is_address(next_hop):
        raise ValidationError("next_hop", "not an address")
    if end_reason not in _END_REASONS:
        raise ValidationError("end_reason", "unknown")
    # The fast path failed on something the checks above accept: only the type tuple (subclasses).
    return out
