"""Dropping a Linux capability for good once it has served (capget/capset through ctypes on libc).

The agent needs CAP_NET_ADMIN only to set SO_RCVBUFFORCE (a capture buffer above
net.core.rmem_max) while it opens its capture sockets: it drops it right after, from the
effective, permitted, inheritable and ambient sets, so nothing running later in the process
(a decoder bug exploited by a crafted frame) can use it. CAP_NET_RAW stays: a SIGHUP reload may
open new capture sockets.

Capabilities belong to threads: capset() changes the calling thread only. drop() must run
before other threads start (they inherit their creator's sets); threads that already run are
reported by holders() so the caller can restart them (myason.logs.restart_messenger).
"""
import ctypes
import ctypes.util
import errno
import os

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_LOWER = 3


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _get():
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _lib().capget(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "capget: " + os.strerror(err))
    return header, data


def has(cap, which="effective"):
    """True when the calling thread holds `cap` in its `which` set."""
    _, data = _get()
    return bool(getattr(data[cap // 32], which) & (1 << (cap % 32)))


def drop(cap):
    """Remove `cap` from the calling thread's effective, permitted, inheritable and ambient sets.

    Returns True when the thread held it (in any set) and False when there was nothing to drop;
    OSError when the kernel refuses. Permanent: a capability left out of the permitted set
    cannot be raised again without exec (and NoNewPrivileges closes that door too).
    """
    header, data = _get()
    word, bit = cap // 32, 1 << (cap % 32)
    held = bool((data[word].effective | data[word].permitted | data[word].inheritable) & bit)
    if held:
        data[word].effective &= ~bit
        data[word].permitted &= ~bit
        data[word].inheritable &= ~bit
        header.version, header.pid = _LINUX_CAPABILITY_VERSION_3, 0
        if _lib().capset(ctypes.byref(header), data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "capset: " + os.strerror(err))
    # The ambient set follows permitted and inheritable in the kernel; lowered explicitly anyway
    # (EINVAL: a kernel before 4.3 has no ambient set).
    if _lib().prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_LOWER, cap, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_CAP_AMBIENT_LOWER): " + os.strerror(err))
    return held


def thread_sets(pid="self"):
    """{tid: (CapEff, CapPrm) bit masks} of every thread of a process, from /proc."""
    out = {}
    base = "/proc/%s/task" % pid
    for tid in os.listdir(base):
        try:
            with open("%s/%s/status" % (base, tid)) as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except FileNotFoundError:
            continue        # the thread ended meanwhile
        out[int(tid)] = (int(fields["CapEff"], 16), int(fields["CapPrm"], 16))
    return out


def holders(cap, pid="self"):
    """Thread ids of the process that still hold `cap` (effective or permitted)."""
    bit = 1 << cap
    return sorted(tid for tid, (eff, prm) in thread_sets(pid).items() if (eff | prm) & bit)
