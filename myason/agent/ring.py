"""Live capture on the fast engine: TPACKET_V3 memory-mapped rings, decoded a block at a time.

A RingSource is a LiveSource (same interface look-up, BPF program, snaplen, own-export exclusion
and promiscuous mode) whose socket has a PACKET_RX_RING of TPACKET_V3 blocks instead of a receive
queue. The kernel fills a block with frames and hands it over whole (block_status TP_STATUS_USER)
when it is full or when ring_block_timeout has passed; read_batch() gives the ready blocks to the
compiled walker (myason.kernels.ring.walk_blocks: no Python per frame), which fills a Chunk of the fast
engine's per-packet arrays, then returns the blocks to the kernel. Frames the walker leaves to the
reference decoder (fragments, tunnels, QinQ, non-IP...) are rebuilt exactly as LiveSource would
have read them (VLAN tag put back, SLL header made for cooked devices) and decoded by
fastdecode.finish_slow, so the records are the reference engine's.

A RingCapture is the set of ring sockets of one interface: one, or `workers` sockets joined in a
PACKET_FANOUT group (PACKET_FANOUT_HASH: the kernel's symmetric flow hash sends both directions
of a flow to the same socket). Each socket feeds its own processor and flow cache. The group does
not set PACKET_FANOUT_FLAG_DEFRAG: that flag has the kernel reassemble IPv4 fragments before the
sockets see them, so a fragmented datagram would be metered as one packet and one whose fragments
never all arrive not at all (measured on bench-mix: 2,652 of 400,000 frames gone), where the
reference engine and softflowd count every fragment. Without it the fragments of a datagram
hash on addresses and protocol alone: they all reach one worker, whose fragment table gives the
non-first ones their ports, but possibly not the worker of the flow's whole packets; such a flow
is then reported as two records with the same key whose sums are exact (docs/agent.md).
"""
import errno
import logging
import mmap
import os
import select
import socket
import struct
import sys
import threading

import numpy as np

from myason import kernels
from myason.agent import fastdecode
from myason.agent.capture import (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, PACKET_STATISTICS, SO_TIMESTAMPNS,
                                  SOL_PACKET, LiveSource, _attach)
from myason.errors import CaptureError
from myason.kernels.ring import (BLOCK_NUM_PKTS, BLOCK_STATUS, HDR_SLL, HDR_STATUS, HDR_VLAN_TCI, HDR_VLAN_TPID,
                                 SLL_ADDR, SLL_PROTOCOL, TP_STATUS_KERNEL, TP_STATUS_USER,
                                 TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID)

log = logging.getLogger("myason.agent.capture")

# include/uapi/linux/if_packet.h
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_FANOUT = 18
TPACKET_V3 = 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_DEFRAG = 0x8000      # not used: see above
FANOUT_MODE = PACKET_FANOUT_HASH

DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_FRAME_SIZE = 2048
DEFAULT_BLOCKS = 32
DEFAULT_BLOCK_TIMEOUT = 0.05
# Ready blocks walked into one chunk at most (a chunk is ~84 bytes per frame).
MAX_BLOCKS_PER_READ = 8

_REQ3 = struct.Struct("=7I")        # struct tpacket_req3
_STATS3 = struct.Struct("=III")     # struct tpacket_stats_v3
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_SLL_TAIL = struct.Struct("!H")
_SLL_HW = struct.Struct("=HBB")     # sll_hatype, sll_pkttype, sll_halen
_SLL = struct.Struct("!HHH8sH")     # the SLL header LiveSource makes (capture._SLL)
_VLAN = struct.Struct("!HH")
_REJECT_ALL = [(0x06, 0, 0, 0)]     # BPF_RET | BPF_K, 0: a socket that takes nothing yet


def ring_bytes(block_size, blocks, workers=1):
    """Memory the rings of one interface take: workers x blocks x block_size."""
    return int(workers) * int(blocks) * int(block_size)


