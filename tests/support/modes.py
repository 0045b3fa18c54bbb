"""Helpers for the file-mode tests: list the modes of what a writer made (the umask022 fixture is in
tests/unit/conftest.py)."""
import os
import stat


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
