"""DatagramProcessor: end-to-end handling of one datagram, replay window, gaps, restarts, fuzzing."""
import base64
import logging
import random
import threading
import zlib
from collections import Counter

import orjson
import pytest
from cryptography.fernet import Fernet

from myason import wire
from myason.collector.datagram import DatagramProcessor
from myason.schema import ROW_FIELDS
from tests.support.datagrams import ADDR, KEY, LAB_ADDR, NOW, dgram, keystore, row


def seal(plain, agent="edge-01", key=KEY, stamp=NOW):
    """A datagram around an arbitrary plaintext (already compressed or not)."""
    token = Fernet(key).encrypt_at_time(plain, int(stamp))
    return wire.header(agent) + base64.urlsafe_b64decode(token)


def body(seq, flows, agent="edge-01", sent=None, **extra):
    obj = {"v": 1, "agent": agent, "seq": seq, "sent": NOW - 1 if sent is None else sent, "flows": flows}
    obj.update(extra)
    return zlib.compress(orjson.dumps(obj))


@pytest.fixture
def proc():
    return DatagramProcessor(keystore(), ttl=5.0, window=64)


def accepted(p, data, addr=ADDR):
    return len(p.handle(data, addr, NOW)) > 0


def test_valid_datagram_gives_store_rows(proc):
    rows = [row(i=i) for i in range(20)]
    out = proc.handle(dgram(0, rows=rows), ADDR, NOW)
    assert len(out) == 20 and all(len(r) == len(ROW_FIELDS) for r in out)
    assert out[3] == rows[3] + [NOW, ADDR]
    st = proc.agents["edge-01"]
    assert (st.datagrams, st.flows, st.gaps, st.last_seq, st.last_seen) == (1, 20, 0, 0, NOW)
    assert proc.rejects == {}


def test_duplicate_is_a_replay(proc):
    d = dgram(0)
    assert accepted(proc, d)
    assert proc.handle(d, ADDR, NOW) == []
    assert proc.rejects == {"replay": 1} and proc.agents["edge-01"].replays == 1


def test_reordering_inside_the_window_fills_gaps(proc):
    for seq in (0, 4):
        assert accepted(proc, dgram(seq))
    assert proc.agents["edge-01"].gaps == 3
    for seq in (2, 1):
        assert accepted(proc, dgram(seq))
    assert proc.agents["edge-01"].gaps == 1
    assert not accepted(proc, dgram(2))
    assert accepted(proc, dgram(3))
    assert proc.agents["edge-01"].gaps == 0
    assert proc.rejects == {"replay": 1}


def test_below_the_window_is_a_replay_and_lost_slots_stay_counted(proc):
    assert accepted(proc, dgram(0))
    assert accepted(proc, dgram(100))           # jump beyond the 64-slot window
    assert proc.agents["edge-01"].gaps == 99
    assert not accepted(proc, dgram(10))        # below the window, older sent: replay
    assert accepted(proc, dgram(60))            # inside the window, never seen
    assert proc.agents["edge-01"].gaps == 98
    assert not accepted(proc, dgram(60))
    assert proc.rejects == {"replay": 2}


def test_first_sequence_seen_starts_the_gap_count(proc):
    assert accepted(proc, dgram(500))
    assert accepted(proc, dgram(499))           # sent before we listened: not a gap taken back
    assert proc.agents["edge-01"].gaps == 0


def test_agent_restart_is_not_a_replay_and_old_run_replays_stay_rejected(proc):
    old = [dgram(s, sent=NOW - 3 + s * 0.01) for s in range(11)]
    for d in old[:10]:
        assert accepted(proc, d)
    # New run, later clock, sequence back to 0.
    new = [dgram(s, sent=NOW - 1 + s * 0.01) for s in range(5)]
    assert accepted(proc, new[0])
    st = proc.agents["edge-01"]
    assert st.restarts == 1
    for d in old[:10] + new[:1]:
        assert not accepted(proc, d)
    assert accepted(proc, new[1])
    # The old run's last datagram arrives late: checked against the old run's window.
    assert accepted(proc, old[10])
    assert not accepted(proc, old[10])
    assert accepted(proc, new[2])
    assert st.restarts == 1 and st.datagrams == 14
    assert proc.rejects == {"replay": 12}


def test_restart_with_reordered_first_datagrams(proc):
    for s in range(5):
        assert accepted(proc, dgram(s, sent=NOW - 3 + s * 0.01))
    new = [dgram(s, sent=NOW - 1 + s * 0.01) for s in range(3)]
    assert accepted(proc, new[1])               # reveals the restart
    assert accepted(proc, new[0])               # sent before it, after the old run: fills a slot
    assert not accepted(proc, new[0])
    assert accepted(proc, new[2])
    assert proc.agents["edge-01"].restarts == 1


