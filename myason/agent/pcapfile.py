"""Read classic pcap and pcapng capture files for replay through the flow agent."""

import mmap
import os
import struct
from itertools import repeat

from myason.errors import CaptureError
from myason.kernels.constants import PCAP_MAX_RECORD

# libpcap's LT_LINKTYPE(): the upper bits of the header field carry FCS-length flags.
LINKTYPE_MASK = 0x03FFFFFF
# A record longer than this is corruption, not a packet (libpcap uses the same bound).
MAX_RECORD = PCAP_MAX_RECORD

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
_SHB_MAGIC = b"\x0a\x0d\x0d\x0a"
_BYTE_ORDER_MAGICS = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}

BT_SHB = 0x0A0D0D0A
BT_IDB = 1
BT_PB = 2
BT_SPB = 3
BT_EPB = 6

OPT_ENDOFOPT = 0
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14

# Counters every pass starts with, so consumers can read them without .get().
STAT_KEYS = (
    "packets",
    "truncated_records",       # classic: record header or data cut by end of file
    "bad_records",             # classic: incl_len absurd (> MAX_RECORD)
    "bad_blocks",              # pcapng: sum of the block reasons below
    "bad_block_length",        # length < 12 or not a multiple of 4 (stops reading)
    "block_past_eof",          # block runs past end of file (stops reading)
    "block_length_mismatch",   # trailing length differs from leading one (stops reading)
    "bad_section",             # SHB with unknown byte-order magic or version (stops reading)
    "bad_interface",           # IDB too short (kept as a placeholder, its packets dropped)
    "unknown_interface",       # packet names an interface the section did not describe
    "bad_packet_length",       # packet block too short for its captured length
    "bad_options",             # IDB option list damaged (defaults kept)
    "skipped_blocks",          # NRB, ISB, DSB, custom and other block types
    "sections",
    "interfaces",
)


class _NgStructs:
    """Precompiled pcapng structs for one byte order."""

    __slots__ = ("head", "u32", "idb", "epb", "pb", "opt", "i64")

    def __init__(self, order):
        self.head = struct.Struct(order + "II")
        self.u32 = struct.Struct(order + "I")
        self.idb = struct.Struct(order + "HHI")
        self.epb = struct.Struct(order + "IIIII")
        self.pb = struct.Struct(order + "HHIIII")
        self.opt = struct.Struct(order + "HH")
        self.i64 = struct.Struct(order + "q")


_NG = {"<": _NgStructs("<"), ">": _NgStructs(">")}


def _tsresol_units(value):
    """Units per second for an if_tsresol byte (power of 10, or of 2 when the high bit is set)."""
    if value & 0x80:
        return 1 << (value & 0x7F)
    return 10 ** value


