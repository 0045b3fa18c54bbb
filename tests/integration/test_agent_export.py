"""`myason agent` exporting to real UDP collectors, end to end, as a real process.

The collectors are UDP sockets bound by the test on 127.0.0.1 and [::1]; every datagram is
decoded with myason.wire and the key file the agent used, and checked against the totals
tests/support/trafficgen.py computes from the generated capture.
"""
import csv
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, MultiFernet

from myason import keys, wire
from myason.errors import WireError
from myason.schema import FIELDS, FLOAT_FIELDS, INT_FIELDS, make_row
from tests.support import trafficgen as gen
from tests.support.summary import parse_summary

ROOT = Path(__file__).resolve().parents[2]
AGENT_ID = "it-agent.01"
COL = {name: i for i, name in enumerate(FIELDS)}
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


# ---- helpers ----------------------------------------------------------------------------

def myason(*args, check=True, timeout=120):
    """Run `python3 myason.py ARGS` from the repository root; AssertionError on a failure exit."""
    proc = subprocess.run([sys.executable, str(ROOT / "myason.py"), *args], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("myason %s: exit %d\n%s" % (" ".join(args), proc.returncode, proc.stderr))
    return proc


class Collector:
    """A UDP socket bound on an ephemeral port with a thread that keeps every datagram it gets."""

    def __init__(self, host):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # FORCE needs CAP_NET_ADMIN; fall back
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 16 << 20)
                break
            except OSError:
                continue
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.datagrams = []
        self.arrivals = []
        self.got = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def endpoint(self):
        """The 'host:port' text for the agent config."""
        return "[%s]:%d" % (self.host, self.port) if ":" in self.host else "%s:%d" % (self.host, self.port)

    def _run(self):
        while True:
            try:
                data = self.sock.recv(70000)
            except socket.timeout:
                # Stop only once the buffer is empty: loopback sends are already queued here.
                if self._stop.is_set():
                    return
                continue
            self.datagrams.append(data)
            self.arrivals.append(time.monotonic())
            self.got.set()

    def wait_for(self, count, deadline):
        """True once `count` datagrams have arrived, False when `deadline` seconds pass first."""
        end = time.monotonic() + deadline
        while len(self.datagrams) < count:
            if time.monotonic() > end:
                return False
            self.got.wait(0.02)
            self.got.clear()
        return True

    def close(self):
        """Drain what is queued, stop the thread and close the socket."""
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


def decode_all(datagrams, keyring):
    """Decode every datagram (any WireError fails the test) into Batches."""
    out = []
    for i, d in enumerate(datagrams):
        try:
            out.append(wire.decode_datagram(d, lambda agent: keyring))
        except WireError as exc:
            raise AssertionError("datagram %d (%d bytes) does not decode: %s" % (i, len(d), exc)) from None
    return out


def totals_by_key(rows):
    """Per (src, dst, sport, dport, proto, tos): [packets, bytes], from rows in FIELDS order."""
    agg = defaultdict(lambda: [0, 0])
    for r in rows:
        k = tuple(r[COL[f]] for f in ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "tos"))
        agg[k][0] += r[COL["packets"]]
        agg[k][1] += r[COL["bytes"]]
    return dict(agg)


def read_csv_rows(path):
    """A record CSV back as rows with the wire format's value types."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        assert tuple(next(reader)) == FIELDS
        rows = []
        for line in reader:
            rows.append([int(v) if f in INT_FIELDS else float(v) if f in FLOAT_FIELDS else v
                         for f, v in zip(FIELDS, line)])
    return rows


def as_multiset(rows):
    """Rows as a sorted list of tuples, so two exports compare regardless of order."""
    return sorted(tuple(r) for r in rows)


def write_keys(path, *raw_keys):
    """A key file holding raw_keys in order, mode 0600 from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(k + b"\n" for k in raw_keys))
    return path


def write_conf(path, **values):
    """An agent YAML config from keyword values (lists and strings quoted as JSON, which is YAML)."""
    import json
    path.write_text("".join("%s: %s\n" % (k, json.dumps(v)) for k, v in values.items()))
    return path


