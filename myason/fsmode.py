"""Files and directories with explicit modes, whatever the process umask.

Flows and events are personal data: the stores' files must never be world-readable because a
daemon happened to start under umask 022. Every writer creates its files through these helpers
with the mode its `file_mode` option (or a fixed 0600) gives, and directories with the matching
traversal mode (0700 for 0600 files, 0750 for 0640 files).
"""
import os
import stat

from myason.errors import ConfigError

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def check_file_mode(key, value):
    """A `file_mode` option: an octal YAML number (0640) or string ("0640"/"0o640").

    The owner must be able to read and write; nothing for others (flows are personal data); no
    execute bits. The group may read (for a reader in the writer's group, e.g. `myason api`).
    """
    text = value
    if isinstance(value, str):
        digits = value.strip().lower()
        digits = digits[2:] if digits.startswith("0o") else digits
        try:
            value = int(digits, 8)
        except ValueError:
            raise ConfigError(key, "must be an octal file mode such as 0600 or 0640, got %r" % (text,)) from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ConfigError(key, "must be an octal file mode such as 0600 or 0640 (YAML: write the leading 0), "
                          "got %r" % (text,))
    if value & 0o600 != 0o600:
        raise ConfigError(key, "the owner must be able to read and write: %04o" % value)
    if value & 0o007:
        raise ConfigError(key, "others may get nothing (flows are personal data): %04o" % value)
    if value & 0o111:
        raise ConfigError(key, "no execute bits in a data file mode: %04o" % value)
    return value


def dir_mode_for(file_mode, group_writes=False):
    """The mode of a directory holding files of `file_mode`: whoever reads the files may enter it.

    group_writes: the group may also create and remove entries (a queue another program empties).
    """
    mode = PRIVATE_DIR
    if file_mode & 0o040:
        mode |= 0o070 if group_writes else 0o050
    return mode


def make_dirs(path, mode=PRIVATE_DIR):
    """Create path and its missing ancestors with `mode` (not cut by the umask); returns those created.

    Existing directories are left as they are: they may be shared, and are the operator's.
    A setgid bit inherited from the parent is kept.
    """
    path = os.path.abspath(os.fspath(path))
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if os.path.isdir(directory):
                continue        # made meanwhile by another process: theirs
            raise
        # mkdir's mode is cut by the umask: set it outright, keeping the setgid bit a setgid
        # parent passed on (a queue shared with another program's group keeps its group).
        os.chmod(directory, mode | (os.stat(directory).st_mode & stat.S_ISGID))
        created.append(directory)
    return created


def open_fd(path, flags, mode=PRIVATE_FILE):
    """os.open that creates a missing file with exactly `mode` (the umask cannot widen or cut it).

    An existing file is opened as it is (ensure_mode() sets it); with O_EXCL in flags it is an error.
    """
    while True:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            try:
                return os.open(path, flags)
            except FileNotFoundError:
                continue        # removed between the two calls: create it after all
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd


def open_file(path, how="ab", mode=PRIVATE_FILE):
    """A binary file object for `how` ("ab", "wb", "xb", "r+b") that creates a missing file with `mode`.

    "wb" also sets an existing regular file of ours to `mode` (its content is replaced anyway).
    """
    flags = {"ab": os.O_WRONLY | os.O_APPEND, "wb": os.O_WRONLY | os.O_TRUNC,
             "xb": os.O_WRONLY | os.O_EXCL, "r+b": os.O_RDWR}[how]
    fd = open_fd(path, flags, mode)
    try:
        if how == "wb":
            # Truncating replaces the content: a regular file of ours gets the mode too.
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
        return open(fd, "wb" if how == "xb" else how)
    except BaseException:
        os.close(fd)
        raise


def ensure_mode(path, mode):
    """Set an existing file or directory of ours to exactly `mode` (e.g. one an older version made
    under the umask); returns True when it changed. Missing paths and other users' are left alone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) == mode:
        return False
    os.chmod(path, mode)
    return True