def test_restart_inside_the_window_and_twice(proc):
    for s in range(50, 60):
        assert accepted(proc, dgram(s, sent=NOW - 4 + s * 0.001))
    # Seq 0 lies inside the 64-slot window and was never seen, but its sent time is later.
    assert accepted(proc, dgram(0, sent=NOW - 3))
    assert accepted(proc, dgram(0, sent=NOW - 2))
    assert proc.agents["edge-01"].restarts == 2
    # Two runs back: rejected.
    assert not accepted(proc, dgram(55, sent=NOW - 4 + 55 * 0.001))
    assert not accepted(proc, dgram(0, sent=NOW - 3))


def test_invalid_rows_reject_the_whole_datagram_without_taking_its_sequence(proc):
    bad = dgram(0, rows=[row(i=1), row(i=2, vlan=5000)])
    assert proc.handle(bad, ADDR, NOW) == []
    assert proc.rejects == {"invalid_vlan": 1}
    assert accepted(proc, dgram(0))


def test_source_networks_and_unknown_agents(proc):
    assert proc.handle(dgram(0, agent="lab-7"), "198.51.100.1", NOW) == []
    assert accepted(proc, dgram(0, agent="lab-7"), LAB_ADDR)
    assert proc.handle(dgram(0, agent="ghost", key=Fernet.generate_key()), ADDR, NOW) == []
    assert proc.rejects == {"not_allowed": 1, "unknown_agent": 1}


def test_ttl_uses_the_receive_time(proc):
    d = dgram(0, stamp=NOW - 4)
    assert proc.handle(d, ADDR, NOW + 10) == []
    assert proc.rejects == {"expired": 1}
    assert accepted(proc, d)


