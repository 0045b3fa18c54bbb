"""The UDP listener with real sockets: drains, size cap, queue overflow counted, clean stop."""
import queue
import socket
import threading
import time

from myason.collector.listener import Listener


def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def start(outbox, **kw):
    stop = threading.Event()
    lst = Listener(["127.0.0.1", "::1"], 0, outbox, stop, rcvbuf=1 << 20, **kw)
    lst.start()
    return lst, stop


def test_receives_on_ipv4_and_ipv6_and_batches():
    out = queue.Queue()
    lst, stop = start(out, max_datagram=1000)
    (h4, p4), (h6, p6) = lst.addresses()
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for i in range(100):
        s4.sendto(b"v4-%d" % i, (h4, p4))
        s6.sendto(b"v6-%d" % i, (h6, p6))
    got = []
    assert wait_until(lambda: (got.extend(out.get_nowait()) if not out.empty() else None) or len(got) >= 200)
    stop.set()
    lst.join(5)
    assert not lst.is_alive()
    assert sorted(d for d, _, _ in got) == sorted([b"v4-%d" % i for i in range(100)] + [b"v6-%d" % i for i in range(100)])
    assert {a for _, a, _ in got} == {"127.0.0.1", "::1"}
    assert all(isinstance(t, float) for _, _, t in got)
    assert lst.stats()["datagrams"] == 200


def test_oversized_datagrams_are_rejected_and_counted():
    out = queue.Queue()
    lst, stop = start(out, max_datagram=600)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x" * 601, lst.addresses()[0])
    s.sendto(b"y" * 600, lst.addresses()[0])
    assert wait_until(lambda: lst.stats()["datagrams"] == 2)
    stop.set()
    lst.join(5)
    items = []
    while not out.empty():
        items += out.get_nowait()
    assert [d for d, _, _ in items] == [b"y" * 600]
    assert lst.stats()["oversized"] == 1


def test_full_queue_drops_and_counts():
    out = queue.Queue(1)
    out.put("occupied")
    lst, stop = start(out)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(10):
        s.sendto(b"%d" % i, lst.addresses()[0])
    assert wait_until(lambda: lst.stats()["queue_dropped"] == 10)
    stop.set()
    lst.join(5)


def test_datagrams_waiting_in_the_kernel_are_taken_at_stop():
    out = queue.Queue()
    stop = threading.Event()
    stop.set()                      # stopped before it ever ran its loop
    lst = Listener(["127.0.0.1"], 0, out, stop, rcvbuf=1 << 20)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(50):
        s.sendto(b"%d" % i, lst.addresses()[0])
    lst.start()
    lst.join(5)
    items = []
    while not out.empty():
        items += out.get_nowait()
    assert len(items) == 50
