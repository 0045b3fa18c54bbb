"""Login brute force: many short TCP conversations from one source to a login service
-> Attempt.Login.

A counted flow is TCP to one of `ports`, carries an ACK (the handshake completed, unlike a scan
probe or a SYN flood) and has between `min_packets` and `max_packets` packets (a failed login is
short; an interactive session or a file transfer is not). Key: (source, port), so one attacker
spraying many hosts is one event listing them.
"""
from __future__ import annotations

from itertools import compress
from operator import itemgetter

from myason.detect.base import ACK, DPORT, DST, FLAGS, PACKETS, PROTO, SRC, TCP, Detector
from myason.options import check_int, check_items, check_mapping, check_optional

CATEGORY = "Attempt.Login"
# IANA service names of the default login ports, for the event's Proto.
LOGIN_SERVICES = {21: "ftp", 22: "ssh", 23: "telnet", 110: "pop3", 143: "imap",
                  445: "microsoft-ds", 3389: "ms-wbt-server", 5900: "rfb"}


class BruteForceDetector(Detector):
    """>= threshold short TCP flows from one source to one login port in a window."""

    name = "bruteforce"
    SPEC = {"threshold": (20, check_int(lo=1)), "min_packets": (3, check_int(lo=0)),
            "max_packets": (20, check_int(lo=0)), "ports": (sorted(LOGIN_SERVICES), check_items(check_int(1, 65535))),
            "services": ({}, check_optional(check_mapping))}

    def configure(self, opts):
        """threshold: flows per window; ports: login ports; services: extra {port: name}."""
        self.threshold = opts["threshold"]
        self.min_packets = opts["min_packets"]
        self.max_packets = opts["max_packets"]
        self.ports = frozenset(opts["ports"])
        self.services = dict(LOGIN_SERVICES)
        self.services.update({int(k): str(v) for k, v in (opts["services"] or {}).items()})

    def _select(self, rows, _dport=itemgetter(DPORT)):
        # Only the login services' ports matter: tested for the whole batch in C.
        return compress(rows, map(self.ports.__contains__, map(_dport, rows)))

    def _feed(self, row, t):
        if (row[DPORT] not in self.ports or row[PROTO] != TCP or not row[FLAGS] & ACK
                or not self.min_packets <= row[PACKETS] <= self.max_packets):
            return
        win = self.window_for((row[SRC], row[DPORT]), t)
        win.count(row)
        win.add(row[DST], self.max_distinct)

    def _event(self, key, win, detect_time):
        if win.flows < self.threshold:
            return None
        src, port = key
        service = self.services.get(port)
        proto = ["tcp", service] if service else ["tcp"]
        n = win.n_distinct()
        return self.event(
            CATEGORY, win, detect_time, [src], win.values(),
            "Login brute force: %s made %d short %s connections to %s%d host%s" % (
                src, win.flows, service or "tcp/%d" % port, "at least " if win.capped else "",
                n, "" if n == 1 else "s"),
            proto=proto, target_ports=(port,))
