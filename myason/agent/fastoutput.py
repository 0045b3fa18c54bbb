"""Flow records of the fast engine as arrays, and CSV / JSON lines written from them directly.

A RecordBlock is what a fast-engine processor hands the exporter: FastFlowCache.take_arrays()
plus what the rows need from the processor (agent id, interface names, time shift, route and
ASN annotations). Rows (Python lists) are built only when something asks for them (export to
collectors); `--output` formats whole columns with numpy into one byte matrix, a row of the
matrix per record, and squeezes out the padding: no Python object per record.

The bytes are exactly what RecordFile writes for block.rows() (csv.writer / orjson.dumps):
tests/unit/agent/test_fastoutput.py compares both, and the integration test compares the file
with the reference engine's. How each type is written:

- integers: decimal digits from lookup tables (100,000 five-digit groups); leading zeros are
  the padding byte 0, which the final squeeze removes;
- first/last: round(t, 6) is n / 10**6 for an integer n (process.round6); for 1e-4 <= t < 2**33
  Python's repr (and orjson's, the same algorithm) of that float is exactly n's digits with a
  decimal point six places from the right and trailing zeros dropped (one kept): six-decimal
  values are 1e-6 apart, more than the float spacing below 2**33 (2**-20), so no shorter
  decimal reads back as the same float. Other values (negative, tiny, huge, inf, nan) use repr;
- IPv4 addresses: four octets from a 256-entry table; IPv6 addresses: socket.inet_ntop once
  per distinct address (glibc's rules: '::' runs, embedded IPv4), then gathered;
- text fields (agent, if_name, next_hop, end_reason and any annotation value): formatted once
  per distinct value by csv.writer or orjson themselves, so quoting and escaping are theirs.

The byte 0 can occur in no formatted field (addresses, digits, names from the kernel or the
config), so it is free as the padding byte; a value that would contain it sends the whole
block through the row path.
"""
import csv
import gc
import io
import socket
from itertools import repeat

import numpy as np
import orjson

from myason.record import END_REASONS, FIELDS

# Rows formatted per matrix: bounds the matrix (rows x ~400 bytes for JSON lines).
SLICE = 1 << 15


class RecordBlock:
    """Expired flows of a FastFlowCache as arrays, with what their rows need from the processor.

    k: key words (n, 6) uint64; u: packets, bytes (n, 2); f: first, last (n, 2) float64;
    s: tcp_flags | vlan << 8 | end reason index << 24 (n,) uint32 (FastFlowCache.take_arrays).
    Route and ASN annotations, when configured, are looked up here (at take time, as
    take_rows() did), one call per record as in the reference engine.
    """

    __slots__ = ("k", "u", "f", "s", "agent_id", "if_names", "time_shift", "ann")

    def __init__(self, k, u, f, s, agent_id, if_names=None, time_shift=0.0, routes=None, asn=None):
        self.k, self.u, self.f, self.s = k, u, f, s
        self.agent_id = agent_id
        self.if_names = if_names or {}
        self.time_shift = float(time_shift or 0.0)
        self.ann = None
        if (routes is not None or asn is not None) and len(s):
            from myason.agent.process import _annotate
            ver = (k[:, 4] & 0xFF).tolist()
            ann = [_annotate(w, v, routes, asn) for w, v in zip(k.tolist(), ver)]
            # out_if, next_hop, src_mask, dst_mask, src_as, dst_as: one tuple per column
            self.ann = tuple(zip(*ann))

    def __len__(self):
        return len(self.s)

    @property
    def bytes_total(self):
        """Sum of the records' byte counts (the exporter's flow_bytes)."""
        col = self.u[:, 1]
        if not len(col):
            return 0
        if int(col.max()) < (1 << 64) // len(col):      # the uint64 sum cannot wrap
            return int(col.sum(dtype=np.uint64))
        return sum(col.tolist())

    def times(self):
        """first and last as exported (time shift added), before rounding."""
        first, last = self.f[:, 0], self.f[:, 1]
        if self.time_shift:
            first, last = first + self.time_shift, last + self.time_shift
        return first, last

    def rows(self):
        """The records as rows (lists in FIELDS order), as the reference engine makes them."""
        n = len(self.s)
        if not n:
            return []
        # ~1e5 new lists at a time: the cyclic GC would rescan them again and again, and rows
        # hold no cycles.
        was = gc.isenabled()
        gc.disable()
        try:
            return self._rows(n)
        finally:
            if was:
                gc.enable()

    def _rows(self, n):
        from myason.agent.process import _addr_texts, round6
        k, u, s = self.k, self.u, self.s
        misc = k[:, 4]
        ver = misc & 0xFF
        v4 = ver == 4
        src = _addr_texts(k[:, 0], k[:, 1], v4)
        dst = _addr_texts(k[:, 2], k[:, 3], v4)
        ifx = k[:, 5].tolist()
        names = self.if_names
        name = [names.get(x, "") for x in ifx] if names else repeat("", n)
        reason = np.array(END_REASONS, dtype=object)[s >> 24].tolist()
        first, last = self.times()
        cols = [src, dst, (misc >> 48).tolist(), ((misc >> 32) & 0xFFFF).tolist(),
                ((misc >> 24) & 0xFF).tolist(), ((misc >> 16) & 0xFF).tolist(),
                u[:, 0].tolist(), u[:, 1].tolist(), round6(first), round6(last),
                (s & 0xFF).tolist(), repeat(self.agent_id, n), name, ifx, repeat(0, n),
                ver.tolist(), ((s >> 8) & 0xFFFF).tolist(), repeat("", n), repeat(0, n),
                repeat(0, n), repeat(0, n), repeat(0, n), reason]
        if self.ann is not None:
            cols[14], cols[17], cols[18], cols[19], cols[20], cols[21] = self.ann
        return list(map(list, zip(*cols)))


