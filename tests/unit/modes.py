"""Helpers for the file-mode tests: run a writer under umask 022 and list what it made."""
import os
import stat

import pytest


@pytest.fixture
def umask022():
    """The umask of a daemon started by hand (umask 022), restored after the test."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def tree_modes(root):
    """{relative path: mode} of root's directories and files below it (root itself as '.')."""
    out = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def world_readable(modes):
    """The entries of tree_modes() that grant others anything."""
    return {p: "%04o" % m for p, m in modes.items() if m & 0o007}
