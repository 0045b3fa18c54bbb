"""SYN floods and packet floods against one target -> Availability.DoS, or Availability.DDoS
when at least `ddos_sources` distinct sources took part.

Per target and window: packets of SYN-only TCP flows (SYN set, ACK not: handshakes never
completed) and all packets. An event when the SYN-only packets reach `syn_packets`, or the mean
packet rate over the window reaches `packet_rate` (0 turns that test off). The sources and
ports reported are those of the SYN-only flows and, once the target has received a tenth of the
packet-rate threshold in the window, of every flow: ordinary clients of a busy server are not
listed as attackers, and most flows cost only a few counter updates. Sources are counted in a
set capped at `max_distinct`, so a spoofed flood from millions of addresses costs the same as
one from a few hundred.
"""
from __future__ import annotations

from myason.detect.base import (ACK, AGENT, BYTES, DPORT, DST, FIRST, FLAGS, LAST, PACKETS, PROTO, SRC, SYN,
                                TCP, Detector, proto_name)
from myason.options import check_float, check_int

DOS, DDOS = "Availability.DoS", "Availability.DDoS"
_MAX_PORTS = 16


class DosDetector(Detector):
    """SYN-only packets or packet rate to one target above a threshold."""

    name = "dos"
    SPEC = {"window": (60.0, check_float(lo=0, lo_open=True)), "syn_packets": (2000, check_int(lo=1)),
            "packet_rate": (100000.0, check_float(lo=0)), "ddos_sources": (50, check_int(lo=2))}

    def configure(self, opts):
        """syn_packets per window; packet_rate in packets/s (0: off); ddos_sources for DDoS."""
        self.syn_packets = opts["syn_packets"]
        self.packet_rate = opts["packet_rate"]
        self.ddos_sources = opts["ddos_sources"]
        self.cap = max(self.max_distinct, self.ddos_sources)
        # A target becomes "hot" at a tenth of the packet-rate threshold; from then on every flow's
        # source and port is recorded, before only those of SYN-only flows.
        rate_packets = self.packet_rate * self.window
        self.hot = rate_packets / 10 if rate_packets > 0 else float("inf")

    def _feed(self, row, t):
        self._feed_rows((row,))

    def _feed_rows(self, rows):
        # Every flow reaches this detector (the others filter early), so the loop is inlined,
        # with the attributes it reads held in locals.
        windows, span, hot, cap = self._windows, self.window, self.hot, self.cap
        get = windows.get
        for row in rows:
            t = row[FIRST]
            target = row[DST]
            win = get(target)
            # New keys, rollovers and late flows (before the start) take the general path.
            if win is None or not win.start <= t < win.start + span:
                win = self.window_for(target, t)
            packets = row[PACKETS]
            win.flows += 1
            win.packets += packets
            win.bytes += row[BYTES]
            if t < win.first:
                win.first = t
            last = row[LAST]
            if last > win.last:
                win.last = last
            agent = row[AGENT]
            if agent != win.agents and agent:     # Window.count's agent step, inlined as the rest
                win.add_agent(agent)
            proto = row[PROTO]
            if proto == TCP and row[FLAGS] & (SYN | ACK) == SYN:
                win.extra += packets
            elif win.packets < hot:
                # Sources and ports are only worth their cost for flows that may be the attack.
                continue
            src = row[SRC]
            sources = win.distinct
            if type(sources) is set:
                if src not in sources:
                    if len(sources) < cap:
                        sources.add(src)
                    else:
                        win.capped = True
            else:
                win.add(src, cap)
            key = (proto, row[DPORT])
            ports = win.extra_set
            if ports is None:
                win.extra_set = {key: packets}
            elif key in ports:
                ports[key] += packets
            elif len(ports) < _MAX_PORTS:
                ports[key] = packets

    def _event(self, key, win, detect_time):
        syn = win.extra
        rate = win.packets / self.window
        by_syn = syn >= self.syn_packets
        by_rate = self.packet_rate > 0 and rate >= self.packet_rate
        if not (by_syn or by_rate):
            return None
        n = win.n_distinct()
        category = DDOS if n >= self.ddos_sources else DOS
        ports = win.extra_set or {}
        # The ports that carried the flood: SYN floods target one or a few services.
        top = sorted(ports.items(), key=lambda kv: -kv[1])[:4]
        protos = sorted({proto_name(p) for (p, _port), _n in top})
        reason = ("%d SYN-only packets" % syn) if by_syn else ("%.0f packets/s" % rate)
        return self.event(
            category, win, detect_time, win.values(), [key],
            "%s against %s: %s from %s%d source%s" % (
                "SYN flood" if by_syn else "Packet flood", key, reason,
                "at least " if win.capped else "", n, "" if n == 1 else "s"),
            proto=protos, target_ports=[port for (p, port), _n in top if p != 1 and p != 58])
