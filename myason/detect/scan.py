"""Horizontal scans (one source, one port, many hosts) and vertical scans (one source, one host,
many ports) -> Recon.Scanning.

Only probe-like flows count, so completed conversations (web browsing, a busy client) never add
up to a scan: at most `probe_max_packets` packets and, for TCP, no ACK from the prober (a SYN
left unanswered, refused, or reset by the scanner: nmap -sS, masscan, zmap). UDP flows that look
like answers (source port below 1024, destination port above) are skipped, and ICMP counts only
echo requests (ping sweeps), only for horizontal scans. Distinct hosts/ports are counted exactly
in sets capped at `max_distinct` (not HyperLogLog: exact counts and the Target list come for
free, and the cap bounds memory).
"""
from __future__ import annotations

from itertools import compress, repeat
from operator import ge, itemgetter

from myason.detect.base import (ACK, DPORT, DST, ICMP, ICMP6, PROTO, SCTP, SPORT, SRC, TCP, UDP,
                                PACKETS, FLAGS, Detector, proto_name)
from myason.options import check_int

CATEGORY = "Recon.Scanning"
_ECHO_REQUEST = {ICMP: 8, ICMP6: 128}


def is_probe(row, max_packets, icmp=True) -> bool:
    """True when a flow looks like a scan probe (see the module docstring)."""
    if row[PACKETS] > max_packets:
        return False
    proto = row[PROTO]
    if proto == TCP:
        return not row[FLAGS] & ACK
    if proto == UDP or proto == SCTP:
        return not (row[SPORT] < 1024 <= row[DPORT])
    if icmp and proto in _ECHO_REQUEST:
        return row[DPORT] >> 8 == _ECHO_REQUEST[proto]
    return False


class _ScanDetector(Detector):
    SPEC = {"threshold": (50, check_int(lo=1)), "probe_max_packets": (3, check_int(lo=0))}

    def configure(self, opts):
        """threshold: distinct hosts/ports in a window; probe_max_packets: largest probe flow."""
        self.threshold = opts["threshold"]
        self.probe_max_packets = opts["probe_max_packets"]
        # Counting beyond the threshold only sharpens the report; never cap below it.
        self.cap = max(self.max_distinct, self.threshold)

    def _select(self, rows, _packets=itemgetter(PACKETS)):
        # Probes are short: the packet test for the whole batch in C, before any Python call.
        return compress(rows, map(ge, repeat(self.probe_max_packets), map(_packets, rows)))


class HorizontalScanDetector(_ScanDetector):
    """One source probing >= threshold distinct hosts on one port (key: source, port, proto)."""

    name = "scan_horizontal"

    def _feed(self, row, t):
        # Most flows are longer than a probe: that test first, without a call.
        if row[PACKETS] > self.probe_max_packets or not is_probe(row, self.probe_max_packets):
            return
        win = self.window_for((row[SRC], row[DPORT], row[PROTO]), t)
        win.count(row)
        win.add(row[DST], self.cap)

    def _event(self, key, win, detect_time):
        n = win.n_distinct()
        if n < self.threshold:
            return None
        src, port, proto = key
        pname = proto_name(proto)
        icmp = proto in _ECHO_REQUEST
        what = "echo requests" if icmp else "%s/%d" % (pname, port)
        return self.event(
            CATEGORY, win, detect_time, [src], win.values(),
            "Horizontal scan: %s probed %s%d hosts on %s" % (src, "at least " if win.capped else "",
                                                            n, what),
            proto=[pname], target_ports=() if icmp else (port,))


class VerticalScanDetector(_ScanDetector):
    """One source probing >= threshold distinct ports of one host (key: source, host, proto)."""

    name = "scan_vertical"

    def _feed(self, row, t):
        if (row[PACKETS] > self.probe_max_packets
                or not is_probe(row, self.probe_max_packets, icmp=False)):
            return
        win = self.window_for((row[SRC], row[DST], row[PROTO]), t)
        win.count(row)
        win.add(row[DPORT], self.cap)

    def _event(self, key, win, detect_time):
        n = win.n_distinct()
        if n < self.threshold:
            return None
        src, dst, proto = key
        pname = proto_name(proto)
        return self.event(
            CATEGORY, win, detect_time, [src], [dst],
            "Vertical scan: %s probed %s%d %s ports of %s" % (
                src, "at least " if win.capped else "", n, pname, dst),
            proto=[pname], target_ports=win.values())