class CaptureFile:
    """An open pcap or pcapng file."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self._buf = None
        self._buf = self._load()
        self._parse_header()

    def _load(self):
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > 0:
                    try:
                        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    except (OSError, ValueError):
                        pass  # not mappable (pipe, special file): read it instead
                data = f.read()
        except FileNotFoundError:
            raise CaptureError("%s: no such file" % self.path) from None
        except IsADirectoryError:
            raise CaptureError("%s: is a directory, not a capture file" % self.path) from None
        except PermissionError:
            raise CaptureError("%s: permission denied" % self.path) from None
        except OSError as e:
            raise CaptureError("%s: cannot read: %s" % (self.path, e.strerror or e)) from None
        if not data:
            raise CaptureError("%s: empty file" % self.path)
        return data

    def _parse_header(self):
        buf = self._buf
        size = len(buf)
        magic = bytes(buf[:4])
        known = list(_PCAP_MAGICS) + [_SHB_MAGIC]
        if size < 4 and any(m.startswith(magic) for m in known):
            self._fail("header cut short (%d bytes)" % size)
        if magic in _PCAP_MAGICS:
            self.format = "pcap"
            self.byte_order, self._div = _PCAP_MAGICS[magic]
            if size < 24:
                self._fail("pcap global header cut short (%d of 24 bytes)" % size)
            _, _, _, _, snaplen, network = struct.unpack_from(self.byte_order + "HHiIII", buf, 4)
            self.snaplen = snaplen
            self.linktype = network & LINKTYPE_MASK
            self._rec = struct.Struct(self.byte_order + "IIII")
        elif magic == _SHB_MAGIC:
            self.format = "pcapng"
            self.snaplen = None
            self.linktype = None  # per interface: each packet carries its own
            if size < 28:
                self._fail("pcapng section header cut short (%d bytes)" % size)
            order = _BYTE_ORDER_MAGICS.get(bytes(buf[8:12]))
            if order is None:
                self._fail("pcapng section header has a bad byte-order magic")
            self.byte_order = order
            blen, major = struct.unpack_from(order + "I4xH", buf, 4)
            if blen > size:
                self._fail("pcapng section header cut short (%d of %d bytes)" % (size, blen))
            if major != 1:
                self._fail("unsupported pcapng version %d" % major)
        elif magic[:2] == b"\x1f\x8b":
            self._fail("gzip-compressed; decompress it first")
        else:
            self._fail("not a pcap or pcapng file (magic %s)" % magic.hex())

    def _fail(self, message):
        self.close()
        raise CaptureError("%s: %s" % (self.path, message))

    def packets(self):
        """Yield (ts, frame, linktype, ifindex, orig_len) for every packet, from the start."""
        for batch in self.batches():
            yield from batch

    __iter__ = packets

    def batches(self, size=4096):
        """Yield lists of up to `size` packet tuples, from the start; resets `stats`."""
        if self._buf is None:
            raise CaptureError("%s: capture file is closed" % self.path)
        size = max(1, int(size))
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        if self.format == "pcap":
            return self._pcap_batches(size)
        return self._pcapng_batches(size)

    def _pcap_batches(self, size):
        buf = self._buf
        end = len(buf)
        unpack = self._rec.unpack_from
        div = self._div
        lt = self.linktype
        maxrec = MAX_RECORD
        st = self.stats
        off = 24
        stop = off >= end
        while not stop:
            batch = []
            append = batch.append
            try:
                # Hot loop: the only per-packet test is the absurd-length one; running
                # out of file shows up as struct.error, and an overlong last record
                # as off > end, both handled once after the loop.
                for _ in repeat(None, size):
                    sec, frac, incl, orig = unpack(buf, off)
                    if incl > maxrec:
                        st["bad_records"] += 1
                        stop = True
                        break
                    start = off + 16
                    off = start + incl
                    append((sec + frac / div, buf[start:off], lt, 0, orig))
            except struct.error:
                stop = True
                if off < end:
                    st["truncated_records"] += 1  # record header cut short
            except ValueError:
                if self._buf is None:
                    return  # closed under our feet
                raise
            if off > end:
                batch.pop()
                st["truncated_records"] += 1
                stop = True
            elif off == end:
                stop = True
            if batch:
                st["packets"] += len(batch)
                yield batch

    def newest_timestamp(self):
        """The latest timestamp of the packets a replay of this file reads; None when it has none.

        Classic pcap: from the record headers alone, about 0.35 µs a record (the frames are not
        sliced). pcapng: from a walk of its blocks, as a replay would read them.
        """
        if self._buf is None:
            raise CaptureError("%s: capture file is closed" % self.path)
        if self.format == "pcapng":
            newest = None
            for batch in self._pcapng_batches(4096):
                top = max(p[0] for p in batch)
                newest = top if newest is None or top > newest else newest
            self.stats = dict.fromkeys(STAT_KEYS, 0)
            return newest
        buf, unpack, ticks = self._buf, self._rec.unpack_from, int(self._div)
        end = len(buf)
        off, best, found = 24, 0, False
        # The same records _pcap_batches yields: it stops at an absurd length or a cut record.
        while off + 16 <= end:
            sec, frac, incl, _ = unpack(buf, off)
            nxt = off + 16 + incl
            if incl > MAX_RECORD or nxt > end:
                break
            t = sec * ticks + frac
            if t > best or not found:
                best, found = t, True
            off = nxt
        if not found:
            return None
        sec, frac = divmod(best, ticks)
        return sec + frac / self._div

    def _pcapng_batches(self, size):
        try:
            yield from self._pcapng_walk(size)
        except ValueError:
            if self._buf is None:
                return  # closed under our feet
            raise

    def _bad(self, reason):
        self.stats[reason] += 1
        self.stats["bad_blocks"] += 1

    def _pcapng_walk(self, size):
        buf = self._buf
        end = len(buf)
        st = self.stats
        s = _NG[self.byte_order]
        ifaces = []
        last_ts = 0.0
        batch = []
        append = batch.append
        off = 0
        while off < end:
            if end - off < 12:
                self._bad("block_past_eof")
                break
            if buf[off:off + 4] == _SHB_MAGIC:
                # The SHB's own length is in the byte order its body announces.
                order = _BYTE_ORDER_MAGICS.get(bytes(buf[off + 8:off + 12]))
                if order is None:
                    self._bad("bad_section")
                    break
                s = _NG[order]
                btype = BT_SHB
                blen = s.u32.unpack_from(buf, off + 4)[0]
            else:
                btype, blen = s.head.unpack_from(buf, off)
            if blen < 12 or blen & 3:
                self._bad("bad_block_length")
                break
            nxt = off + blen
            if nxt > end:
                self._bad("block_past_eof")
                break
            if s.u32.unpack_from(buf, nxt - 4)[0] != blen:
                self._bad("block_length_mismatch")
                break

            if btype == BT_EPB or btype == BT_PB:
                if blen < 32:
                    self._bad("bad_packet_length")
                else:
                    if btype == BT_EPB:
                        ifid, hi, lo, caplen, orig = s.epb.unpack_from(buf, off + 8)
                    else:
                        ifid, _, hi, lo, caplen, orig = s.pb.unpack_from(buf, off + 8)
                    if 32 + caplen > blen:
                        self._bad("bad_packet_length")
                    elif ifid >= len(ifaces) or ifaces[ifid] is None:
                        self._bad("unknown_interface")
                    else:
                        lt, units, tsoff, _ = ifaces[ifid]
                        sec, frac = divmod((hi << 32) | lo, units)
                        last_ts = sec + tsoff + frac / units
                        append((last_ts, buf[off + 28:off + 28 + caplen], lt, ifid, orig))
            elif btype == BT_SPB:
                if not ifaces or ifaces[0] is None:
                    self._bad("unknown_interface")
                else:
                    lt, _, _, snaplen = ifaces[0]
                    orig = s.u32.unpack_from(buf, off + 8)[0]
                    caplen = min(orig, blen - 16)
                    if snaplen:
                        caplen = min(caplen, snaplen)
                    append((last_ts, buf[off + 12:off + 12 + caplen], lt, 0, orig))
            elif btype == BT_IDB:
                ifaces.append(self._interface(buf, off, blen, s))
                st["interfaces"] += 1
            elif btype == BT_SHB:
                if blen < 28 or s.idb.unpack_from(buf, off + 12)[0] != 1:
                    self._bad("bad_section")
                    break
                ifaces = []
                st["sections"] += 1
            else:
                st["skipped_blocks"] += 1
            off = nxt
            if len(batch) >= size:
                st["packets"] += len(batch)
                yield batch
                batch = []
                append = batch.append
        if batch:
            st["packets"] += len(batch)
            yield batch

    def _interface(self, buf, off, blen, s):
        """(linktype, units per second, ts offset, snaplen) of an IDB, or None if unusable."""
        if blen < 20:
            self._bad("bad_interface")
            return None
        linktype, _, snaplen = s.idb.unpack_from(buf, off + 8)
        units = 1000000
        tsoff = 0
        p = off + 16
        stop = off + blen - 4
        while p + 4 <= stop:
            code, olen = s.opt.unpack_from(buf, p)
            p += 4
            if code == OPT_ENDOFOPT:
                break
            if p + olen > stop:
                self.stats["bad_options"] += 1
                break
            if code == OPT_IF_TSRESOL and olen >= 1:
                units = _tsresol_units(buf[p])
            elif code == OPT_IF_TSOFFSET and olen >= 8:
                tsoff = s.i64.unpack_from(buf, p)[0]
            p += (olen + 3) & ~3
        return (linktype & LINKTYPE_MASK, units, tsoff, snaplen)

    def close(self):
        """Release the file mapping; iterators still running stop quietly."""
        buf, self._buf = self._buf, None
        if isinstance(buf, mmap.mmap):
            buf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return "<CaptureFile %s %s%s>" % (
            self.path, getattr(self, "format", "?"), " closed" if self._buf is None else "")


def open_capture(path):
    """Open a pcap or pcapng file; raises CaptureError if it cannot be read as one."""
    return CaptureFile(path)