class RingChunk(fastdecode.Chunk):
    """A Chunk from a ring, with the frames' digests while a socket switch needs them (else None)."""

    __slots__ = ("digest",)

    def __init__(self, n):
        super().__init__(n)
        self.digest = None

    def select(self, keep):
        """A RingChunk of the rows in `keep` (ascending indexes), fragments and rejects renumbered."""
        keep = np.asarray(keep, np.int64)
        out = RingChunk(len(keep))
        for name in ("ts", "kw", "iplen", "flags", "vlan", "status", "offs", "lens"):
            setattr(out, name, np.ascontiguousarray(getattr(self, name)[keep]))
        if self.digest is not None:
            out.digest = self.digest[keep]
        where = {int(i): j for j, i in enumerate(keep.tolist())}
        out.frags = [(where[i],) + f[1:] for f in self.frags for i in (f[0],) if i in where]
        out.rejects = [(where[i],) + r[1:] for r in self.rejects for i in (r[0],) if i in where]
        return out


class BlockReader:
    """Reads the blocks of a TPACKET_V3 ring in the kernel's order from `buf` (the mapped ring, or
    hand-made bytes in the tests) and decodes them into RingChunks."""

    def __init__(self, buf, block_size, blocks, linktype, ifindex=0, max_blocks=MAX_BLOCKS_PER_READ):
        self.block_size = int(block_size)
        self.blocks = int(blocks)
        self.linktype = int(linktype)
        self.ifindex = int(ifindex)
        self.max_blocks = max(1, int(max_blocks))
        self.little = sys.byteorder == "little"
        self.kernels = kernels.load()
        try:
            # The block walker is numba's: loaded now, not when the first block is waiting.
            self.walk_blocks = self.kernels.walk_blocks if self.kernels is not None else None
        except RuntimeError:
            self.walk_blocks = None
        if self.walk_blocks is None:
            raise CaptureError("the ring engine needs numba (pip install numba); --engine python does without")
        self._view = memoryview(buf)
        self.u8 = np.frombuffer(buf, np.uint8, count=self.block_size * self.blocks)
        # The block headers' u32 fields (block_status, num_pkts) as one array.
        self.u32 = np.frombuffer(buf, np.uint32, count=self.block_size * self.blocks // 4)
        self.head = 0           # the next block to read, in the kernel's fill order
        self.blocks_read = 0

    def _word(self, block, field):
        return (block * self.block_size + field) >> 2

    def ready(self):
        """True when the next block is the user's."""
        return bool(self.u32[self._word(self.head, BLOCK_STATUS)] & TP_STATUS_USER)

    def pending(self):
        """Frames the kernel has put in the block it is filling (read without a lock: a hint)."""
        return 0 if self.ready() else int(self.u32[self._word(self.head, BLOCK_NUM_PKTS)])

    def read(self, digests=False):
        """(RingChunk, bytes, truncated) of the ready blocks, handed back to the kernel; None if none.

        bytes counts the frames as LiveSource builds them (tags and SLL headers included),
        truncated those cut below their length on the wire (snaplen, or a block too small).
        """
        u32 = self.u32
        offsets = []
        total = 0
        k = self.head
        most = min(self.max_blocks, self.blocks)    # each block once, even when all are ready
        while len(offsets) < most:
            w = self._word(k, BLOCK_STATUS)
            if not u32[w] & TP_STATUS_USER:
                break
            offsets.append(k * self.block_size)
            total += int(u32[w + 1])          # num_pkts follows block_status
            k = (k + 1) % self.blocks
        if not offsets:
            return None
        c = RingChunk(total)
        hdrs = np.empty(total, np.int64)
        dig = np.empty(total if digests else 0, np.uint64)
        n, nbytes, truncated = self.walk_blocks(
            self.u8, np.array(offsets, np.int64), self.linktype, self.little, self.ifindex, digests,
            c.ts, c.kw, c.iplen, c.flags, c.vlan, c.status, c.offs, c.lens, hdrs, dig)
        if n != total:      # pragma: no cover - the kernel's own count of the same blocks
            raise CaptureError("ring block walk found %d frames, the blocks say %d" % (n, total))
        if digests:
            c.digest = dig
        self._finish_slow(c, hdrs)
        # The slow frames' bytes are copied out: the blocks go back to the kernel (in order).
        for off in offsets:
            u32[(off + BLOCK_STATUS) >> 2] = TP_STATUS_KERNEL
        self.head = k
        self.blocks_read += len(offsets)
        return c, nbytes, truncated

    def _finish_slow(self, c, hdrs):
        slow = np.flatnonzero(c.status == fastdecode.SLOW).tolist()
        if not slow:
            return
        parts, pos = [], 0
        offs, lens = c.offs, c.lens
        for i in slow:
            frame = self.frame(int(hdrs[i]), int(offs[i]), int(lens[i]))
            offs[i] = pos
            lens[i] = len(frame)
            pos += len(frame)
            parts.append(frame)
        fastdecode.finish_slow(c, b"".join(parts), self.linktype)

    def frame(self, h, p, n):
        """The bytes LiveSource.read_batch makes of the frame whose tpacket3_hdr is at h."""
        view = self._view
        frame = bytes(view[p:p + n])
        status = _U32.unpack_from(view, h + HDR_STATUS)[0]
        cooked = self.linktype == LINKTYPE_LINUX_SLL
        if cooked:
            sll = h + HDR_SLL
            proto = _SLL_TAIL.unpack_from(view, sll + SLL_PROTOCOL)[0]
            hatype, pkttype, halen = _SLL_HW.unpack_from(view, sll + 8)
            hw = bytes(view[sll + SLL_ADDR:sll + SLL_ADDR + min(halen, 8)])
            frame = _SLL.pack(pkttype, hatype, len(hw), hw, proto) + frame
        if status & TP_STATUS_VLAN_VALID and (cooked or self.linktype == LINKTYPE_ETHERNET):
            tpid = (_U16.unpack_from(view, h + HDR_VLAN_TPID)[0] if status & TP_STATUS_VLAN_TPID_VALID
                    else 0x8100)
            tci = _U32.unpack_from(view, h + HDR_VLAN_TCI)[0] & 0xFFFF
            at = 14 if cooked else 12
            frame = frame[:at] + _VLAN.pack(tpid, tci) + frame[at:]
        return frame

    def close(self):
        """Drop every view of the buffer (a mapped ring cannot be unmapped while one exists)."""
        self.u8 = self.u32 = None
        if self._view is not None:
            self._view.release()
            self._view = None


class RingSource(LiveSource):
    """One TPACKET_V3 ring socket on an interface; read_batch() returns RingChunks.

    fanout: None for a socket of its own; 0 to start a new PACKET_FANOUT group (the kernel picks
    a free id, in self.fanout after open); an id to join that group. A socket in a group takes
    nothing until start() attaches its filter, so that a group is complete before it captures.
    """

    # The SnifferThread waits for room in its queue instead of dropping: the ring is the buffer,
    # and what it cannot hold the kernel drops and counts (kernel_drops).
    blocking = True

    def __init__(self, ifname, bpf_filter="", promiscuous=True, snaplen=262144, exclude=(),
                 block_size=DEFAULT_BLOCK_SIZE, frame_size=DEFAULT_FRAME_SIZE, blocks=DEFAULT_BLOCKS,
                 block_timeout=DEFAULT_BLOCK_TIMEOUT, fanout=None, poll_timeout=0.2):
        super().__init__(ifname, bpf_filter, promiscuous, snaplen, exclude, poll_timeout=poll_timeout)
        self.block_size = int(block_size)
        self.frame_size = int(frame_size)
        self.blocks = int(blocks)
        self.block_timeout = float(block_timeout)
        self.fanout = fanout
        self.group = None             # the RingCapture this socket belongs to
        self.want_digests = False     # set by the SnifferThread around a socket switch
        self.reader = None
        self._ring = None
        self._insns = None
        self._kernel["kernel_freezes"] = 0

    # -- set-up ----------------------------------------------------------------------------

    def _setup(self, sock, insns):
        size = self.block_size * self.blocks
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        per_block = self.block_size // self.frame_size
        req = _REQ3.pack(self.block_size, self.blocks, self.frame_size, per_block * self.blocks,
                         max(1, round(self.block_timeout * 1000)), 0, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError as exc:
            hint = " (lower ring_blocks, ring_block_size or workers)" if exc.errno == errno.ENOMEM else ""
            raise OSError(exc.errno, "cannot set up a ring of %d blocks of %d bytes (%d MiB, frame size %d): %s%s"
                          % (self.blocks, self.block_size, size >> 20, self.frame_size,
                             exc.strerror or exc, hint)) from None
        ring = mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self._insns = insns
            _attach(sock, _REJECT_ALL if self.fanout is not None else insns)
            # The kernel stamps frames on arrival only while some socket asks for timestamps;
            # otherwise the ring would carry the time of its own copy (later, under load).
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._bind(sock)
            if self.fanout is not None:
                self._join(sock)
            sock.setblocking(False)
        except BaseException:
            ring.close()
            raise
        self._ring = ring

    def _join(self, sock):
        if self.fanout == 0:
            arg = (FANOUT_MODE | PACKET_FANOUT_FLAG_UNIQUEID) << 16
        else:
            arg = (self.fanout & 0xFFFF) | (FANOUT_MODE << 16)
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, _U32.pack(arg))
        if self.fanout == 0:
            self.fanout = sock.getsockopt(SOL_PACKET, PACKET_FANOUT) & 0xFFFF

    def _opened(self):
        try:
            self.reader = BlockReader(self._ring, self.block_size, self.blocks, self.linktype, self.ifindex)
        except BaseException:
            self.close()
            raise

    def start(self):
        """Attach the real filter to a socket of a fanout group (it took nothing until now)."""
        if self.fanout is not None and self._sock is not None:
            try:
                _attach(self._sock, self._insns)
            except OSError as exc:
                raise self._socket_error(exc) from exc

    def mute(self):
        """Take no more frames (a reject-all filter) but stay in the fanout group."""
        if self._sock is not None:
            try:
                _attach(self._sock, _REJECT_ALL)
            except OSError:     # pragma: no cover - a live socket takes a filter
                pass

    def release(self):
        """Done with this socket (a reload replaced it): closed now, or, in a fanout group, muted
        and closed with the last of its group. A member leaving early would change where the
        group's hash sends the frames of the workers still reading their old sockets."""
        if self.group is None or self.fanout is None:
            self.close()
        else:
            self.group.release(self)

    # -- reading ---------------------------------------------------------------------------

    def read_batch(self, stop_event=None):
        """The frames of the ready blocks as one RingChunk, or [] after waiting poll_timeout.

        With stop_event set nothing is waited for, except the block the kernel is still
        filling: it is handed over within block_timeout, and waited for once.
        """
        reader = self.reader
        if reader is None:
            raise CaptureError("capture on %r is not open" % (self.ifname,))
        stopping = stop_event is not None and stop_event.is_set()
        waited = False
        while True:
            got = reader.read(self.want_digests)
            if got is not None:
                chunk, nbytes, truncated = got
                if not chunk.n:
                    continue
                self._down = False
                stats = self.stats
                stats["frames"] += chunk.n
                stats["bytes"] += nbytes
                stats["truncated"] += truncated
                return chunk
            if waited:
                return []
            waited = True
            if stopping:
                if not reader.pending():
                    return []
                self._wait(self.block_timeout + 0.1)
            elif not self._wait():
                return []

    def _wait(self, timeout=None):
        try:
            events = self._poll.poll((self.poll_timeout if timeout is None else timeout) * 1000)
        except InterruptedError:  # pragma: no cover - Python retries poll() on EINTR itself
            self.stats["eintr"] += 1
            return False
        for _fd, ev in events:
            if ev & select.POLLNVAL:
                raise CaptureError("capture socket on %r is closed" % (self.ifname,))
            if ev & select.POLLERR:
                # A ring socket is never read: its errors (ENETDOWN) come with poll.
                err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._read_error(OSError(err, os.strerror(err)))
        if not events and self._down:
            self._check_alive(None)
        return bool(events)

    def kernel_stats(self):
        """{'kernel_packets', 'kernel_drops', 'kernel_freezes'} since open (tpacket_stats_v3):
        frames that passed the filter (drops included), frames lost for want of a free block, and
        how often the ring was found full (every block the user's)."""
        if self._sock is not None:
            try:
                packets, drops, freezes = _STATS3.unpack(self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS,
                                                                               _STATS3.size))
            except OSError:
                packets = drops = freezes = 0
            k = self._kernel
            k["kernel_packets"] += packets
            k["kernel_drops"] += drops
            k["kernel_freezes"] += freezes
        return dict(self._kernel)

    def close(self):
        """Stop capturing, unmap the ring and close the socket (totals are kept); safe twice."""
        if self._sock is None:
            return
        self.kernel_stats()
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self._ring is not None:
            try:
                self._ring.close()
            except BufferError:     # pragma: no cover - a view outlived its reader: GC unmaps it
                log.warning("ring of %s still in use at close: unmapped later", self.ifname)
            self._ring = None
        self._sock.close()
        self._sock = None
        self._poll = None