# -- digit tables ---------------------------------------------------------------------------

def _digit_table(count, width):
    """(count, width) uint8: the decimal digits of 0..count-1, zero-filled to width."""
    v = np.arange(count, dtype=np.int64)[:, None] // (10 ** np.arange(width - 1, -1, -1))[None, :]
    return (v % 10 + 48).astype(np.uint8)


_T5 = _digit_table(100000, 5)               # 00000 .. 99999
_T5_LEAD = _T5.copy()                       # leading zeros are padding, the last digit kept
_T5_LEAD[(np.arange(100000)[:, None] < 10 ** np.arange(4, -1, -1)[None, :]) & (np.arange(5) < 4)] = 0
_T5_NONE = _T5_LEAD.copy()                  # the same, and 0 is nothing at all
_T5_NONE[0] = 0
_T3 = _digit_table(1000, 3)
# Fraction digits with trailing zeros as padding: _T3_TAIL for the last three decimals (0: none),
# _T3_HEAD for the first three (0: "0", the one decimal repr always keeps).
_T3_TAIL = _T3.copy()
for _j in range(3):
    _T3_TAIL[(np.arange(1000) % 10 ** (3 - _j)) == 0, _j] = 0
_T3_HEAD = _T3_TAIL.copy()
_T3_HEAD[0, 0] = 48
_OCTET = _T5_LEAD[:256, 2:]                 # 0..255 without leading zeros
_U5 = np.uint64(100000)
_NUL = 0


def _uint_digits(x):
    """(n, w) uint8 decimal digits of a uint64 array, leading zeros as padding."""
    x = np.asarray(x, np.uint64)
    n = len(x)
    top = int(x.max()) if n else 0
    if top < 100000:
        return _T5_LEAD[x.astype(np.intp)]
    groups = []                             # least significant first
    rest = x
    while True:
        rest, g = np.divmod(rest, _U5)
        groups.append(g.astype(np.intp))
        top //= 100000
        if top < 100000:
            groups.append(rest.astype(np.intp))
            break
    groups.reverse()
    out = np.empty((n, 5 * len(groups)), np.uint8)
    seen = groups[0] != 0                   # a more significant group was not zero
    out[:, :5] = _T5_NONE[groups[0]]
    last = len(groups) - 1
    for j in range(1, len(groups)):
        g = groups[j]
        low = _T5_LEAD if j == last else _T5_NONE
        out[:, 5 * j:5 * j + 5] = np.where(seen[:, None], _T5[g], low[g])
        if j < last:
            seen |= g != 0
    return out


def _round6_units(x):
    """(n, ok): n = the integer that round(v, 6) is n / 10**6 of, for the values where ok
    (1e-4 <= round(v, 6) < 2**33, see the module's notes); the rest need repr."""
    from myason.agent.process import round6_units
    n, out, exact = round6_units(x)
    with np.errstate(invalid="ignore"):
        ok = exact & (out >= 1e-4) & (out < 8589934592.0)
    return n, ok, out