def test_threads_accept_each_datagram_once():
    p = DatagramProcessor(keystore(), window=4096)
    data = [dgram(s) for s in range(200)]
    out = []

    def run(order):
        for d in order:
            out.extend(p.handle(d, ADDR, NOW))

    threads = [threading.Thread(target=run, args=(random.Random(i).sample(data, len(data)),))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 200 and p.rejects == {"replay": 600}
    assert p.agents["edge-01"].gaps == 0


def test_rejections_are_logged_rate_limited_without_secrets(proc, caplog):
    caplog.set_level(logging.WARNING, logger="myason.collector.datagram")
    wrong = dgram(0, key=Fernet.generate_key())
    for _ in range(50):
        proc.handle(wrong, ADDR, NOW)
    records = [r for r in caplog.records if "bad_token" in r.getMessage()]
    assert len(records) == 1
    msg = records[0].getMessage()
    assert ADDR in msg and "edge-01" in msg and KEY.decode()[:16] not in msg
    assert proc.rejects == {"bad_token": 50}


def test_unknown_agent_is_logged_per_agent_id_and_source(proc, caplog):
    # An agent whose agent_id is not in the keystore runs on unaware: the collector's log line is
    # the only place that says which id and which address were refused.
    caplog.set_level(logging.WARNING, logger="myason.collector.datagram")
    stranger = dgram(0, agent="sensor-1", key=Fernet.generate_key())
    other = dgram(0, agent="vm-17", key=Fernet.generate_key())
    for _ in range(50):
        for data, addr in ((stranger, ADDR), (other, ADDR), (stranger, LAB_ADDR)):
            proc.handle(data, addr, NOW)
    lines = [r.getMessage() for r in caplog.records if "unknown_agent" in r.getMessage()]
    assert len(lines) == 3, lines
    for agent, addr in (("sensor-1", ADDR), ("vm-17", ADDR), ("sensor-1", LAB_ADDR)):
        assert sum("'%s'" % agent in m and addr in m for m in lines) == 1, (agent, addr, lines)
    assert all("keystore" in m for m in lines)
    assert proc.rejects == {"unknown_agent": 150}


def test_unknown_agent_lines_say_how_many_were_not_logged_and_stay_bounded(caplog):
    caplog.set_level(logging.WARNING, logger="myason.collector.datagram")
    now = [0.0]
    p = DatagramProcessor(keystore(), ttl=5.0, window=64, log_clock=lambda: now[0])
    stranger = dgram(0, agent="sensor-1", key=Fernet.generate_key())
    for _ in range(20):
        p.handle(stranger, ADDR, NOW)
    now[0] = 10.0
    p.handle(stranger, ADDR, NOW)
    lines = [r.getMessage() for r in caplog.records if "unknown_agent" in r.getMessage()]
    assert len(lines) == 2 and "19 more" in lines[1], lines
    # A flood of made-up ids from made-up addresses: a bounded number of lines, not one each.
    caplog.clear()
    for i in range(2000):
        p.handle(dgram(0, agent="x%d" % i, key=KEY), "198.51.%d.%d" % (i // 250, i % 250), NOW)
    lines = [r for r in caplog.records if "unknown_agent" in r.getMessage()]
    assert 0 < len(lines) <= 20
    assert p.rejects["unknown_agent"] == 2021


def test_never_raises_on_odd_arguments(proc):
    for data in (None, 12, "text", b"", bytearray(b"MYAS"), memoryview(b"x" * 10)):
        assert proc.handle(data, ADDR, NOW) == []
    assert proc.handle(dgram(0), None, NOW) != []  # no networks configured for edge-01
    assert "internal" not in proc.rejects


# --- fuzz -------------------------------------------------------------------------------

BAD_ROWS = [("vlan", 4096, "invalid_vlan"), ("packets", 0, "invalid_packets"),
            ("src_ip", "1.2.3", "invalid_src_ip"), ("first", NOW, "invalid_first_after_last"),
            ("agent", "lab-7", "invalid_agent"), ("proto", True, "invalid_proto"),
            ("end_reason", "boom", "invalid_end_reason"), ("bytes", 1, "invalid_bytes")]


def test_fuzz_hostile_datagrams_with_valid_traffic_interleaved():
    rng = random.Random(20261122)
    # A 64 KiB cap keeps the 600-odd bombs cheap; the cap works the same at any size.
    p = DatagramProcessor(keystore(), ttl=5.0, window=4096, max_plain=1 << 16)
    bomb = zlib.compress(b"\0" * (1 << 20), 9)
    seq = {"edge-01": 0, "lab-7": 0}
    sent_valid, expected_rows, returned = [], [], []
    expected = Counter()

    def next_seq(agent="edge-01"):
        seq[agent] += 1
        return seq[agent]

    def valid():
        agent = rng.choice(("edge-01", "lab-7"))
        s = next_seq(agent)
        rows = [row(agent, s * 20 + i) for i in range(rng.randint(0, 5))]
        d = dgram(s, sent=NOW - 3 + s * 1e-4, agent=agent, rows=rows)
        addr = LAB_ADDR if agent == "lab-7" else ADDR
        sent_valid.append((d, addr))
        expected_rows.extend(r + [NOW, addr] for r in rows)
        return d, addr, None

    def good():
        return dgram(next_seq(), sent=NOW - 3 + seq["edge-01"] * 1e-4)

    def random_bytes():
        data = rng.randbytes(rng.randint(0, 300))
        if data.startswith(wire.MAGIC):
            data = b"X" + data
        return data, ADDR, "short" if len(data) < 7 else "bad_magic"

    def truncated():
        d = good()
        n = rng.randrange(0, len(d))
        head = len(wire.header("edge-01"))
        if n < head:
            reason = "short"
        else:
            tok = n - head
            reason = "short" if tok < 73 else "bad_token"
        return d[:n], ADDR, reason

    def bit_flip():
        d = bytearray(good())
        head = len(wire.header("edge-01"))
        pos = rng.randrange(head, len(d))
        d[pos] ^= 1 << rng.randrange(8)
        return bytes(d), ADDR, "bad_token"

    def header_damage():
        d = bytearray(good())
        pos, reason = rng.choice([(0, "bad_magic"), (4, "bad_version"), (5, "bad_flags")])
        d[pos] ^= 1 << rng.randrange(8)
        return bytes(d), ADDR, reason

    cases = [
        random_bytes, truncated, bit_flip, header_damage,
        lambda: (dgram(1, agent="ghost%d" % rng.randrange(99), key=Fernet.generate_key()), ADDR,
                 "unknown_agent"),
        lambda: (dgram(next_seq(), key=Fernet.generate_key()), ADDR, "bad_token"),
        lambda: (dgram(next_seq(), stamp=NOW - rng.randint(6, 10 ** 6)), ADDR, "expired"),
        lambda: (dgram(next_seq(), stamp=NOW + rng.randint(61, 10 ** 6)), ADDR, "future"),
        lambda: (wire.header("edge-01") + bytes(rng.randint(65508 - 8, 70000)), ADDR, "oversized"),
        lambda: (seal(bomb), ADDR, "too_large"),
        lambda: (seal(b"not zlib at all"), ADDR, "bad_compression"),
        lambda: (seal(zlib.compress(b'{"v":1,"agent":')), ADDR, "bad_json"),
        lambda: (seal(body(next_seq(), [], v=2)), ADDR, "bad_schema"),
        lambda: (seal(body(next_seq(), [], agent="lab-7")), ADDR, "agent_mismatch"),
        lambda: (seal(body(next_seq(), [row()[:-1]])), ADDR, "bad_row"),
        lambda: (seal(body(next_seq(), [row()], sent=NOW - 500)), ADDR, "invalid_sent"),
        lambda: (dgram(1, agent="lab-7"), "198.51.100.%d" % rng.randrange(256), "not_allowed"),
        "replay", "bad_field",
    ]
    hostile = 0
    for i in range(10_000 + 2_000):
        if i % 6 == 0:
            data, addr, reason = valid()
        else:
            case = rng.choice(cases)
            if case == "replay":
                if not sent_valid:
                    continue
                data, addr = rng.choice(sent_valid)
                reason = "replay"
            elif case == "bad_field":
                name, value, reason = rng.choice(BAD_ROWS)
                rows = [row(i=1), row(i=2, **{name: value})]
                data, addr = dgram(next_seq(), rows=rows), ADDR
            else:
                data, addr, reason = case()
            hostile += 1
            expected[reason] += 1
        out = p.handle(data, addr, NOW)
        if reason is None:
            returned.extend(out)
        else:
            assert out == [], reason
        if hostile >= 10_000:
            break
    assert hostile == 10_000
    assert returned == expected_rows
    assert sum(p.rejects.values()) == hostile
    assert dict(p.rejects) == dict(expected)
    assert p.agents["edge-01"].replays + p.agents["lab-7"].replays == expected["replay"]


def test_random_runs_reordering_and_replays_never_accept_a_datagram_twice():
    rng = random.Random(3)
    p = DatagramProcessor(keystore(), window=32)
    sent_time, stream = NOW - 4.0, []
    for run in range(4):                      # four agent runs, each restarting at seq 0
        for s in range(rng.randint(20, 80)):
            sent_time += 0.001
            stream.append((run, s, dgram(s, sent=sent_time, rows=[])))
        sent_time += 0.05                     # the restart takes a while
    # Local reordering (may cross a restart), duplicates and replays of anything seen so far.
    order = list(stream)
    for i in range(len(order) - 1):
        if rng.random() < 0.3:
            j = min(len(order) - 1, i + rng.randint(1, 6))
            order[i], order[j] = order[j], order[i]
    deliveries = []
    for k, item in enumerate(order):
        deliveries.append(item)
        if rng.random() < 0.3:
            deliveries.append(rng.choice(order[:k + 1]))
    taken = Counter()
    for run, s, d in deliveries:
        before = p.agents["edge-01"].datagrams if p.agents else 0
        p.handle(d, ADDR, NOW)
        taken[(run, s)] += p.agents["edge-01"].datagrams - before
    assert max(taken.values()) == 1
    assert sum(taken.values()) >= 0.95 * len(stream)
    assert p.agents["edge-01"].restarts == 3
    assert sum(p.rejects.values()) == len(deliveries) - sum(taken.values())
    assert set(p.rejects) == {"replay"}


def test_clock_skew_from_the_config_bounds_future_tokens_and_sent_times():
    from myason.collector.validate import Limits
    strict = DatagramProcessor(keystore(), ttl=5.0, window=64, limits=Limits(clock_skew=5.0), clock=lambda: NOW)
    loose = DatagramProcessor(keystore(), ttl=5.0, window=64, clock=lambda: NOW)
    ahead = dgram(1, sent=NOW + 10, stamp=NOW + 10)
    assert loose.handle(ahead, ADDR, NOW)
    assert strict.handle(ahead, ADDR, NOW) == [] and strict.rejects == {"future": 1}
    sent_ahead = dgram(2, sent=NOW + 10)            # token stamped now, `sent` 10 s ahead
    assert strict.handle(sent_ahead, ADDR, NOW) == [] and strict.rejects["invalid_sent"] == 1


def test_a_new_ttl_applies_to_the_token_and_to_the_sent_check_alike():
    p = DatagramProcessor(keystore(), ttl=5.0, window=64, clock=lambda: NOW)
    old = dgram(1, sent=NOW - 70, stamp=NOW - 70, rows=[row(i=1, first=NOW - 80.0, last=NOW - 75.0)])
    assert p.handle(old, ADDR, NOW) == [] and p.rejects == {"expired": 1}
    p.ttl = 100.0                                   # what a reload does
    assert p.limits.ttl == 100.0
    assert p.handle(old, ADDR, NOW)
