"""A controlled sender of valid datagrams to a running collector, the rows it sends, and the keys the
collector tests compare sent, exported and stored rows by."""
import csv
import socket
import time
from collections import Counter

from cryptography.fernet import Fernet

from myason import wire
from myason.schema import FIELDS
from tests.support import collector as col
from tests.support.services import wait_until

AGENT = "ctl-1"
ROWS_PER_DATAGRAM = 20
_FIRST, _LAST = FIELDS.index("first"), FIELDS.index("last")
# What identifies an exported row in a store (the agent's CSV has no exporter or received time).
AGENT_KEY_FIELDS = ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "tos", "packets", "bytes", "tcp_flags",
                    "end_reason")


def flow_row(agent, i, now):
    """A valid row, unique by (src_port, first) for i below 65536 * 1000."""
    v6 = i % 5 == 0
    first = round(now - 120 + (i % 60000) * 0.001, 3)
    packets = 1 + i % 50
    return ["2001:db8::%x" % (i % 65000 + 1) if v6 else "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255),
            "2001:db8:ffff::1" if v6 else "192.0.2.%d" % (i % 250 + 1),
            i % 65536, 443, 6, 0, packets, packets * 100 + i % 7, first, first + 1.5, 0x1b, agent, "eth0", 2,
            3, 6 if v6 else 4, i % 4095, "" if i % 3 else ("2001:db8::fe" if v6 else "10.0.0.1"), 24, 24,
            64500, 0, "fin"]


def row_key(row):
    """Comparable identity of a stored or sent row (FIELDS only, floats rounded to the microsecond)."""
    vals = [row[f] for f in FIELDS] if isinstance(row, dict) else list(row[:len(FIELDS)])
    vals[_FIRST], vals[_LAST] = round(float(vals[_FIRST]), 6), round(float(vals[_LAST]), 6)
    nh = FIELDS.index("next_hop")
    vals[nh] = vals[nh] or ""
    return tuple(vals)


def agent_key(row):
    """Identity of a row the agent exported (CSV dict or FIELDS-ordered tuple), to find it in a store."""
    if not isinstance(row, dict):
        row = dict(zip(FIELDS, row))
    return tuple(str(row[k]) for k in AGENT_KEY_FIELDS) + (round(float(row["first"]), 6),
                                                         round(float(row["last"]), 6))


def agent_records(csv_path):
    """(rows, Counter of agent_key) of an agent's --output CSV."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows, Counter(agent_key(r) for r in rows)


class Stream:
    """A controlled agent: datagrams of ROWS_PER_DATAGRAM fresh rows, contiguous seq, made with myason.wire."""

    def __init__(self, c, agent=AGENT):
        self.agent, self.port = agent, c.port
        self.fernet = Fernet(c.keys[agent].encode())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rows = {}             # seq -> rows of that datagram
        self.seq = 0

    def send(self, n, pause_every=500, metrics_port=None):
        """Send n datagrams; every pause_every, wait for the collector to have taken them in."""
        total = (lambda: col.scrape(metrics_port).get(("myason_datagrams_total", None), 0)) if metrics_port else None
        base = total() if total else 0
        for i in range(1, n + 1):
            now = time.time()
            first = self.seq * ROWS_PER_DATAGRAM
            rows = [flow_row(self.agent, first + j, now) for j in range(ROWS_PER_DATAGRAM)]
            self.sock.sendto(wire.encode_datagram(rows, self.agent, self.seq, self.fernet), ("127.0.0.1", self.port))
            self.rows[self.seq] = rows
            self.seq += 1
            if total and i % pause_every == 0:
                wait_until(lambda i=i: total() >= base + i - 100, timeout=30, interval=0.01)

    def expected(self, seqs=None):
        """Counter of row keys of the given datagrams (default: all sent)."""
        seqs = self.rows if seqs is None else seqs
        return Counter(row_key(r) for s in seqs for r in self.rows[s])

    def seq_of(self):
        """row key -> seq of the datagram that carried it."""
        return {row_key(r): s for s, rows in self.rows.items() for r in rows}


def collector(tmp_path, writers, metrics=True, **extra):
    """A SummaryCollector under tmp_path/c (config, keystore, spool) for AGENT and the e2e agent."""
    port = col.free_tcp_port() if metrics else None
    c = col.SummaryCollector(tmp_path / "summary.json", tmp_path / "c", writers, agents=(col.AGENT_ID, AGENT),
                             metrics="127.0.0.1:%d" % port if metrics else None, **extra)
    c.metrics_port = port
    return c
