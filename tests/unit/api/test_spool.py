"""The result spool: a private directory, atomic files, expiry, the byte cap, and what a restart finds."""
import os
import stat

import pytest

from myason.api import spool as spool_mod
from myason.api.spool import ResultSpool, TooBig
from myason.errors import ConfigError
from tests.support.api import Clock


def name(i, run=1):
    return "%016x.%d.json" % (i, run)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_configured_directory_is_made_private_and_emptied_of_old_results(tmp_path):
    d = tmp_path / "spool"
    d.mkdir(mode=0o755)
    (d / name(1)).write_bytes(b"{}")                 # left by a previous process
    (d / ("." + name(2) + ".tmp")).write_bytes(b"{")   # a write cut short
    (d / "notes.txt").write_text("not ours")
    s = ResultSpool(str(d), 1000, 60).open()
    try:
        assert mode(d) == 0o700 and s.leftovers == 2
        assert sorted(os.listdir(d)) == [".lock", "notes.txt"]     # only result files are touched
    finally:
        s.close()
    assert d.is_dir() and (d / "notes.txt").exists()             # a configured directory stays


def test_a_new_directory_is_made_0700(tmp_path):
    d = tmp_path / "a" / "b"
    s = ResultSpool(str(d), 1000, 60).open()
    assert mode(d) == 0o700
    s.close()


def test_the_default_directory_is_the_processes_own_and_goes_at_close():
    s = ResultSpool(None, 1000, 60).open()
    d = s.directory
    assert os.path.basename(d).startswith("myason-api-results-") and mode(d) == 0o700
    s.put(name(1), b"[1]")
    s.close()
    assert not os.path.exists(d)


def test_a_second_api_on_the_same_directory_is_refused(tmp_path):
    first = ResultSpool(str(tmp_path), 1000, 60).open()
    with pytest.raises(ConfigError, match="result_spool.*another running myason api"):
        ResultSpool(str(tmp_path), 1000, 60).open()
    first.close()
    ResultSpool(str(tmp_path), 1000, 60).open().close()      # free again once the first is closed


def test_an_unusable_directory_names_the_key(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="result_spool"):
        ResultSpool(str(f / "sub"), 1000, 60).open()


def test_files_are_written_whole_and_private(tmp_path):
    s = ResultSpool(str(tmp_path), 1000, 60).open()
    assert s.put(name(1), b'{"rows": []}') == []
    assert s.get(name(1)) == b'{"rows": []}' and mode(tmp_path / name(1)) == 0o600
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    assert s.get(name(9)) is None
    s.close()


def test_a_write_that_fails_leaves_neither_a_result_nor_a_temporary_file(tmp_path, monkeypatch):
    s = ResultSpool(str(tmp_path), 1000, 60).open()

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_mod.os, "replace", broken)
    with pytest.raises(OSError):
        s.put(name(1), b"[1, 2, 3]")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [".lock"] and s.get(name(1)) is None and s.stats()["bytes"] == 0
    s.close()


def test_results_expire_after_the_ttl(tmp_path):
    clock = Clock(1000.0)
    s = ResultSpool(str(tmp_path), 1000, 60, clock).open()
    s.put(name(1), b"a" * 10)
    clock.t += 30
    s.put(name(2), b"b" * 10)
    clock.t += 29.9
    assert s.expire() == []
    clock.t += 0.1
    assert s.expire() == [name(1)]
    assert not (tmp_path / name(1)).exists() and s.get(name(1)) is None and s.get(name(2)) == b"b" * 10
    assert s.stats() == {"files": 1, "bytes": 10}
    s.close()


def test_the_cap_evicts_the_oldest_first(tmp_path):
    s = ResultSpool(str(tmp_path), 100, 60).open()
    assert s.put(name(1), b"1" * 40) == [] and s.put(name(2), b"2" * 40) == []
    assert s.put(name(3), b"3" * 40) == [name(1)]
    assert s.put(name(4), b"4" * 90) == [name(2), name(3)]
    assert s.stats() == {"files": 1, "bytes": 90}
    assert sorted(os.listdir(tmp_path)) == [".lock", name(4)]
    s.close()


def test_a_result_larger_than_the_cap_is_refused_and_evicts_nothing(tmp_path):
    s = ResultSpool(str(tmp_path), 100, 60).open()
    s.put(name(1), b"1" * 60)
    with pytest.raises(TooBig, match=r"101 bytes, larger than the whole result spool \(result_spool_bytes = 100\)"):
        s.put(name(2), b"2" * 101)
    assert s.get(name(1)) == b"1" * 60 and sorted(os.listdir(tmp_path)) == [".lock", name(1)]
    s.close()


def test_rewriting_a_name_replaces_it(tmp_path):
    s = ResultSpool(str(tmp_path), 100, 60).open()
    s.put(name(1), b"1" * 60)
    s.put(name(1), b"x" * 30)
    assert s.stats() == {"files": 1, "bytes": 30} and s.get(name(1)) == b"x" * 30
    s.remove(name(1))
    s.remove(name(1))
    assert s.stats() == {"files": 0, "bytes": 0} and sorted(os.listdir(tmp_path)) == [".lock"]
    s.close()


def test_a_restart_removes_the_previous_results(tmp_path):
    """The ids and states of a process live in its memory: its results are unreachable after it."""
    first = ResultSpool(str(tmp_path), 1000, 60).open()
    first.put(name(1), b"[1]")
    os.close(first._lock_fd)        # the process died without closing: the kernel drops its lock
    first._lock_fd = None
    second = ResultSpool(str(tmp_path), 1000, 60).open()
    assert second.leftovers == 1 and second.get(name(1)) is None and not (tmp_path / name(1)).exists()
    second.close()
