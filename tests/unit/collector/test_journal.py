"""A batch enters every spool or none, with the sequence state that counts its datagrams."""
import json
import os

import pytest

from myason.collector import journal
from myason.collector.spool import Spool, batch_name

AGENTS = {"edge-01": {"top": 7, "max_sent": 100.0}}


def spools(tmp_path, n=3):
    return [Spool(tmp_path / "spool" / ("w%d" % i), fsync=False) for i in range(n)]


def incoming(sp):
    return sorted(os.listdir(os.path.join(sp.path, "incoming")))


def staged(sp):
    return sorted(os.listdir(os.path.join(sp.path, "tmp")))


def test_commit_publishes_each_format_to_its_spool_and_names_the_batch_in_the_state(tmp_path):
    sps = spools(tmp_path)
    path = journal.sequence_file(str(tmp_path / "spool"), 0)
    j = journal.BatchJournal(sps, path, fsync=True)
    name = batch_name()
    j.commit(name, [b"json", b"copy", b"influx"], AGENTS)
    assert [incoming(sp) for sp in sps] == [[name]] * 3
    assert [open(os.path.join(sp.path, "incoming", name), "rb").read() for sp in sps] == [b"json", b"copy", b"influx"]
    assert all(staged(sp) == [] for sp in sps)
    assert journal.read_state(path) == (AGENTS, name)
    # A state-only commit (datagrams without rows) keeps naming the last batch.
    j.commit(None, [], {"edge-01": {"top": 9, "max_sent": 101.0}})
    assert journal.read_state(path) == ({"edge-01": {"top": 9, "max_sent": 101.0}}, name)
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_failure_while_staging_leaves_nothing_and_keeps_the_old_state(tmp_path):
    sps = spools(tmp_path)
    path = journal.sequence_file(str(tmp_path / "spool"), 0)
    j = journal.BatchJournal(sps, path, fsync=False)
    first = batch_name()
    j.commit(first, [b"a"] * 3, AGENTS)
    # The third spool cannot be written (its tmp/ is not a directory): a real OSError.
    tmp3 = os.path.join(sps[2].path, "tmp")
    os.rmdir(tmp3)
    open(tmp3, "wb").close()
    with pytest.raises(OSError):
        j.commit(batch_name(), [b"b"] * 3, {"edge-01": {"top": 8, "max_sent": 100.5}})
    assert [incoming(sp) for sp in sps] == [[first]] * 3
    assert staged(sps[0]) == [] and staged(sps[1]) == []
    assert journal.read_state(path) == (AGENTS, first)
    # Space back: the same batch goes in whole.
    os.unlink(tmp3)
    os.mkdir(tmp3)
    retry = batch_name()
    j.commit(retry, [b"b"] * 3, {"edge-01": {"top": 8, "max_sent": 100.5}})
    assert [incoming(sp) for sp in sps] == [sorted([first, retry])] * 3


def test_a_failure_writing_the_state_discards_the_staged_batch(tmp_path):
    sps = spools(tmp_path, 2)
    state_dir = tmp_path / "state-is-a-file"
    state_dir.write_bytes(b"")
    j = journal.BatchJournal(sps, str(state_dir / "sequences-0.json"), fsync=False)
    with pytest.raises(OSError):
        j.commit(batch_name(), [b"x", b"y"], AGENTS)
    assert [incoming(sp) + staged(sp) for sp in sps] == [[], []]


@pytest.mark.parametrize("published", [0, 1, 2, 3])
def test_recover_finishes_a_committed_batch_wherever_a_crash_stopped_the_publishing(tmp_path, published):
    sps = spools(tmp_path)
    spool_dir = str(tmp_path / "spool")
    path = journal.sequence_file(spool_dir, 1)
    name = batch_name()
    # What a crash leaves after the commit: staged everywhere, state written, `published` moved.
    for sp in sps:
        sp.stage(name, b"rows")
    journal.BatchJournal(sps, path, fsync=False)._write_state(name, AGENTS)
    for sp in sps[:published]:
        sp.publish(name)
    uncommitted = batch_name()
    sps[0].stage(uncommitted, b"never committed")
    again = spools(tmp_path)                   # the next start
    assert journal.recover(spool_dir, again) == (1 if published < 3 else 0)
    for sp in again:
        sp.recover()
    assert [incoming(sp) for sp in again] == [[name]] * 3
    assert all(staged(sp) == [] for sp in again)
    assert all(sp.bytes == 4 for sp in again)


def test_recover_for_one_processor_leaves_the_others_alone(tmp_path):
    sps = spools(tmp_path, 1)
    spool_dir = str(tmp_path / "spool")
    names = {}
    for index in (0, 1):
        names[index] = batch_name()
        sps[0].stage(names[index], b"r")
        journal.BatchJournal(sps, journal.sequence_file(spool_dir, index), fsync=False)._write_state(
            names[index], AGENTS)
    assert journal.recover(spool_dir, sps, index=1) == 1
    assert incoming(sps[0]) == [names[1]] and staged(sps[0]) == [names[0]]


def test_state_of_earlier_collectors_still_loads_and_merges(tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "sequences-0.json").write_text(json.dumps({"edge-01": {"top": 3, "max_sent": 5.0}}))
    (spool_dir / "sequences-1.json").write_text(json.dumps(
        {"v": 2, "agents": {"edge-01": {"top": 9, "max_sent": 6.0}, "lab-7": {"top": 1, "max_sent": 1.0}},
         "batch": "x.batch"}))
    (spool_dir / "sequences-2.json").write_text("{damaged")
    merged = journal.load_sequences(str(spool_dir))
    assert merged == {"edge-01": {"top": 9, "max_sent": 6.0}, "lab-7": {"top": 1, "max_sent": 1.0}}
    assert journal.read_state(str(spool_dir / "sequences-0.json"))[1] is None
