"""Hostile input over real UDP: a running collector must count every bad datagram by reason, store
none of them, keep running, and store the valid traffic sent alongside completely and exactly once.

Senders: a real agent replaying a generated capture, plus datagrams built here with myason.wire
(valid ones, their replays, and every kind of bad one). The collector writes its summary counters
as JSON at exit (`--summary-json`); while it runs, the sender is paced on its metrics endpoint so
no datagram is lost to a full socket buffer or queue (and any such loss is asserted on, not hidden).
"""
import base64
import csv
import json
import random
import re
import socket
import threading
import time
import zlib
from collections import Counter

import orjson
from cryptography.fernet import Fernet

from myason import wire
from myason.schema import FIELDS
from tests.support import trafficgen as gen
from tests.support import collector as col
from tests.support.collector import SummaryCollector, free_tcp_port, scrape, sqlite_rows
from tests.support.services import wait_until
from tests.support.streams import flow_row, row_key

VALID, HOSTILE, FENCED = "valid-1", "hostile-1", "fenced-1"
MAX_DATAGRAM = 8192


def seal(agent, fernet, plaintext, at=None):
    """A datagram with a real header and a token over arbitrary plaintext (bytes)."""
    token = fernet.encrypt(plaintext) if at is None else fernet.encrypt_at_time(plaintext, int(at))
    return wire.header(agent) + base64.urlsafe_b64decode(token)


def body(agent, rows, seq=0, sent=None):
    """zlib-compressed wire JSON body with the given rows."""
    return zlib.compress(orjson.dumps({"v": 1, "agent": agent, "seq": seq,
                                       "sent": time.time() if sent is None else sent, "flows": rows}))


def invalid_field_rows(agent, now):
    """(reason, row) for every kind of invalid field the collector's validation knows."""
    def bad(i, **changes):
        row = flow_row(agent, 900001 + 5 * i, now)    # always an IPv4 row
        for k, v in changes.items():
            row[FIELDS.index(k)] = v
        return row
    cases = [
        ("src_ip", dict(src_ip="999.1.1.1")), ("src_ip", dict(src_ip=17)), ("dst_ip", dict(dst_ip="not-an-ip")),
        ("dst_ip", dict(dst_ip="2001:db8::1")),  # an IPv6 address in an IPv4 row
        ("src_port", dict(src_port=70000)), ("src_port", dict(src_port="80")), ("dst_port", dict(dst_port=-1)),
        ("proto", dict(proto=256)), ("tos", dict(tos=300)), ("packets", dict(packets=0)),
        ("packets", dict(packets=True)), ("bytes", dict(packets=5, bytes=2)),
        ("bytes", dict(packets=1, bytes=1 << 40)), ("first", dict(first=-5.0)), ("first", dict(first="x")),
        ("last", dict(first=now - 10, last=now + 3600)), ("first_after_last", dict(first=now - 10, last=now - 20)),
        ("duration", dict(first=now - 40 * 86400, last=now - 1)), ("tcp_flags", dict(tcp_flags=256)),
        ("agent", dict(agent="someone-else")), ("if_name", dict(if_name="x" * 65)),
        ("if_name", dict(if_name="eth\x00")), ("if_name", dict(if_name=5)), ("in_if", dict(in_if=-1)),
        ("out_if", dict(out_if=1 << 32)), ("ip_version", dict(ip_version=5)), ("vlan", dict(vlan=4096)),
        ("next_hop", dict(next_hop="gateway")), ("src_mask", dict(src_mask=33)), ("dst_mask", dict(dst_mask=129)),
        ("src_as", dict(src_as=-1)), ("dst_as", dict(dst_as=1 << 32)), ("end_reason", dict(end_reason="exploded")),
        ("end_reason", dict(end_reason=None)),
    ]
    return [("invalid_" + reason, bad(i, **ch)) for i, (reason, ch) in enumerate(cases)]