class RingCapture:
    """The ring sockets of one interface: one, or `workers` in a PACKET_FANOUT hash group.

    Looks like one source to the app and reloads (open, close, ifindex, linktype,
    filter_expression); `members` are the sockets, one per worker.
    """

    def __init__(self, ifname, bpf_filter="", promiscuous=True, snaplen=262144, exclude=(), workers=1,
                 block_size=DEFAULT_BLOCK_SIZE, frame_size=DEFAULT_FRAME_SIZE, blocks=DEFAULT_BLOCKS,
                 block_timeout=DEFAULT_BLOCK_TIMEOUT, poll_timeout=0.2):
        self.ifname = ifname
        workers = max(1, int(workers))
        self.members = [RingSource(ifname, bpf_filter, promiscuous, snaplen, exclude, block_size=block_size,
                                   frame_size=frame_size, blocks=blocks, block_timeout=block_timeout,
                                   fanout=None if workers == 1 else 0, poll_timeout=poll_timeout)
                        for _ in range(workers)]
        for m in self.members:
            m.group = self
        self._released = set()
        self._lock = threading.Lock()

    def release(self, member):
        """A member was replaced: mute it; once every member is, close them all."""
        with self._lock:
            member.mute()
            self._released.add(id(member))
            if len(self._released) == len(self.members):
                self.close()

    @property
    def ifindex(self):
        return self.members[0].ifindex

    @property
    def linktype(self):
        return self.members[0].linktype

    @property
    def arphrd(self):
        return self.members[0].arphrd

    @property
    def filter_expression(self):
        return self.members[0].filter_expression

    @property
    def fanout(self):
        """The PACKET_FANOUT group id (None with one worker)."""
        return self.members[0].fanout

    def open(self):
        """Open every socket (one filter program for all), join them in one group, then start
        them; CaptureError (and nothing left open) when any cannot."""
        first = self.members[0]
        expression, insns = first.program()
        opened = []
        try:
            for m in self.members:
                m.ifindex, m.arphrd, m.linktype = first.ifindex, first.arphrd, first.linktype
                if m is not first:
                    m.fanout = first.fanout
                m.open_with(expression, insns)
                opened.append(m)
            for m in self.members:
                m.start()
        except BaseException:
            for m in opened:
                m.close()
            raise

    def close(self):
        """Close every socket."""
        for m in self.members:
            m.close()

    def kernel_stats(self):
        """The members' kernel counters, summed."""
        out = {}
        for m in self.members:
            for k, v in m.kernel_stats().items():
                out[k] = out.get(k, 0) + v
        return out

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