def _time_digits(x, fallback):
    """(n, w) uint8 of repr(round(v, 6)) for a float64 array; fallback(list of floats) formats
    the values outside the fast range (repr for CSV, orjson for JSON)."""
    units, ok, rounded = _round6_units(x)
    units = np.where(ok, units, 0.0).astype(np.uint64)
    whole, frac = np.divmod(units, np.uint64(1000000))
    head, tail = np.divmod(frac, np.uint64(1000))
    wd = _uint_digits(whole)
    out = np.empty((len(x), wd.shape[1] + 7), np.uint8)
    out[:, :wd.shape[1]] = wd
    out[:, wd.shape[1]] = 46                # "."
    tail = tail.astype(np.intp)
    out[:, -6:-3] = np.where((tail != 0)[:, None], _T3[head.astype(np.intp)], _T3_HEAD[head.astype(np.intp)])
    out[:, -3:] = _T3_TAIL[tail]
    if not ok.all():
        bad = np.flatnonzero(~ok)
        from myason.agent.process import round6
        texts = fallback(round6(x[bad]))
        out = _put_texts(out, bad, texts)
    return out


def _put_texts(out, rows, texts):
    """out with rows replaced by the byte strings texts (widened when needed)."""
    table = _text_table(texts)
    if table.shape[1] > out.shape[1]:
        wide = np.zeros((len(out), table.shape[1]), np.uint8)
        wide[:, :out.shape[1]] = out
        out = wide
    out[rows] = 0
    out[rows, :table.shape[1]] = table
    return out


class _Unformattable(Exception):
    """A value whose text holds the padding byte: the block goes the row path."""


def _text_table(texts):
    """(len(texts), w) uint8 of byte strings, padded with 0."""
    if not texts:
        return np.zeros((0, 1), np.uint8)
    for t in texts:
        if b"\0" in t:
            raise _Unformattable(t)
    w = max(1, max(len(t) for t in texts))
    return np.frombuffer(b"".join(t.ljust(w, b"\0") for t in texts), np.uint8).reshape(len(texts), w)


def _ipv4_digits(words):
    """(n, 15) uint8 of the dotted quads of the low 32 bits of uint64 words."""
    w = words.astype(np.uint32)
    out = np.empty((len(w), 15), np.uint8)
    for j, shift in enumerate((24, 16, 8, 0)):
        out[:, 4 * j:4 * j + 3] = _OCTET[((w >> shift) & 0xFF).astype(np.intp)]
        if j < 3:
            out[:, 4 * j + 3] = 46
    return out


def _address_digits(hi, lo, v4, quote):
    """(n, w) uint8 of socket.inet_ntop texts of address key words (quoted for JSON)."""
    out = _ipv4_digits(lo)
    if not v4.all():
        rows = np.flatnonzero(~v4)
        pairs = np.stack([hi[rows], lo[rows]], axis=1)
        uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
        ntop, af6 = socket.inet_ntop, socket.AF_INET6
        texts = [ntop(af6, ((h << 64) | l).to_bytes(16, "big")).encode() for h, l in uniq.tolist()]
        table = _text_table(texts)
        if table.shape[1] > out.shape[1]:
            wide = np.zeros((len(out), table.shape[1]), np.uint8)
            wide[:, :out.shape[1]] = out
            out = wide
        out[rows] = 0
        out[rows, :table.shape[1]] = table[inv.reshape(-1)]
    if quote:
        wide = np.empty((len(out), out.shape[1] + 2), np.uint8)
        wide[:, 0] = wide[:, -1] = 34        # '"'
        wide[:, 1:-1] = out
        out = wide
    return out


# -- formats --------------------------------------------------------------------------------

