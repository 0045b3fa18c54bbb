"""The exporter thread: batching, interval flushes, every collector, ordered stop."""
import os
import queue
import socket
import time

import pytest
from cryptography.fernet import Fernet, MultiFernet

from myason import wire
from myason.agent.export import DONE, Exporter, UdpSender
from myason.schema import FIELDS

KEY = Fernet.generate_key()


def row(i):
    return ["10.0.%d.%d" % (i // 250, i % 250), "192.0.2.1", 1024 + i, 443, 6, 0, 1 + i % 7, 60 * (1 + i % 7),
            1700000000.0 + i, 1700000001.0 + i, 18, "t1", "", 0, 0, 4, 0, "", 0, 0, 0, 0, "idle"]


@pytest.fixture()
def collectors():
    socks = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, 0))
        s.settimeout(0.05)
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


def drain(sock, deadline):
    got = []
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(65535))
        except socket.timeout:
            if got:
                break
    return got


def start(collectors, interval=0.2, producers=1):
    targets = [("127.0.0.1", collectors[0].getsockname()[1]), ("::1", collectors[1].getsockname()[1])]
    q = queue.Queue(100)
    sender = UdpSender(targets)
    ex = Exporter(q, producers, wire.Batcher("t1", MultiFernet([Fernet(KEY)]), 1400), sender, None, interval)
    ex.start()
    return q, ex, sender


def decode_all(dgrams):
    keys = MultiFernet([Fernet(KEY)])
    return [wire.decode_datagram(d, lambda agent: keys) for d in dgrams]


def test_every_row_reaches_every_collector_once_in_order(collectors):
    q, ex, sender = start(collectors)
    rows = [row(i) for i in range(500)]
    for i in range(0, 500, 50):
        q.put(rows[i:i + 50])
    q.put(DONE)
    ex.join(10)
    assert not ex.is_alive() and ex.flows == 500
    for sock in collectors:
        batches = decode_all(drain(sock, time.monotonic() + 5))
        assert [b.seq for b in batches] == list(range(len(batches)))
        assert [r for b in batches for r in b.rows] == rows
    assert sender.errors == 0 and sender.datagrams == 2 * len(batches)


def test_partial_datagram_is_sent_within_the_interval(collectors):
    q, ex, _ = start(collectors, interval=0.2)
    t0 = time.monotonic()
    q.put([row(1)])
    got = drain(collectors[0], t0 + 3)
    elapsed = time.monotonic() - t0
    assert len(got) == 1 and elapsed < 2.0
    (b,) = decode_all(got)
    assert b.rows == [row(1)] and len(b.rows[0]) == len(FIELDS)
    q.put(DONE)
    ex.join(5)


def test_waits_for_every_producer_before_stopping(collectors):
    q, ex, _ = start(collectors, producers=2)
    q.put(DONE)
    q.put([row(2)])
    time.sleep(0.05)
    assert ex.is_alive()
    q.put(DONE)
    ex.join(5)
    assert not ex.is_alive() and ex.flows == 1


def test_unencodable_row_is_counted_not_fatal(collectors):
    q, ex, _ = start(collectors)
    bad = row(3)
    bad[12] = os.urandom(3000).hex()   # an incompressible name no datagram can hold
    q.put([bad, row(4)])
    q.put(DONE)
    ex.join(5)
    assert ex.unencodable == 1 and ex.error is None
    rows = [r for b in decode_all(drain(collectors[0], time.monotonic() + 3)) for r in b.rows]
    assert rows == [row(4)]


def test_unresolvable_collector_fails_at_start():
    with pytest.raises(OSError, match="does not resolve"):
        UdpSender([("no-such-host.invalid", 9999)])


def test_reconfigure_switches_key_and_collectors_without_a_gap(collectors):
    """Rows batched before reconfigure go out with the old setup; the sequence goes on unbroken."""
    key2 = Fernet.generate_key()
    a_port = collectors[0].getsockname()[1]
    q = queue.Queue(100)
    sender = UdpSender([("127.0.0.1", a_port)])
    ex = Exporter(q, 1, wire.Batcher("t1", MultiFernet([Fernet(KEY)]), 1400), sender, None, 0.1)
    ex.start()
    q.put([row(i) for i in range(30)])
    new_sender = UdpSender([("127.0.0.1", a_port), ("::1", collectors[1].getsockname()[1])])
    ex.reconfigure(lambda seq: wire.Batcher("t1", MultiFernet([Fernet(key2)]), 1400, first_seq=seq),
                   new_sender, 0.2)
    assert ex.applied.wait(5)
    q.put([row(i) for i in range(30, 60)])
    q.put(DONE)
    ex.join(10)
    assert not ex.is_alive() and ex.error is None and ex.interval == 0.2
    old_keys, new_keys = MultiFernet([Fernet(KEY)]), MultiFernet([Fernet(key2)])
    a = drain(collectors[0], time.monotonic() + 5)
    b = drain(collectors[1], time.monotonic() + 5)
    first = [wire.decode_datagram(d, lambda _: old_keys) for d in a[:1]]
    later = [wire.decode_datagram(d, lambda _: new_keys) for d in a[1:]]
    assert [x.seq for x in first + later] == list(range(len(a)))
    assert [r for x in first for r in x.rows] == [row(i) for i in range(30)]
    assert [r for x in later for r in x.rows] == [row(i) for i in range(30, 60)]
    assert [wire.decode_datagram(d, lambda _: new_keys).seq for d in b] == [x.seq for x in later]
    # Counters carry over from the replaced sender, which is closed.
    assert ex.sender is new_sender and new_sender.datagrams == len(a) + len(b)
    assert sender.socks[socket.AF_INET].fileno() == -1


def test_add_producer_waits_for_one_more_done(collectors):
    q, ex, _ = start(collectors, producers=1)
    ex.add_producer()
    q.put(DONE)
    time.sleep(0.05)
    assert ex.is_alive()
    q.put(DONE)
    ex.join(5)
    assert not ex.is_alive()