class Sender:
    """Builds and sends the datagrams of the test, keeping what it expects of the collector."""

    def __init__(self, c, metrics_port, seed=7):
        self.c, self.port, self.metrics_port = c, c.port, metrics_port
        self.rnd = random.Random(seed)
        self.keys = {a: Fernet(c.keys[a].encode()) for a in (VALID, HOSTILE, FENCED)}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.fenced_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.fenced_sock.bind(("127.0.0.2", 0))
        self.sent = 0
        self.expected_rejects = Counter()
        self.oversized = 0
        self.stored = Counter()        # row_key -> 1 for every valid row sent
        self.seq = {VALID: 0, FENCED: 0}
        self.row_no = 0
        self.recent = []               # valid datagrams sent lately (replay material)

    def send(self, data, reason=None, sock=None):
        """Send one datagram; reason: the reject counter it must land in (None = valid)."""
        (sock or self.sock).sendto(data, ("127.0.0.1", self.port))
        self.sent += 1
        if reason == "oversized":
            self.oversized += 1
        elif reason:
            self.expected_rejects[reason] += 1
        if self.sent % 250 == 0:
            self.pace()

    def pace(self):
        """Wait until the collector has taken in nearly all sent so far (no buffer can overflow)."""
        def caught_up():
            m = scrape(self.metrics_port)
            return (m.get(("myason_datagrams_total", None), 0) >= self.sent - 250
                    and m.get(("myason_queue_depth", None), 0) <= 64)
        wait_until(caught_up, timeout=30, interval=0.01)

    def valid(self, agent=VALID, nrows=None, sock=None):
        """A valid datagram of `agent` with fresh rows, sent; returns it."""
        now = time.time()
        rows = [flow_row(agent, self.row_no + i, now) for i in range(nrows or self.rnd.randint(1, 25))]
        self.row_no += len(rows)
        data = wire.encode_datagram(rows, agent, self.seq[agent], self.keys[agent])
        self.seq[agent] += 1
        self.send(data, None, sock)
        for r in rows:
            self.stored[row_key(r)] += 1
        self.recent = (self.recent + [data])[-8:]
        return data

    def hostile_kinds(self):
        """(weight, function) per kind; each function sends one datagram of its kind."""
        r, hk = self.rnd, self.keys[HOSTILE]

        def random_bytes():
            data = bytearray(r.randbytes(r.randint(7, 1400)))
            data[0] = r.choice([x for x in range(256) if x != ord("M")])
            self.send(bytes(data), "bad_magic")

        def short():
            self.send(b"MYAS\x01\x00"[:r.randint(0, 6)], "short")

        def header_faults():
            good = wire.header(HOSTILE) + b"\x80" * 89
            kind = r.choice(["bad_version", "bad_flags", "bad_agent_id", "bad_agent_id2"])
            if kind == "bad_version":
                data = good[:4] + bytes([r.choice([0, 2, 255])]) + good[5:]
            elif kind == "bad_flags":
                data = good[:5] + bytes([r.randint(1, 255)]) + good[6:]
            elif kind == "bad_agent_id":
                data = good[:6] + bytes([r.choice([0, 65, 200])]) + good[7:]
            else:
                data, kind = good[:7] + b"bad agent" + good[7 + 9:], "bad_agent_id"   # a space
            self.send(data, kind)

        def template():
            return seal(HOSTILE, hk, body(HOSTILE, [flow_row(HOSTILE, 1, time.time())]))

        def truncated():
            data = template()
            head = len(wire.header(HOSTILE))
            # Keep at least a minimal token so the cut is caught by authentication.
            self.send(data[:r.randint(head + 73, len(data) - 1)], "bad_token")

        def truncated_header():
            data = template()
            self.send(data[:r.randint(7, len(wire.header(HOSTILE)) - 1)], "short")

        def bit_flip():
            data = bytearray(template())
            pos = r.randrange(len(wire.header(HOSTILE)), len(data))
            data[pos] ^= 1 << r.randrange(8)
            self.send(bytes(data), "bad_token")

        def unknown_agent():
            agent = "ghost-%d" % r.randrange(1000)
            self.send(seal(agent, Fernet(Fernet.generate_key()), body(agent, [])), "unknown_agent")

        def wrong_key():
            self.send(seal(HOSTILE, Fernet(Fernet.generate_key()), body(HOSTILE, [])), "bad_token")

        def expired():
            self.send(seal(HOSTILE, hk, body(HOSTILE, []), at=time.time() - r.randint(120, 10 ** 6)), "expired")

        def future():
            self.send(seal(HOSTILE, hk, body(HOSTILE, []), at=time.time() + r.randint(300, 10 ** 6)), "future")

        def replay():
            if not self.recent:
                self.valid()
            self.send(r.choice(self.recent), "replay")

        def oversized():
            self.send(template() + r.randbytes(MAX_DATAGRAM + 1 - len(template()) + r.randrange(2000)), "oversized")

        bombs = [zlib.compress(b"\0" * (n << 20), 9) for n in (2, 4)]     # ~2 and ~4 kB

        def bomb():
            self.send(seal(HOSTILE, hk, r.choice(bombs)), "too_large")

        def bad_compression():
            self.send(seal(HOSTILE, hk, b"{\"v\":1} not zlib"), "bad_compression")

        def bad_json():
            payload = r.choice([b"{not json", b"\xff\xfe garbage", b'{"v":1,', b"[1,2", b'{"v":NaN}'])
            self.send(seal(HOSTILE, hk, zlib.compress(payload)), "bad_json")

        def bad_schema():
            now = time.time()
            obj = r.choice([{"v": 2, "agent": HOSTILE, "seq": 1, "sent": now, "flows": []},
                            {"v": 1, "agent": HOSTILE, "seq": -1, "sent": now, "flows": []},
                            {"v": 1, "agent": HOSTILE, "seq": 1, "sent": now},
                            {"v": 1, "agent": HOSTILE, "seq": 1, "sent": now, "flows": {}, "x": 1},
                            [1, 2, 3]])
            self.send(seal(HOSTILE, hk, zlib.compress(orjson.dumps(obj))), "bad_schema")

        def agent_mismatch():
            self.send(seal(HOSTILE, hk, body(VALID, [])), "agent_mismatch")

        def bad_row():
            self.send(seal(HOSTILE, hk, body(HOSTILE, [[1, 2, 3]])), "bad_row")

        def invalid_field(case=None):
            # Valid rows around the bad one: a datagram is accepted or rejected whole.
            now = time.time()
            cases = invalid_field_rows(HOSTILE, now)
            reason, row = cases[case] if case is not None else r.choice(cases)
            good = [flow_row(HOSTILE, 5000 + i, now) for i in range(r.randint(0, 3))]
            self.send(seal(HOSTILE, hk, body(HOSTILE, good + [row] + good[:1], seq=r.randrange(1 << 30))), reason)

        def invalid_fields():
            for case in range(len(invalid_field_rows(HOSTILE, 0.0))):
                invalid_field(case)

        def invalid_sent():
            sent = time.time() + r.choice([-3600, 3600])
            self.send(seal(HOSTILE, hk, body(HOSTILE, [flow_row(HOSTILE, 7, time.time())], sent=sent)),
                      "invalid_sent")

        def not_allowed():
            # A fenced agent's valid datagram from an address outside its networks.
            now = time.time()
            data = wire.encode_datagram([flow_row(FENCED, 3, now)], FENCED, 10 ** 6, self.keys[FENCED])
            self.send(data, "not_allowed", sock=self.fenced_sock)

        self.invalid_fields = invalid_fields
        return [(12, random_bytes), (3, short), (4, header_faults), (10, truncated), (2, truncated_header),
                (10, bit_flip), (6, unknown_agent), (8, wrong_key), (5, expired), (5, future), (6, replay),
                (3, oversized), (1, bomb), (3, bad_compression), (4, bad_json), (4, bad_schema),
                (3, agent_mismatch), (3, bad_row), (8, invalid_field), (2, invalid_sent), (4, not_allowed)]

    def run(self, hostile, valid_every=4):
        """Send `hostile` hostile-kind picks with a valid datagram every `valid_every` picks."""
        kinds = self.hostile_kinds()
        weights = [w for w, _ in kinds]
        funcs = [f for _, f in kinds]
        for f in funcs:              # every kind at least once, every invalid field too
            f()
        self.invalid_fields()
        for i in range(hostile):
            self.rnd.choices(funcs, weights)[0]()
            if i % valid_every == 0:
                self.valid(FENCED if i % (valid_every * 7) == 0 else VALID)