class _Format:
    """CSV or JSON lines: how one value is written, and the bytes around the fields."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")

            def value(v):
                # The field as csv.writer writes it in a row of two (quoting is per field,
                # except for a lone empty field, which the records never are).
                writer.writerow((v, ""))
                text = buf.getvalue()
                buf.seek(0)
                buf.truncate()
                return text[:-2].encode()
            self.value = value
            self.before = [b""] + [b","] * (len(FIELDS) - 1)
            self.end = b"\n"
        else:
            dumps = orjson.dumps
            self.value = dumps
            self.before = [(b"{" if j == 0 else b",") + dumps(name) + b":" for j, name in enumerate(FIELDS)]
            self.end = b"}\n"

    def values(self, vals):
        return [self.value(v) for v in vals]


_FORMATS = {}


def _format(kind):
    fmt = _FORMATS.get(kind)
    if fmt is None:
        fmt = _FORMATS[kind] = _Format(kind)
    return fmt


def _coded(values, fmt):
    """(n, w) uint8 of a column of Python values (or one bytes when they are all equal),
    each distinct value formatted once."""
    index = {}
    codes = np.fromiter((index.setdefault((v.__class__, v), len(index)) for v in values), np.intp)
    texts = fmt.values([v for _, v in index])
    if len(texts) == 1:
        if b"\0" in texts[0]:
            raise _Unformattable(texts[0])
        return texts[0]
    return _text_table(texts)[codes]


def _columns(block, lo, hi, fmt):
    """The 23 fields of rows lo:hi as (n, w) uint8 matrices or constant bytes."""
    k, u, s = block.k[lo:hi], block.u[lo:hi], block.s[lo:hi]
    n = hi - lo
    misc = k[:, 4]
    ver = misc & np.uint64(0xFF)
    v4 = ver == 4
    json = fmt.kind == "jsonl"
    first, last = block.f[lo:hi, 0], block.f[lo:hi, 1]
    if block.time_shift:
        first, last = first + block.time_shift, last + block.time_shift
    to_text = fmt.values
    ifx = k[:, 5]
    names = block.if_names
    uniq_if, inv_if = np.unique(ifx, return_inverse=True)
    if len(uniq_if) == 1:
        if_name = fmt.value(names.get(int(uniq_if[0]), "")) if names else fmt.value("")
        if b"\0" in if_name:
            raise _Unformattable(if_name)
    else:
        if_name = _text_table(to_text([names.get(x, "") for x in uniq_if.tolist()]))[inv_if.reshape(-1)]
    reasons = _text_table(to_text(END_REASONS))[(s >> 24).astype(np.intp)]
    agent = fmt.value(block.agent_id)
    if b"\0" in agent:
        raise _Unformattable(agent)
    zero, empty = fmt.value(0), fmt.value("")
    cols = [
        _address_digits(k[:, 0], k[:, 1], v4, json), _address_digits(k[:, 2], k[:, 3], v4, json),
        _uint_digits(misc >> np.uint64(48)), _uint_digits((misc >> np.uint64(32)) & np.uint64(0xFFFF)),
        _uint_digits((misc >> np.uint64(24)) & np.uint64(0xFF)),
        _uint_digits((misc >> np.uint64(16)) & np.uint64(0xFF)),
        _uint_digits(u[:, 0]), _uint_digits(u[:, 1]),
        _time_digits(first, to_text), _time_digits(last, to_text),
        _uint_digits(s & 0xFF), agent, if_name, _uint_digits(ifx), zero,
        _uint_digits(ver), _uint_digits((s >> 8) & 0xFFFF), empty, zero, zero, zero, zero, reasons,
    ]
    if block.ann is not None:
        for j, col in zip((14, 17, 18, 19, 20, 21), block.ann):
            cols[j] = _coded(col[lo:hi], fmt)
    assert n == len(s)
    return cols


def _assemble(cols, fmt, n):
    """One byte matrix of the rows (fields and the text between them), squeezed."""
    pieces = []                              # bytes or (n, w) uint8, in order
    text = b""
    for before, col in zip(fmt.before, cols):
        text += before
        if isinstance(col, bytes):
            text += col
            continue
        if text:
            pieces.append(text)
            text = b""
        pieces.append(col)
    pieces.append(text + fmt.end)
    width = sum(len(p) if isinstance(p, bytes) else p.shape[1] for p in pieces)
    mat = np.empty((n, width), np.uint8)
    pos = 0
    for p in pieces:
        if isinstance(p, bytes):
            mat[:, pos:pos + len(p)] = np.frombuffer(p, np.uint8)
            pos += len(p)
        else:
            mat[:, pos:pos + p.shape[1]] = p
            pos += p.shape[1]
    flat = mat.reshape(-1)
    return flat[flat != _NUL].tobytes()


def format_block(block, kind):
    """The block's records as RecordFile writes them: kind "csv" (no header) or "jsonl"."""
    n = len(block)
    if not n:
        return b""
    fmt = _format(kind)
    try:
        return b"".join(_assemble(_columns(block, lo, min(n, lo + SLICE), fmt), fmt, min(n, lo + SLICE) - lo)
                        for lo in range(0, n, SLICE))
    except _Unformattable:
        return format_rows(block.rows(), kind)


def format_rows(rows, kind):
    """Rows (lists in FIELDS order) as RecordFile writes them (the reference for format_block)."""
    if kind == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue().encode()
    dumps = orjson.dumps
    return b"".join(dumps(dict(zip(FIELDS, r))) + b"\n" for r in rows)
