"""Attacks on a running collector's resources (issue 12): a full disk, an oversized batch, floods.

Each test performs the attack against a real collector on loopback and checks that nothing
accepted is lost, that the collector keeps going, and that what it drops is counted.
"""
import os
import socket
import signal
import subprocess
import threading
import time

import pytest

from myason import wire
from tests.support.services import wait_until
from tests.support.collector import scrape, spool_files, sqlite_rows
from tests.support.streams import ROWS_PER_DATAGRAM, Stream, collector, row_key


def metric(c, name, key=None):
    return scrape(c.metrics_port).get((name, key), 0)


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs mounted for the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.root
@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_full_disk_holds_the_data_and_the_collector_resumes_when_space_returns(tmp_path, tmpfs, mode):
    """The spool on a 4 MiB tmpfs, filled by another file mid-stream, then freed."""
    db = tmp_path / "flows.db"
    c = collector(tmp_path, [{"type": "sqlite", "path": str(db)}], spool_dir=str(tmpfs / "spool"),
                  processors_mode=mode, processors_number=1 if mode == "thread" else 2)
    s = Stream(c)
    with c:
        s.send(20)
        wait_until(lambda: len(sqlite_rows(db)) == 20 * ROWS_PER_DATAGRAM, timeout=30)
        filler = tmpfs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:                                 # the disk is full now (unbuffered: nothing left to flush)
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        s.send(200)
        wait_until(lambda: metric(c, "myason_spool_commit_errors_total") > 0, timeout=30)
        assert metric(c, "myason_processors_stalled") >= 1
        code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                               "http://127.0.0.1:%d/healthz" % c.metrics_port], capture_output=True, text=True)
        assert code.stdout == "200"          # stalled is alive: it retries by itself
        time.sleep(1)
        filler.unlink()                      # space again
        wait_until(lambda: len(sqlite_rows(db)) == 220 * ROWS_PER_DATAGRAM, timeout=60, interval=0.2)
        wait_until(lambda: metric(c, "myason_processors_stalled") == 0, timeout=30)
        assert c.stop() == 0, c.log()
    summary = c.summary()
    stored = [row_key(r) for r in sqlite_rows(db)]
    assert len(stored) == len(set(stored)) == 220 * ROWS_PER_DATAGRAM
    assert summary["agents"][s.agent]["gaps"] == 0 and summary["kernel_drops"] == 0
    assert "cannot write to the spools" in c.log()


def test_a_batch_larger_than_the_spool_cap_is_stored_not_dropped(tmp_path):
    db = tmp_path / "flows.db"
    c = collector(tmp_path, [{"type": "sqlite", "path": str(db)}], spool_max_bytes=1 << 20, batch_rows=100000,
                  batch_interval=2.0)
    s = Stream(c)
    with c:
        s.send(700)                 # 14,000 rows in one batch: well over 1 MiB of JSON
        wait_until(lambda: len(sqlite_rows(db)) == 700 * ROWS_PER_DATAGRAM, timeout=60, interval=0.2)
        assert c.stop() == 0, c.log()
    summary = c.summary()
    assert summary["spool_dropped"] == 0 and summary["queue_dropped"] == 0
    assert spool_files(c, "errors") == []


def forged(agent, n):
    """A datagram with a real agent id and a token that fails the HMAC check."""
    return wire.header(agent) + b"\x80" + os.urandom(8 + 16 + 16 * n + 32)