def write_udp_flood(path, n, per_flow=30, step=0.001, t0=gen.T0):
    """A classic pcap of n Ethernet/IPv4/UDP frames, per_flow consecutive frames per flow (fast: struct only)."""
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    payload = b"x" * 18
    ip_len = 20 + 8 + len(payload)
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    rec = struct.Struct("<IIII")
    for i in range(n):
        f = i // per_flow
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, i & 0xFFFF, 0, 64, 17, 0,
                         bytes((10, 50, (f >> 8) & 255, f & 255)), b"\xc0\x00\x02\x09")
        frame = eth + ip + struct.pack("!HHHH", 10000 + (f >> 16), 9999, 8 + len(payload), 0) + payload
        usec = int(round(t0 * 1e6)) + i * int(step * 1e6)
        parts.append(rec.pack(usec // 1000000, usec % 1000000, len(frame), len(frame)) + frame)
    Path(path).write_bytes(b"".join(parts))
    return path


# ---- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """The trafficgen scenario plus 300 short DNS-like flows (enough for dozens of datagrams)."""
    pkts = gen.scenario()
    for i in range(300):
        pkts += gen.dns_exchange(gen.T0 + i * 0.29, "10.5.%d.%d" % (i // 200, i % 200 + 1),
                                 "192.0.2.53", 30000 + i)
    pkts.sort(key=lambda tp: tp[0])
    path = tmp_path_factory.mktemp("export") / "traffic.pcap"
    gen.write_pcap(path, pkts)
    return path, gen.expected_totals(pkts)


@pytest.fixture(scope="module")
def flood(tmp_path_factory):
    """300k UDP frames in 10k flows of 30 consecutive frames, 1 ms apart."""
    return write_udp_flood(tmp_path_factory.mktemp("flood") / "flood.pcap", 300_000), 300_000


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    """A key file made by `myason keygen --out`."""
    path = tmp_path_factory.mktemp("keys") / "agent.key"
    myason("keygen", "--out", str(path))
    return path


@pytest.fixture
def collectors():
    """A factory of Collectors (one per host given), all closed at the end of the test."""
    made = []

    def make(*hosts):
        for h in hosts:
            made.append(Collector(h))
        return made[-len(hosts):]
    yield make
    for c in made:
        c.close()


def _have_ipv6_loopback():
    """True when a UDP socket can bind ::1 (IPv6 can be disabled in containers)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---- replay export ------------------------------------------------------------------------

@pytest.mark.parametrize("max_datagram", [600, 1400])
def test_replay_exports_every_record_once_to_each_collector(capture, key_file, collectors, tmp_path,
                                                            max_datagram):
    if not _have_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    pcap, expected = capture
    v4, v6 = collectors("127.0.0.1", "::1")
    conf = write_conf(tmp_path / "agent.yaml", agent_id=AGENT_ID, key_file=str(key_file),
                      collectors=[v4.endpoint, v6.endpoint], max_datagram=max_datagram)
    out = tmp_path / "flows.csv"
    proc = myason("agent", "-ac", str(conf), "--read", str(pcap), "--output", str(out), "--no-progress")
    summary = parse_summary(proc.stderr)
    v4.close()
    v6.close()
    keyring = keys.load_key_file(key_file)
    csv_rows = read_csv_rows(out)
    assert len(csv_rows) == summary["flows_exported"] > 300
    per_collector = []
    for col in (v4, v6):
        assert col.datagrams, "collector %s got nothing" % col.endpoint
        assert max(len(d) for d in col.datagrams) <= max_datagram
        assert {wire.peek_agent(d) for d in col.datagrams} == {AGENT_ID}
        batches = decode_all(col.datagrams, keyring)
        # Sequence numbers: from 0, one per datagram, no gap, no duplicate.
        assert sorted(b.seq for b in batches) == list(range(len(batches)))
        assert {b.agent for b in batches} == {AGENT_ID}
        rows = [r for b in batches for r in b.rows]
        assert {r[COL["agent"]] for r in rows} == {AGENT_ID}
        assert totals_by_key(rows) == expected
        per_collector.append(as_multiset(rows))
    assert per_collector[0] == per_collector[1] == as_multiset(csv_rows)
    assert len(v4.datagrams) == len(v6.datagrams)
    assert summary["datagrams_sent"] == 2 * len(v4.datagrams)
    assert summary["bytes_sent"] == sum(map(len, v4.datagrams)) + sum(map(len, v6.datagrams))
    assert summary["send_errors"] == 0
    if max_datagram == 600:
        # Small datagrams really are packed: most are close to the limit.
        full = [len(d) for d in v4.datagrams[:-1]]
        assert sum(full) / len(full) > 0.75 * max_datagram


def test_rotated_key_file_encrypts_with_the_first_key(capture, collectors, tmp_path):
    pcap, expected = capture
    new, old = Fernet.generate_key(), Fernet.generate_key()
    key_path = write_keys(tmp_path / "two.key", new, old)
    (col,) = collectors("127.0.0.1")
    conf = write_conf(tmp_path / "agent.yaml", agent_id=AGENT_ID, key_file=str(key_path),
                      collectors=[col.endpoint])
    myason("agent", "-ac", str(conf), "--read", str(pcap), "--no-progress", "-q")
    col.close()
    assert col.datagrams
    rows = [r for b in decode_all(col.datagrams, Fernet(new)) for r in b.rows]
    assert totals_by_key(rows) == expected
    # The old key alone authenticates nothing; a collector holding both keys reads everything.
    with pytest.raises(WireError) as err:
        wire.decode_datagram(col.datagrams[0], lambda agent: Fernet(old))
    assert err.value.reason == "bad_token"
    assert len(decode_all(col.datagrams, MultiFernet([Fernet(old), Fernet(new)]))) == len(col.datagrams)


def test_key_file_readable_by_others_is_refused(capture, tmp_path):
    pcap, _ = capture
    key_path = write_keys(tmp_path / "loose.key", Fernet.generate_key())
    os.chmod(key_path, 0o644)
    conf = write_conf(tmp_path / "agent.yaml", key_file=str(key_path), collectors=["127.0.0.1:9"])
    proc = myason("agent", "-ac", str(conf), "--read", str(pcap), check=False)
    assert proc.returncode == 2
    assert "chmod 600" in proc.stderr


# ---- the exporter's interval flush ---------------------------------------------------------

def test_exporter_sends_partial_datagrams_every_interval(tmp_path):
    import queue
    from myason.agent.export import DONE, Exporter, UdpSender
    from myason.agent.output import RecordFile
    key = Fernet(Fernet.generate_key())
    col = Collector("127.0.0.1")
    try:
        inbox = queue.Queue()
        sender = UdpSender([("127.0.0.1", col.port)])
        interval = 0.2
        records = RecordFile(str(tmp_path / "rows.jsonl"))
        exp = Exporter(inbox, 1, wire.Batcher(AGENT_ID, key, 1400), sender, records, interval)
        exp.start()

        def row(i):
            return make_row(src_ip="10.0.0.%d" % i, dst_ip="10.0.0.254", src_port=i, dst_port=53,
                            proto=17, packets=i, bytes=100 * i, first=1.0, last=2.0,
                            agent=AGENT_ID, ip_version=4, end_reason="idle")
        put_at = []
        for round_no in range(3):
            put_at.append(time.monotonic())
            inbox.put([row(round_no * 3 + k + 1) for k in range(3)])
            # Three rows are far from filling a datagram: only the interval timer sends them.
            assert col.wait_for(round_no + 1, deadline=5.0), "no datagram within 5 s"
            delay = col.arrivals[round_no] - put_at[-1]
            assert delay <= interval + 0.4, "partial datagram took %.3f s (interval %.1f)" % (delay, interval)
        # An idle exporter sends nothing (no empty datagrams) ...
        assert not col.wait_for(4, deadline=3 * interval)
        # ... and DONE from its only producer ends it after a final flush.
        inbox.put([row(50)])
        inbox.put(DONE)
        exp.join(5)
        assert not exp.is_alive() and exp.error is None
        assert col.wait_for(4, deadline=2.0)
        batches = decode_all(col.datagrams, key)
        assert [b.seq for b in batches] == [0, 1, 2, 3]
        assert [len(b.rows) for b in batches] == [3, 3, 3, 1]
        assert [r[COL["src_port"]] for b in batches for r in b.rows] == list(range(1, 10)) + [50]
        assert exp.flows == 10 and sender.datagrams == 4 and sender.errors == 0
        assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 10
        sender.close()
    finally:
        col.close()


# ---- SIGTERM: nothing metered is lost ------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_replay_exports_every_metered_packet(flood, key_file, collectors, tmp_path, signum):
    big, per_file = flood
    (col,) = collectors("127.0.0.1")
    conf = write_conf(tmp_path / "agent.yaml", agent_id=AGENT_ID, key_file=str(key_file),
                      collectors=[col.endpoint], cache_inactive_timeout=1.0)
    # The same file ten times: far more work than the time it takes to interrupt it.
    repeats = 10
    argv = [sys.executable, str(ROOT / "myason.py"), "agent", "-ac", str(conf), "--no-progress",
            "--read", *[str(big)] * repeats]
    proc = subprocess.Popen(argv, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The first datagram proves the replay is under way (and the signal handlers installed).
        assert col.wait_for(1, deadline=30.0), "no export within 30 s"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    summary = parse_summary(stderr)
    col.close()
    assert summary["frames"] < repeats * per_file, "the replay ended before the signal arrived"
    assert summary["packets_metered"] == summary["frames"] > 0
    assert summary["flows_cached"] == 0
    batches = decode_all(col.datagrams, keys.load_key_file(key_file))
    assert sorted(b.seq for b in batches) == list(range(len(batches)))
    rows = [r for b in batches for r in b.rows]
    assert len(rows) == summary["flows_exported"]
    assert sum(r[COL["packets"]] for r in rows) == summary["packets_metered"]
    assert summary["exported_by_reason"].get("shutdown", 0) > 0
    assert summary["send_errors"] == 0


# ---- small commands -------------------------------------------------------------------------

def test_start_up_failures_are_messages_not_tracebacks(capture, key_file, tmp_path):
    pcap, _ = capture
    conf = write_conf(tmp_path / "agent.yaml", key_file=str(key_file), collectors=["no-such-host.invalid:9"])
    proc = myason("agent", "-ac", str(conf), "--read", str(pcap), check=False)
    assert proc.returncode == 1
    assert "no-such-host.invalid" in proc.stderr and "Traceback" not in proc.stderr
    proc = myason("agent", "--no-export", "--read", str(pcap), "--output", str(tmp_path / "no" / "x.csv"),
                  check=False)
    assert proc.returncode == 1
    assert "x.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_keygen_out_writes_private_file_and_never_overwrites(tmp_path):
    path = tmp_path / "k.key"
    myason("keygen", "--out", str(path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    before = path.read_bytes()
    (raw,) = keys.load_keys(path)
    Fernet(raw)
    proc = myason("keygen", "--out", str(path), check=False)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr
    assert path.read_bytes() == before


def test_keygen_prints_a_fernet_key():
    out = myason("keygen").stdout.strip()
    f = Fernet(out.encode())
    assert f.decrypt(f.encrypt(b"x")) == b"x"
    assert out != myason("keygen").stdout.strip()


def test_ifconfig_lists_loopback():
    out = myason("ifconfig").stdout
    names = [line.split()[1] for line in out.splitlines()[1:] if line.strip()]
    assert "lo" in names


def test_version_names_dependencies():
    out = myason("--version").stdout
    import cryptography
    import platform
    import scapy
    assert "scapy %s" % scapy.VERSION in out
    assert "cryptography %s" % cryptography.__version__ in out
    assert "Python %s" % platform.python_version() in out
