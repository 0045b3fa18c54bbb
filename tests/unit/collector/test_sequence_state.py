"""Per-agent sequence state carried across a collector restart: gaps stay visible, replays stay replays."""
import json
import queue

from myason.collector import journal, processor
from myason.collector.datagram import DatagramProcessor
from myason.collector.spool import Spool
from myason.store.base import decode_batch
from tests.support.datagrams import ADDR, NOW, dgram, keystore


def new_proc():
    return DatagramProcessor(keystore(), ttl=5.0, window=64, clock=lambda: NOW)


def test_restore_counts_lost_datagrams_as_gaps_and_rejects_replays():
    before = new_proc()
    sent = {s: dgram(s) for s in range(12)}
    for s in range(5):
        assert before.handle(sent[s], ADDR, NOW)
    state = before.snapshot()
    assert state == {"edge-01": {"top": 4, "max_sent": NOW - 2 + 4e-3}}
    after = new_proc()
    assert after.restore(json.loads(json.dumps(state))) == 1
    # A datagram stored before the restart, replayed after it: still a replay.
    assert after.handle(sent[3], ADDR, NOW) == [] and after.rejects == {"replay": 1}
    assert after.handle(sent[4], ADDR, NOW) == []
    # 5..7 were lost in the restart; 8 reveals them.
    assert after.handle(sent[8], ADDR, NOW)
    assert after.agents["edge-01"].gaps == 3
    # A late one of the lost datagrams still gets in and takes its gap back.
    assert after.handle(sent[6], ADDR, NOW)
    assert after.agents["edge-01"].gaps == 2
    # Without the state, the same traffic shows no gap at all.
    fresh = new_proc()
    assert fresh.handle(sent[8], ADDR, NOW) and fresh.agents["edge-01"].gaps == 0


def test_restore_still_detects_an_agent_restart():
    before = new_proc()
    for s in range(3):
        before.handle(dgram(s), ADDR, NOW)
    after = new_proc()
    after.restore(before.snapshot())
    assert after.handle(dgram(0, sent=NOW - 1), ADDR, NOW)
    assert after.agents["edge-01"].restarts == 1 and after.agents["edge-01"].gaps == 0


def test_restore_skips_malformed_entries():
    p = new_proc()
    assert p.restore({"a": {"top": "x", "max_sent": 1.0}, "b": {"top": -2, "max_sent": 1.0}, "c": [1]}) == 0
    assert p.snapshot() == {}


def test_processor_thread_saves_state_after_spooling_and_load_merges(tmp_path):
    spool = Spool(tmp_path / "sp" / "sqlite", fsync=False)
    inbox = queue.Queue()
    path = journal.sequence_file(str(tmp_path / "sp"), 0)
    t = processor.ProcessorThread("processor-0", new_proc(), inbox, [spool], 1000, 0.05, path)
    t.start()
    inbox.put([(dgram(s), ADDR, NOW) for s in range(4)])
    inbox.put(processor.DONE)
    t.join(10)
    assert t.error is None
    (name, data), = spool.claim(5)
    assert len(decode_batch(data)) == 4
    assert json.loads(open(path).read())["agents"]["edge-01"]["top"] == 3
    # A second file (another processor count before) with an older state of the same agent,
    # a newer one of another agent, and a damaged file: the newest per agent wins, damage is skipped.
    (tmp_path / "sp" / "sequences-1.json").write_text(json.dumps(
        {"edge-01": {"top": 1, "max_sent": 1.0}, "lab-7": {"top": 9, "max_sent": 5.0}}))
    (tmp_path / "sp" / "sequences-2.json").write_text("{damaged")
    merged = journal.load_sequences(str(tmp_path / "sp"))
    assert merged["edge-01"]["top"] == 3 and merged["lab-7"]["top"] == 9
    assert journal.load_sequences(str(tmp_path / "missing")) == {}
