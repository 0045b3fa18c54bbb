"""The mentat writer: one complete JSON file per event in incoming/, each batch once."""
import json
import os

import pytest

from myason.errors import ConfigError
from myason.store.base import WriterError, writer_class
from myason.store.mentat import MARKERS, MentatWriter, event_file_name
from tests.support.modes import tree_modes, world_readable


def events(n, tag="e"):
    return [{"Format": "IDEA0", "ID": "%s-%d" % (tag, i), "Category": ["Recon.Scanning"]} for i in range(n)]


@pytest.fixture
def writer(tmp_path):
    w = MentatWriter(queue_dir=str(tmp_path / "q"), fsync=False)
    w.open()
    return w


def incoming(tmp_path):
    return sorted(os.listdir(tmp_path / "q" / "incoming"))


def test_registered_and_options_checked(tmp_path):
    assert writer_class("mentat") is MentatWriter
    with pytest.raises(ConfigError, match="mentat.queue_dir"):
        MentatWriter()
    with pytest.raises(ConfigError, match="mentat.queue"):
        MentatWriter(queue=str(tmp_path))


def test_each_event_one_file_and_batches_once(writer, tmp_path):
    assert writer.write("b1", [], events=events(3)) is True
    assert writer.write("b1", [], events=events(3)) is False      # retried batch
    assert writer.write("b2", [["row"]], events=events(2, "f")) is True
    names = incoming(tmp_path)
    assert len(names) == 5 and len(set(names)) == 5
    got = sorted(json.loads((tmp_path / "q" / "incoming" / n).read_bytes())["ID"] for n in names)
    assert got == ["e-0", "e-1", "e-2", "f-0", "f-1"]
    assert os.listdir(tmp_path / "q" / "tmp") == []
    assert sorted(os.listdir(tmp_path / "q" / MARKERS)) == ["b1", "b2"]


def test_no_events_writes_nothing(writer, tmp_path):
    assert writer.write("b1", [["row"]]) is True
    assert incoming(tmp_path) == []


def test_names_are_safe_and_unique():
    a = event_file_name("b1", 0, {"ID": "../../etc/x"})
    assert "/" not in a and a.endswith(".idea")
    assert event_file_name("b1", 0, {"ID": "x"}) != event_file_name("b1", 1, {"ID": "x"})


def test_unwritable_queue_is_a_retryable_error(tmp_path):
    (tmp_path / "file").write_text("")
    w = MentatWriter(queue_dir=str(tmp_path / "file" / "q"), fsync=False)
    with pytest.raises(WriterError) as exc:
        w.write("b1", [], events=events(1))
    assert not exc.value.permanent


def test_unserialisable_event_is_permanent(writer):
    with pytest.raises(WriterError) as exc:
        writer.write("b1", [], events=[{"ID": object()}])
    assert exc.value.permanent


def test_files_are_never_world_readable_under_umask_022(tmp_path, umask022):
    """Issue 12 item 13: event files 0640 (Mentat reads them through the group), nothing for others."""
    w = MentatWriter(queue_dir=str(tmp_path / "q"), fsync=False)
    w.open()
    assert w.write("b1", [], events=events(2)) is True
    modes = tree_modes(str(tmp_path / "q"))
    assert world_readable(modes) == {}
    assert modes == {".": 0o750, "tmp": 0o700, "incoming": 0o770, MARKERS: 0o700, MARKERS + "/b1": 0o600,
                     **{"incoming/" + n: 0o640 for n in incoming(tmp_path)}}


def test_private_file_mode(tmp_path, umask022):
    w = MentatWriter(queue_dir=str(tmp_path / "q"), fsync=False, file_mode="0600")
    w.open()
    w.write("b1", [], events=events(1))
    modes = tree_modes(str(tmp_path / "q"))
    assert modes["."] == modes["incoming"] == 0o700
    assert {m for p, m in modes.items() if p.startswith("incoming/")} == {0o600}
    with pytest.raises(ConfigError, match="mentat.file_mode"):
        MentatWriter(queue_dir=str(tmp_path / "q"), file_mode=0o644)


def test_events_keep_the_agents_extension_key(writer, tmp_path):
    sent = [dict(e, _Myason={"Agents": ["edge-1", "edge-2"]}) for e in events(2)]
    assert writer.write("b1", [], events=sent) is True
    got = [json.loads((tmp_path / "q" / "incoming" / n).read_bytes()) for n in incoming(tmp_path)]
    assert sorted(got, key=lambda e: e["ID"]) == sent