def test_hostile_datagrams_are_counted_by_reason_and_never_stored(tmp_path):
    db = tmp_path / "flows.db"
    summary_json = tmp_path / "summary.json"
    metrics_port = free_tcp_port()
    c = SummaryCollector(summary_json, tmp_path / "c", [{"type": "sqlite", "path": str(db)}],
                      agents=(col.AGENT_ID, VALID, HOSTILE, FENCED), max_datagram=MAX_DATAGRAM,
                      token_ttl=30.0, metrics="127.0.0.1:%d" % metrics_port, processors_number=2)
    # The fenced agent may send from 127.0.0.1 only; the harness writes no networks column.
    col.write_private(c.dir / "keystore", "".join(
        "%s %s%s\n" % (a, k, " 127.0.0.1/32" if a == FENCED else "") for a, k in c.keys.items()))
    pcap = tmp_path / "scenario.pcap"
    gen.write_pcap(pcap, gen.scenario(seed=9))
    start = time.monotonic()
    c.start()
    try:
        agent_out = tmp_path / "agent.csv"
        agent_result = {}

        def agent():
            try:
                agent_result["proc"] = col.run_agent(c.agent_conf(max_datagram=512), [pcap], output=agent_out,
                                                     timeout=120)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                agent_result["error"] = exc
        t = threading.Thread(target=agent)
        t.start()
        s = Sender(c, metrics_port)
        s.run(hostile=10200)
        t.join(150)
        assert "error" not in agent_result, agent_result.get("error")
        agent_sent = int(re.search(r"datagrams_sent\s+(\d+)", agent_result["proc"].stderr).group(1))
        with open(agent_out) as fh:
            agent_rows = list(csv.DictReader(fh))
        assert c.proc.poll() is None, "collector died:\n" + c.log()
        expected_rows = len(s.stored) + len(agent_rows)
        wait_until(lambda: len(sqlite_rows(db)) >= expected_rows, timeout=60, interval=0.2)
        assert c.proc.poll() is None, "collector died:\n" + c.log()
        assert c.stop() == 0, c.log()
    finally:
        if c.proc is not None:
            c.proc.kill()
    summary = json.loads(summary_json.read_text())
    hostile_sent = sum(s.expected_rejects.values()) + s.oversized
    print("sent %d datagrams (%d hostile) + %d from the agent in %.1f s"
          % (s.sent, hostile_sent, agent_sent, time.monotonic() - start))
    assert hostile_sent >= 10000
    # Every datagram reached the collector and none was lost inside it.
    assert summary["kernel_drops"] == 0
    assert summary["queue_dropped"] == 0
    assert summary["datagrams"] == s.sent + agent_sent
    assert summary["oversized"] == s.oversized
    # Every hostile datagram is counted, by the reason of its kind.
    print(json.dumps(summary["rejects"], sort_keys=True))
    assert summary["rejects"] == dict(s.expected_rejects)
    # The valid traffic: complete, exactly once, nothing else.
    stored = sqlite_rows(db)
    by_agent = Counter(r["agent"] for r in stored)
    assert set(by_agent) == {VALID, FENCED, col.AGENT_ID}
    assert Counter(row_key(r) for r in stored if r["agent"] != col.AGENT_ID) == s.stored
    assert by_agent[col.AGENT_ID] == len(agent_rows)
    agent_keys = Counter(tuple(str(r[k]) for k in ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "packets",
                                                   "bytes")) for r in agent_rows)
    assert Counter(tuple(str(r[k]) for k in ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "packets",
                                             "bytes")) for r in stored if r["agent"] == col.AGENT_ID) == agent_keys
    assert {r["exporter"] for r in stored} == {"127.0.0.1"}
    agents = summary["agents"]
    assert agents[VALID]["datagrams"] == s.seq[VALID] and agents[VALID]["gaps"] == 0
    assert agents[FENCED]["datagrams"] == s.seq[FENCED] and agents[FENCED]["gaps"] == 0
    assert agents[col.AGENT_ID]["datagrams"] == agent_sent and agents[col.AGENT_ID]["gaps"] == 0
    assert agents[VALID]["replays"] + agents[FENCED]["replays"] == s.expected_rejects["replay"]
    assert HOSTILE not in agents or agents[HOSTILE]["datagrams"] == 0
    assert summary["flows_spooled"] == expected_rows
    assert all(w["failed_batches"] == 0 for w in summary["writers"].values())
