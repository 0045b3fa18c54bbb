"""Per-source limits, byte budgets and routing between the listener and the processors."""
import multiprocessing as mp
import queue

from myason.collector.intake import MAX_NETWORKS, OTHER, ByteBudget, RoutingQueue, SourceLimiter, nbytes, network_of


def test_a_source_gets_its_rate_and_burst_and_others_are_not_touched():
    lim = SourceLimiter(rate=100, burst=10)
    t = 1000.0
    assert sum(lim.allow("203.0.113.5", t) for _ in range(50)) == 10       # the burst
    assert all(lim.allow("198.51.100.7", t) for _ in range(10))            # another source: its own
    t += 0.5                                                                # 50 tokens back, capped at 10
    assert sum(lim.allow("203.0.113.5", t) for _ in range(50)) == 10
    assert lim.dropped == 80 and lim.by_network == {"203.0.113.0/24": 80}
    assert SourceLimiter(rate=0).allow("x", t)                             # 0 = no limit


def test_memory_stays_bounded_under_spoofed_sources():
    lim = SourceLimiter(rate=1, burst=1, max_sources=100)
    for i in range(5000):
        addr = "10.%d.%d.1" % (i >> 8 & 255, i & 255)     # 5000 sources in 5000 networks
        lim.allow(addr, 0.0)
        lim.allow(addr, 0.0)        # the second one of each source is over its burst
    assert len(lim._buckets) == 100
    assert lim.dropped == 5000 and len(lim.by_network) <= MAX_NETWORKS + 1 and OTHER in lim.by_network
    assert sum(lim.by_network.values()) == 5000


def test_networks():
    assert network_of("192.0.2.77") == "192.0.2.0/24"
    assert network_of("2001:db8:1:2:3::9") == "2001:db8:1:2::/64"
    assert network_of("not an address") == OTHER


def test_byte_budget_thread_and_process():
    for ctx in (None, mp.get_context("spawn")):
        b = ByteBudget(1000, ctx)
        assert b.try_take(5000)                 # an empty queue takes one list, however big
        assert not b.try_take(1)
        b.give(5000)
        assert b.try_take(600) and not b.try_take(600) and b.try_take(400)
        assert b.queued == 1000
        b.reset()
        assert b.queued == 0


def item(agent, n=100):
    from myason import wire
    return (wire.header(agent) + b"x" * n, "127.0.0.1", 0.0)


def test_routing_keeps_an_agent_on_one_queue_and_counts_what_does_not_fit():
    qs = [queue.Queue(10), queue.Queue(10)]
    budgets = [ByteBudget(1000), ByteBudget(1000)]
    r = RoutingQueue(qs, budgets)
    agents = ["soak-0", "soak-4"]               # crc32 even and odd
    r.put_nowait([item(a) for a in agents for _ in range(3)])
    got = [qs[i].get_nowait() for i in range(2)]
    for b, g in zip(budgets, got):
        b.give(nbytes(g))                       # what a processor does when it takes a list
    assert sorted(len(g) for g in got) == [3, 3] and r.dropped == 0
    assert all(len({x[0][7:13] for x in g}) == 1 for g in got)
    # Budget: the bytes wait in the queues until the processor gives them back.
    r.put_nowait([item("soak-0", 400) for _ in range(2)])
    r.put_nowait([item("soak-0", 400) for _ in range(2)])           # over 1000 bytes: dropped
    assert r.dropped == 2


def test_block_waits_for_room_then_gives_up_only_when_stopping():
    import threading
    import time
    q = queue.Queue(1)
    stop = threading.Event()
    r = RoutingQueue([q], [ByteBudget(1 << 20)], block=True, stopping=stop)
    r.put_nowait([item("a")])
    t = threading.Thread(target=r.put_nowait, args=([item("a")],))
    t.start()
    time.sleep(0.2)
    assert t.is_alive() and r.dropped == 0       # waiting, not dropping
    q.get_nowait()
    t.join(5)
    assert not t.is_alive() and q.qsize() == 1 and r.dropped == 0
    r.STOP_WAIT = 0.1
    stop.set()
    r.put_nowait([item("a")])                    # stopping, and nobody takes: dropped, counted
    assert r.dropped == 1