def flood(port, dgram, seconds, source="127.0.0.2", stop=None, rate=None):
    """Send `dgram` from `source` (at `rate` per second, or as fast as the socket takes it);
    returns the number sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sent, t0 = 0, time.monotonic()
    while True:
        now = time.monotonic()
        if now - t0 >= seconds or (stop is not None and stop.is_set()):
            break
        if rate and sent > (now - t0) * rate:
            time.sleep(0.001)
            continue
        try:
            sock.sendto(dgram, ("127.0.0.1", port))
            sent += 1
        except OSError:
            time.sleep(0.0005)
    sock.close()
    return sent


def forged_accounted(c, s, sent):
    """Every forged datagram is counted: limited, dropped at a full queue or by the kernel, or
    refused by the HMAC check."""
    m = scrape(c.metrics_port)
    return (m.get(("myason_rejects_total", "bad_token"), 0) + m.get(("myason_rate_limited_total", None), 0)
            + m.get(("myason_queue_dropped_total", None), 0) + m.get(("myason_kernel_drops_total", None), 0)) >= sent


@pytest.mark.root
def test_a_forged_flood_into_a_stalled_processor_takes_bounded_memory(tmp_path):
    """The processor process is stopped; one source floods ~14 KB forged datagrams for 3 s."""
    db = tmp_path / "flows.db"
    c = collector(tmp_path, [{"type": "sqlite", "path": str(db)}], processors_mode="process",
                  processors_number=1, queue_max_bytes=4 << 20, spool_policy="reject")
    s = Stream(c)
    with c:
        s.send(5)
        wait_until(lambda: len(sqlite_rows(db)) == 5 * ROWS_PER_DATAGRAM, timeout=30)
        parent = c.proc.pid
        child = int(subprocess.run(["pgrep", "-P", str(parent), "-f", "spawn_main"], capture_output=True,
                                   text=True).stdout.split()[0])
        rss0 = _rss_mib(parent)
        os.kill(child, signal.SIGSTOP)      # the processor takes nothing any more
        try:
            dgram = forged(s.agent, 900)
            sent = flood(c.port, dgram, 3.0)
            wait_until(lambda: metric(c, "myason_queue_dropped_total") > 0, timeout=10)
            # The queue holds at most queue_max_bytes (4 MiB), not the flood's hundreds of MB.
            assert sent * len(dgram) > 100 << 20
            assert _rss_mib(parent) - rss0 < 4 + 40
            assert metric(c, "myason_queue_bytes") <= 4 << 20
        finally:
            os.kill(child, signal.SIGCONT)
        wait_until(lambda: metric(c, "myason_queue_bytes") == 0, timeout=30)
        s.send(100)
        wait_until(lambda: len(sqlite_rows(db)) == 105 * ROWS_PER_DATAGRAM, timeout=60, interval=0.2)
        # (The kernel's drop counter comes with the next datagram received: the real ones bring it.)
        wait_until(lambda: forged_accounted(c, s, sent), timeout=30, interval=0.2)
        assert c.stop() == 0, c.log()
    summary = c.summary()
    assert summary["agents"][s.agent]["gaps"] == 0
    assert summary["rejects"].get("bad_token", 0) + summary["rate_limited"] + summary["queue_dropped"] \
        + summary["kernel_drops"] == sent


@pytest.mark.root
def test_a_forged_flood_from_one_source_does_not_crowd_out_another(tmp_path, limit=200.0):
    """127.0.0.2 floods ~14 KB forged datagrams while the processor is stalled for a moment; the
    real agent on 127.0.0.1 sends 100 datagrams meanwhile. Without the per-source limit (limit 0)
    the flood fills the queue's bytes and the real datagrams are dropped with it."""
    db = tmp_path / "flows.db"
    c = collector(tmp_path, [{"type": "sqlite", "path": str(db)}], processors_mode="process", processors_number=1,
                  queue_max_bytes=16 << 20, source_rate=limit, source_burst=max(limit, 1.0), spool_policy="reject")
    s = Stream(c)
    stop = threading.Event()
    with c:
        s.send(5)
        wait_until(lambda: len(sqlite_rows(db)) == 5 * ROWS_PER_DATAGRAM, timeout=30)
        child = int(subprocess.run(["pgrep", "-P", str(c.proc.pid), "-f", "spawn_main"], capture_output=True,
                                   text=True).stdout.split()[0])
        result = {}
        flooder = threading.Thread(target=lambda: result.setdefault(
            "sent", flood(c.port, forged(s.agent, 900), 1.5, stop=stop, rate=20000)))
        os.kill(child, signal.SIGSTOP)
        try:
            flooder.start()
            wait_until(lambda: metric(c, "myason_datagrams_total") > 2000, timeout=10)
            for _ in range(10):
                s.send(10)
                time.sleep(0.05)
            flooder.join()
        finally:
            stop.set()
            os.kill(child, signal.SIGCONT)
        sent = result["sent"]
        wait_until(lambda: len(sqlite_rows(db)) == 105 * ROWS_PER_DATAGRAM, timeout=30, interval=0.2)
        wait_until(lambda: forged_accounted(c, s, sent), timeout=30, interval=0.2)
        by_net = {k: v for (n, k), v in scrape(c.metrics_port).items() if n == "myason_rate_limited_by_network_total"}
        assert set(by_net) == {"127.0.0.0/24"} and by_net["127.0.0.0/24"] > sent / 2
        assert c.stop() == 0, c.log()
    summary = c.summary()
    assert summary["agents"][s.agent]["gaps"] == 0
    assert summary["rejects"].get("bad_token", 0) + summary["rate_limited"] + summary["queue_dropped"] \
        + summary["kernel_drops"] == sent


def _rss_mib(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.root
def test_datagrams_that_waited_in_the_kernel_buffer_past_the_token_ttl_are_accepted(tmp_path):
    """The whole collector stopped (starved of CPU, say) for longer than token_ttl while an agent
    sends: its datagrams wait in the socket's buffer. The token's age is judged at the kernel's
    arrival time, not when the listener got round to reading them."""
    db = tmp_path / "flows.db"
    c = collector(tmp_path, [{"type": "sqlite", "path": str(db)}], token_ttl=2.0)
    s = Stream(c)
    with c:
        s.send(5)
        wait_until(lambda: len(sqlite_rows(db)) == 5 * ROWS_PER_DATAGRAM, timeout=30)
        os.kill(c.proc.pid, signal.SIGSTOP)
        try:
            s.send(50)
            time.sleep(4.0)             # the stop itself: twice the ttl
        finally:
            os.kill(c.proc.pid, signal.SIGCONT)
        wait_until(lambda: len(sqlite_rows(db)) == 55 * ROWS_PER_DATAGRAM, timeout=30, interval=0.2)
        assert c.stop() == 0, c.log()
    summary = c.summary()
    assert summary["rejects"] == {} and summary["agents"][s.agent]["gaps"] == 0
