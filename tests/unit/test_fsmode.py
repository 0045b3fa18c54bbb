"""myason.fsmode: files and directories get the modes asked for, whatever the umask."""
import os
import stat

import pytest

from myason import fsmode
from myason.errors import ConfigError


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("value, want", [(0o600, 0o600), (0o640, 0o640), ("0640", 0o640), ("0o600", 0o600),
                                         (0o660, 0o660)])
def test_check_file_mode_accepts(value, want):
    assert fsmode.check_file_mode("w.file_mode", value) == want


@pytest.mark.parametrize("value", [0o644, 0o604, 0o400, 0o700, 640, "rw-r-----", "0999", True, None, 1.5])
def test_check_file_mode_refuses_naming_the_key(value):
    with pytest.raises(ConfigError) as info:
        fsmode.check_file_mode("w.file_mode", value)
    assert info.value.key == "w.file_mode"


def test_dir_mode_follows_the_file_mode():
    assert fsmode.dir_mode_for(0o600) == 0o700
    assert fsmode.dir_mode_for(0o640) == 0o750
    assert fsmode.dir_mode_for(0o640, group_writes=True) == 0o770
    assert fsmode.dir_mode_for(0o600, group_writes=True) == 0o700


def test_created_files_and_dirs_ignore_the_umask(tmp_path, umask022):
    made = fsmode.make_dirs(tmp_path / "a" / "b", 0o700)
    assert made == [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o700
    for how in ("ab", "wb", "xb"):
        path = tmp_path / "a" / ("f-" + how)
        with fsmode.open_file(path, how, 0o640) as fh:
            fh.write(b"x")
        assert mode(path) == 0o640, how
    os.close(fsmode.open_fd(tmp_path / "a" / "fd", os.O_RDWR))
    assert mode(tmp_path / "a" / "fd") == 0o600


def test_existing_files_keep_their_mode_except_when_truncated(tmp_path, umask022):
    path = tmp_path / "old"
    path.write_bytes(b"old")            # 0644 under umask 022
    with fsmode.open_file(path, "ab") as fh:
        fh.write(b"more")
    assert mode(path) == 0o644 and path.read_bytes() == b"oldmore"
    with fsmode.open_file(path, "wb") as fh:
        fh.write(b"new")
    assert mode(path) == 0o600 and path.read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        fsmode.open_file(path, "xb")


def test_ensure_mode_sets_exactly_and_skips_missing(tmp_path, umask022):
    path = tmp_path / "f"
    path.write_bytes(b"")
    assert fsmode.ensure_mode(path, 0o640) is True
    assert mode(path) == 0o640
    assert fsmode.ensure_mode(path, 0o640) is False
    assert fsmode.ensure_mode(tmp_path / "missing", 0o600) is False


def test_existing_directories_are_left_alone(tmp_path, umask022):
    shared = tmp_path / "shared"
    shared.mkdir(0o755)
    assert fsmode.make_dirs(shared / "mine") == [str(shared / "mine")]
    assert mode(shared) == 0o755 and mode(shared / "mine") == 0o700


def test_a_setgid_parent_passes_its_group_on(tmp_path, umask022):
    """A Mentat queue made setgid to Mentat's group: new folders keep the bit, so files get that group."""
    shared = tmp_path / "queue"
    shared.mkdir()
    os.chmod(shared, 0o2770)
    fsmode.make_dirs(shared / "incoming", 0o770)
    st = os.stat(shared / "incoming")
    assert stat.S_IMODE(st.st_mode) == 0o2770 and st.st_gid == os.stat(shared).st_gid
