"""The jsonl writer: round trip, exactly once across retries and crashes, rotation, retention."""
import os
import time

import orjson
import pytest

from myason.errors import ConfigError
from myason.store import jsonl
from myason.schema import ROW_FIELDS
from myason.store.base import WriterError, writer_class
from myason.store.jsonl import JsonlWriter
from tests.support.modes import tree_modes, world_readable

T0 = 1700000000.0


def make_rows(n, start=0, t=T0):
    """n distinct valid rows in ROW_FIELDS order; src_port carries the row number."""
    return [["10.0.%d.%d" % (i // 256 % 256, i % 256), "2001:db8::%x" % (i + 1), start + i, 443, 6, 0,
             2, 120 + i, t + i * 0.001, t + i * 0.001 + 1.5, 0x1b, "edge-1", "eth0", 2, 3, 4, 0,
             "", 24, 64, 0, 15169, "idle", t + 5.0, "127.0.0.1"] for i in range(n)]


def read_all(d):
    """Every record in the data files, oldest file first."""
    out = []
    for name in sorted(n for n in os.listdir(d) if n.startswith("flows-")):
        with open(os.path.join(d, name), "rb") as fh:
            out.extend(orjson.loads(line) for line in fh.read().splitlines())
    return out


def as_dicts(rows):
    return [dict(zip(ROW_FIELDS, r)) for r in rows]


@pytest.fixture
def writer(tmp_path):
    w = JsonlWriter(dir=str(tmp_path / "j"))
    w.open()
    yield w
    w.close()


def test_registered_under_its_name():
    assert writer_class("jsonl") is JsonlWriter


def test_round_trip_keys_are_field_names(writer, tmp_path):
    a, b = make_rows(3), make_rows(2, start=100)
    assert writer.write("b1", a) is True
    assert writer.write("b2", b) is True
    got = read_all(tmp_path / "j")
    assert got == as_dicts(a + b)
    assert list(got[0]) == list(ROW_FIELDS)


def test_retry_of_a_batch_is_skipped_also_after_reopen(writer, tmp_path):
    rows = make_rows(4)
    assert writer.write("b1", rows) is True
    assert writer.write("b1", rows) is False
    writer.close()
    w2 = JsonlWriter(dir=str(tmp_path / "j"))
    w2.open()
    assert w2.write("b1", rows) is False
    assert w2.skipped == 1
    w2.close()
    assert read_all(tmp_path / "j") == as_dicts(rows)


def test_crash_before_ledger_line_rows_removed_then_retry_lands_once(writer, tmp_path):
    d = tmp_path / "j"
    a, b = make_rows(3), make_rows(5, start=50)
    writer.write("a", a)
    ledger_after_a = (d / "ledger").read_bytes()
    writer.write("b", b)
    writer.close()
    # The crash: b's rows reached the file, its ledger line never did.
    (d / "ledger").write_bytes(ledger_after_a)
    w2 = JsonlWriter(dir=str(d))
    w2.open()
    assert w2.truncated_bytes > 0
    assert read_all(d) == as_dicts(a)
    assert w2.write("b", b) is True
    assert w2.write("a", a) is False
    w2.close()
    assert read_all(d) == as_dicts(a + b)


def test_torn_ledger_line_is_dropped_with_its_rows(writer, tmp_path):
    d = tmp_path / "j"
    a, b = make_rows(2), make_rows(2, start=10)
    writer.write("a", a)
    writer.write("b", b)
    writer.close()
    data = (d / "ledger").read_bytes()
    (d / "ledger").write_bytes(data[:-5])       # the crash cut b's ledger line short
    w2 = JsonlWriter(dir=str(d))
    w2.open()
    assert read_all(d) == as_dicts(a)
    assert (d / "ledger").read_bytes().count(b"\n") == 1
    w2.write("b", b)
    w2.close()
    assert read_all(d) == as_dicts(a + b)


class _FailingFile:
    """A ledger file whose writes fail, like a full disk."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_failed_ledger_write_is_retryable_and_leaves_no_rows(writer, tmp_path):
    a, b = make_rows(2), make_rows(3, start=20)
    writer.write("a", a)
    writer._ledger = _FailingFile(writer._ledger)
    with pytest.raises(WriterError) as info:
        writer.write("b", b)
    assert not info.value.permanent
    assert read_all(tmp_path / "j") == as_dicts(a)
    assert writer.write("b", b) is True      # reopens by itself
    assert writer.write("b", b) is False
    assert read_all(tmp_path / "j") == as_dicts(a + b)


def test_rotation_by_size_never_splits_a_batch(tmp_path):
    d = tmp_path / "j"
    w = JsonlWriter(dir=str(d), max_bytes=3000)
    w.open()
    batches = [make_rows(4, start=10 * i) for i in range(8)]
    for i, rows in enumerate(batches):
        w.write("b%d" % i, rows)
    files = w.files()
    w.close()
    assert len(files) > 2
    assert all(os.path.getsize(d / f) <= 3000 for f in files)
    where = {}
    for f in files:
        for line in (d / f).read_bytes().splitlines():
            where.setdefault(orjson.loads(line)["src_port"] // 10, set()).add(f)
    assert all(len(fs) == 1 for fs in where.values())     # each batch lies in one file
    assert read_all(d) == as_dicts([r for rows in batches for r in rows])


def test_rotation_by_hour_follows_the_clock(tmp_path):
    d = tmp_path / "j"
    now = [T0 - T0 % 3600 + 10]
    w = JsonlWriter(dir=str(d), rotate_hours=1)
    w.clock = lambda: now[0]
    w.open()
    w.write("a", make_rows(1))
    now[0] += 1800
    w.write("b", make_rows(1, start=1))
    assert len(w.files()) == 1
    now[0] += 1800
    w.write("c", make_rows(1, start=2))
    files = w.files()
    w.close()
    assert len(files) == 2
    assert files[1] == "flows-00000001-%s.jsonl" % time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now[0]))
    assert [r["src_port"] for r in read_all(d)] == [0, 1, 2]


def test_reopen_continues_the_current_file(tmp_path):
    d = tmp_path / "j"
    w = JsonlWriter(dir=str(d), rotate_hours=0)
    w.open()
    w.write("a", make_rows(1))
    w.close()
    w.open()
    w.write("b", make_rows(1, start=1))
    assert len(w.files()) == 1
    w.close()


def test_keep_files_removes_the_oldest(tmp_path):
    d = tmp_path / "j"
    w = JsonlWriter(dir=str(d), max_bytes=1, keep_files=2)
    w.open()
    for i in range(5):
        w.write("b%d" % i, make_rows(1, start=i))
    files = w.files()
    w.close()
    assert len(files) == 2
    assert [r["src_port"] for r in read_all(d)] == [3, 4]


def test_ledger_is_compacted_but_keeps_recent_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "LEDGER_KEEP", 3)
    d = tmp_path / "j"
    w = JsonlWriter(dir=str(d), rotate_hours=0)
    w.open()
    for i in range(10):
        w.write("b%d" % i, make_rows(1, start=i))
    w.close()
    assert (d / "ledger").read_bytes().count(b"\n") <= 7
    w.open()
    assert w.write("b9", make_rows(1, start=9)) is False
    w.write("b10", make_rows(1, start=10))
    w.close()
    assert [r["src_port"] for r in read_all(d)] == list(range(11))


def test_bad_row_is_permanent_and_writes_nothing(writer, tmp_path):
    with pytest.raises(WriterError) as info:
        writer.write("bad", [[1, 2, 3]])
    assert info.value.permanent
    with pytest.raises(WriterError) as info:
        writer.write("big", [make_rows(1)[0][:6] + [1 << 70] + make_rows(1)[0][7:]])
    assert info.value.permanent
    assert read_all(tmp_path / "j") == []


def test_one_writer_per_directory(writer, tmp_path):
    other = JsonlWriter(dir=str(tmp_path / "j"))
    with pytest.raises(WriterError):
        other.open()


def test_empty_batch_is_recorded(writer):
    assert writer.write("empty", []) is True
    assert writer.write("empty", []) is False


@pytest.mark.parametrize("options, key", [
    ({}, "jsonl.dir"),
    ({"dir": "x", "max_byte": 5}, "jsonl.max_byte"),
    ({"dir": "x", "max_bytes": 0}, "jsonl.max_bytes"),
    ({"dir": "x", "rotate_hours": -1}, "jsonl.rotate_hours"),
    ({"dir": "x", "keep_files": "3"}, "jsonl.keep_files"),
])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError) as info:
        JsonlWriter(**options)
    assert info.value.key == key


# -- IDEA events: a second rotating series, events-*.jsonl, under the same ledger ----------------

def make_events(n, start=0):
    """n distinct IDEA-like events; Note carries the event number."""
    return [{"Format": "IDEA0", "ID": "00000000-0000-4000-8000-%012d" % (start + i),
             "DetectTime": "2023-11-14T22:13:20Z", "Category": ["Recon.Scanning"],
             "Source": [{"IP4": ["192.0.2.%d" % ((start + i) % 256)]}], "Note": start + i}
            for i in range(n)]


def read_events(d):
    """Every event in the events files, oldest file first."""
    out = []
    for name in sorted(n for n in os.listdir(d) if n.startswith("events-")):
        with open(os.path.join(d, name), "rb") as fh:
            out.extend(orjson.loads(line) for line in fh.read().splitlines())
    return out


def test_stores_events_flag():
    assert JsonlWriter.stores_events is True


def test_events_round_trip_apart_from_rows(writer, tmp_path):
    d = tmp_path / "j"
    a, ea = make_rows(2), make_events(3)
    b, eb = make_rows(1, start=10), make_events(2, start=3)
    assert writer.write("a", a, events=ea) is True
    assert writer.write("b", b, events=eb) is True
    assert writer.write("c", [], events=make_events(1, start=5)) is True     # events only
    assert writer.write("d", make_rows(1, start=20)) is True                  # rows only
    assert read_events(d) == ea + eb + make_events(1, start=5)
    assert read_all(d) == as_dicts(a + b + make_rows(1, start=20))
    assert len(writer.event_files()) == 1
    assert writer.event_files()[0].startswith("events-00000000-")
    # One JSON object per line, nothing else in the file.
    lines = (d / writer.event_files()[0]).read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(line.startswith(b"{") for line in lines[:-1])


def test_no_events_file_until_the_first_event(writer, tmp_path):
    writer.write("a", make_rows(2))
    writer.write("b", make_rows(1, start=5), events=[])
    assert writer.event_files() == []
    assert b"events-" not in (tmp_path / "j" / "ledger").read_bytes()


def test_retry_with_events_is_skipped_also_after_reopen(writer, tmp_path):
    d = tmp_path / "j"
    rows, events = make_rows(2), make_events(3)
    assert writer.write("b1", rows, events=events) is True
    assert writer.write("b1", rows, events=events) is False
    writer.close()
    w2 = JsonlWriter(dir=str(d))
    w2.open()
    assert w2.write("b1", rows, events=events) is False
    assert w2.write("b2", [], events=make_events(1, start=3)) is True
    assert w2.write("b2", [], events=make_events(1, start=3)) is False
    w2.close()
    assert read_events(d) == make_events(4)
    assert read_all(d) == as_dicts(rows)


def test_crash_before_ledger_line_cuts_events_too(writer, tmp_path):
    d = tmp_path / "j"
    a, ea = make_rows(2), make_events(2)
    b, eb = make_rows(3, start=50), make_events(4, start=10)
    writer.write("a", a, events=ea)
    ledger_after_a = (d / "ledger").read_bytes()
    writer.write("b", b, events=eb)
    writer.close()
    # The crash: b's rows and events reached their files, its ledger line never did.
    (d / "ledger").write_bytes(ledger_after_a)
    w2 = JsonlWriter(dir=str(d))
    w2.open()
    assert read_all(d) == as_dicts(a)
    assert read_events(d) == ea
    assert w2.truncated_bytes == sum(len(orjson.dumps(e)) + 1 for e in eb) + sum(
        len(orjson.dumps(r)) + 1 for r in as_dicts(b))
    assert w2.write("b", b, events=eb) is True
    assert w2.write("a", a, events=ea) is False
    w2.close()
    assert read_all(d) == as_dicts(a + b)
    assert read_events(d) == ea + eb


def test_crash_in_the_first_events_batch_removes_the_new_events_file(writer, tmp_path):
    d = tmp_path / "j"
    a = make_rows(2)
    writer.write("a", a)
    ledger_after_a = (d / "ledger").read_bytes()
    writer.write("b", [], events=make_events(2))
    writer.close()
    (d / "ledger").write_bytes(ledger_after_a)
    w2 = JsonlWriter(dir=str(d))
    w2.open()
    assert w2.event_files() == []
    assert w2.write("b", [], events=make_events(2)) is True
    w2.close()
    assert read_events(d) == make_events(2)
    assert read_all(d) == as_dicts(a)


def test_torn_ledger_line_drops_its_events(writer, tmp_path):
    d = tmp_path / "j"
    writer.write("a", make_rows(1), events=make_events(1))
    writer.write("b", make_rows(1, start=1), events=make_events(2, start=1))
    writer.close()
    data = (d / "ledger").read_bytes()
    (d / "ledger").write_bytes(data[:-3])
    w2 = JsonlWriter(dir=str(d))
    w2.open()
    assert read_events(d) == make_events(1)
    w2.write("b", make_rows(1, start=1), events=make_events(2, start=1))
    w2.close()
    assert read_events(d) == make_events(3)


def test_failed_ledger_write_leaves_no_events(writer, tmp_path):
    d = tmp_path / "j"
    writer.write("a", make_rows(1), events=make_events(1))
    writer._ledger = _FailingFile(writer._ledger)
    with pytest.raises(WriterError) as info:
        writer.write("b", make_rows(1, start=1), events=make_events(2, start=1))
    assert not info.value.permanent
    assert read_events(d) == make_events(1)
    assert writer.write("b", make_rows(1, start=1), events=make_events(2, start=1)) is True
    assert read_events(d) == make_events(3)


@pytest.mark.parametrize("event", ["not a dict", {1: "non-string key"}, {"n": 1 << 70}])
def test_bad_event_is_permanent_and_writes_nothing(writer, tmp_path, event):
    with pytest.raises(WriterError) as info:
        writer.write("bad", make_rows(1), events=make_events(1) + [event])
    assert info.value.permanent
    assert read_all(tmp_path / "j") == [] and read_events(tmp_path / "j") == []
    assert writer.write("bad", make_rows(1)) is True      # the id was not recorded


def test_events_rotate_by_size_without_splitting_a_batch(tmp_path):
    d = tmp_path / "j"
    w = JsonlWriter(dir=str(d), max_bytes=1200, rotate_hours=0)
    w.open()
    batches = [make_events(3, start=10 * i) for i in range(8)]
    for i, events in enumerate(batches):
        w.write("b%d" % i, make_rows(1, start=i), events=events)
    efiles = w.event_files()
    w.close()
    assert len(efiles) > 2
    assert [int(f.split("-")[1]) for f in efiles] == list(range(len(efiles)))
    assert all(os.path.getsize(d / f) <= 1200 for f in efiles)
    where = {}
    for f in efiles:
        for line in (d / f).read_bytes().splitlines():
            where.setdefault(orjson.loads(line)["Note"] // 10, set()).add(f)
    assert all(len(fs) == 1 for fs in where.values())
    assert read_events(d) == [e for events in batches for e in events]
    # Reopening must not cut any events file short (the ledger keeps each file's last offset).
    w.open()
    w.close()
    assert read_events(d) == [e for events in batches for e in events]


def test_events_rotate_by_hour_and_keep_files(tmp_path):
    d = tmp_path / "j"
    now = [T0 - T0 % 3600 + 10]
    w = JsonlWriter(dir=str(d), rotate_hours=1, keep_files=2)
    w.clock = lambda: now[0]
    w.open()
    for i in range(4):
        w.write("b%d" % i, [], events=make_events(1, start=i))
        now[0] += 3600
    efiles = w.event_files()
    w.close()
    assert len(efiles) == 2
    assert efiles[-1] == "events-00000003-%s.jsonl" % time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now[0] - 3600))
    assert [e["Note"] for e in read_events(d)] == [2, 3]


def test_reopen_continues_the_current_events_file(tmp_path):
    d = tmp_path / "j"
    w = JsonlWriter(dir=str(d), rotate_hours=0)
    w.open()
    w.write("a", [], events=make_events(1))
    w.close()
    w.open()
    w.write("b", [], events=make_events(1, start=1))
    assert len(w.event_files()) == 1
    w.close()
    assert read_events(d) == make_events(2)


def test_compaction_keeps_the_offsets_of_rotated_events_files(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "LEDGER_KEEP", 2)
    d = tmp_path / "j"
    w = JsonlWriter(dir=str(d), max_bytes=1, rotate_hours=0)
    w.open()
    for i in range(6):
        w.write("e%d" % i, [], events=make_events(1, start=i))
    for i in range(6):      # later batches without events must not drop the events files' offsets
        w.write("r%d" % i, make_rows(1, start=i))
    w.close()
    w.open()
    assert w.truncated_bytes == 0
    assert w.write("r5", make_rows(1, start=5)) is False
    w.close()
    assert [e["Note"] for e in read_events(d)] == list(range(6))
    assert [r["src_port"] for r in read_all(d)] == list(range(6))


def test_ledger_without_events_entries_still_opens(tmp_path):
    d = tmp_path / "j"
    # Until the first events file exists, ledger lines keep the old three-value form.
    w = JsonlWriter(dir=str(d))
    w.open()
    w.write("old", make_rows(1))
    w.close()
    assert all(len(orjson.loads(line)) == 3 for line in (d / "ledger").read_bytes().splitlines())
    w.open()
    assert w.write("old", make_rows(1)) is False
    assert w.write("new", make_rows(1, start=1), events=make_events(1)) is True
    w.close()
    assert [len(orjson.loads(line)) for line in (d / "ledger").read_bytes().splitlines()] == [3, 5]


def test_events_through_the_writer_thread(tmp_path):
    import threading

    from myason.collector.sink import WriterThread
    from myason.collector.spool import Spool
    from myason.store.base import encode_batch

    spool = Spool(str(tmp_path / "spool"), fsync=False)
    spool.put(encode_batch(make_rows(2), make_events(2)))
    spool.put(encode_batch([], make_events(1, start=2)))
    w = JsonlWriter(dir=str(tmp_path / "j"))
    stop = threading.Event()
    t = WriterThread(w, spool, stop, poll=0.01)
    t.start()
    stop.set()
    t.join(10)
    assert not t.is_alive() and spool.depth()[0] == 0
    assert t.events == 3 and t.batches == 2
    assert read_events(tmp_path / "j") == make_events(3)
    assert len(read_all(tmp_path / "j")) == 2


def test_files_are_never_world_readable_under_umask_022(tmp_path, monkeypatch, umask022):
    """Issue 12 item 13: the dir, data files (rotated too), ledger and lock get 0700/0600."""
    monkeypatch.setattr(jsonl, "LEDGER_KEEP", 2)        # compaction rewrites the ledger too
    d = tmp_path / "data" / "j"
    w = JsonlWriter(dir=str(d), max_bytes=600, rotate_hours=0)
    w.open()
    for i in range(8):
        w.write("b%d" % i, make_rows(2, start=10 * i), events=make_events(1, start=i))
    w.close()
    modes = tree_modes(str(tmp_path))
    assert len(w.files()) > 1 and len(w.event_files()) > 1
    assert world_readable(modes) == {}
    assert {p: m for p, m in modes.items() if p.startswith("data/j/")} == {
        "data/j/" + n: 0o600 for n in os.listdir(d)}
    assert modes["data"] == modes["data/j"] == 0o700


def test_file_mode_for_a_reader_in_the_group(tmp_path, umask022):
    d = tmp_path / "j"
    w = JsonlWriter(dir=str(d), file_mode=0o640)
    w.open()
    w.write("b0", make_rows(1), events=make_events(1))
    w.close()
    modes = tree_modes(str(d))
    assert modes.pop(".") == 0o750 and set(modes.values()) == {0o640}, modes
    with pytest.raises(ConfigError) as info:
        JsonlWriter(dir=str(d), file_mode="0644")
    assert info.value.key == "jsonl.file_mode"


def test_events_keep_the_agents_extension_key(writer, tmp_path):
    events = [dict(e, _Myason={"Agents": ["edge-1", "edge-2"], "AgentsCapped": True}) for e in make_events(2)]
    assert writer.write("a", [], events=events) is True
    assert read_events(tmp_path / "j") == events
