"""CSV / JSON lines written directly from the fast engine's record arrays (RecordBlock,
myason.agent.records): `--output` formats whole columns with numpy into one matrix of uint64
words, a row per record (the text between fields from one template row), and deletes the
padding bytes with bytes.translate: no Python object per record. Imported only when a record
file is written: its digit tables take a few milliseconds to build.

The bytes are exactly what RecordFile writes for block.rows() (csv.writer / orjson.dumps):
tests/unit/agent/test_fastoutput.py compares both, and the integration test compares the file
with the reference engine's. How each type is written:

- integers: a word per five digits from lookup tables (100,000 groups); leading zeros are the
  padding byte 0, which the final squeeze removes;
- first/last: round(t, 6) is n / 10**6 for an integer n (rowvalues.round6); for 1e-4 <= t < 2**33
  Python's repr (and orjson's, the same algorithm) of that float is exactly n's digits with a
  decimal point six places from the right and trailing zeros dropped (one kept): six-decimal
  values are 1e-6 apart, more than the float spacing below 2**33 (2**-20), so no shorter
  decimal reads back as the same float. Other values (negative, tiny, huge, inf, nan) use repr;
- IPv4 addresses: two words of two octets each from 256-entry tables; IPv6 addresses:
  socket.inet_ntop once per distinct address (glibc's rules: '::' runs, embedded IPv4);
- text fields (agent, if_name, next_hop, end_reason and any annotation value): formatted once
  per distinct value by csv.writer or orjson themselves, so quoting and escaping are theirs.

The byte 0 can occur in no formatted field (addresses, digits, names from the kernel or the
config), so it is free as the padding byte; a value that would contain it sends the whole
block through the row path.
"""
import csv
import functools
import io
import socket
import sys

import numpy as np
import orjson

from myason import kernels
from myason.agent.rowvalues import round6, round6_units
from myason.schema import END_REASONS, FIELDS

# Rows formatted per matrix: bounds the matrix (rows x ~500 bytes for JSON lines).
SLICE = 1 << 15


# -- digit tables ---------------------------------------------------------------------------
#
# Every field is written as uint64 words (n, c), little-endian: its bytes in order, padding 0
# anywhere; a digit group of 5 or an octet pair is one word, so the matrix is filled a word per
# row and field rather than a byte. `spare`: trailing bytes of a field's last word that are 0 in
# every row, where the text that follows is folded in.

def _digit_table(count, width):
    """(count, width) uint8: the decimal digits of 0..count-1, zero-filled to width (count a
    power of ten). Built by repeating the ten digits: integer division took 9 ms at every start."""
    digits = np.arange(48, 58, dtype=np.uint8)
    out = np.empty((count, width), np.uint8)
    for j in range(width):
        run = 10 ** (width - 1 - j)
        out[:, j] = np.tile(np.repeat(digits, run), count // (10 * run))
    return out


def _as_words(table, shift=0):
    """(m, w) uint8 -> (m, ceil((shift + w) / 8)) uint64: each row's bytes from byte `shift` on."""
    m, w = table.shape
    c = max(1, -(-(shift + w) // 8))
    buf = np.zeros((m, 8 * c), np.uint8)
    buf[:, shift:shift + w] = table
    return buf.view(np.uint64)


_T5 = _digit_table(100000, 5)               # 00000 .. 99999
_T5_LEAD = _T5.copy()                       # leading zeros are padding, the last digit kept
_T5_LEAD[(np.arange(100000)[:, None] < 10 ** np.arange(4, -1, -1)[None, :]) & (np.arange(5) < 4)] = 0
_T5_NONE = _T5_LEAD.copy()                  # the same, and 0 is nothing at all
_T5_NONE[0] = 0
_W5, _W5_LEAD, _W5_NONE = (_as_words(x)[:, 0] for x in (_T5, _T5_LEAD, _T5_NONE))
_T3 = _digit_table(1000, 3)
# Fraction digits with trailing zeros as padding: the last three decimals (0: none), the first
# three (0: "0", the one decimal repr always keeps).
_T3_TAIL = _T3.copy()
for _j in range(3):
    _T3_TAIL[(np.arange(1000) % 10 ** (3 - _j)) == 0, _j] = 0
_T3_HEAD = _T3_TAIL.copy()
_T3_HEAD[0, 0] = 48
_DOT = np.full((1000, 1), 46, np.uint8)
_W_HEAD_ALL = _as_words(np.hstack([_DOT, _T3]))[:, 0]          # ".ddd"
_W_HEAD_CUT = _as_words(np.hstack([_DOT, _T3_HEAD]))[:, 0]     # "." and up to the last non-zero
_W_TAIL = _as_words(_T3_TAIL, 4)[:, 0]                          # bytes 4..6
_OCT = _T5_LEAD[:256, 2:]                                       # 0..255 without leading zeros
_W_OCT_DOT = _as_words(np.hstack([_OCT, _DOT[:256]]))[:, 0]     # "ddd." in bytes 0..3
_W_OCT_DOT_HI = _as_words(np.hstack([_OCT, _DOT[:256]]), 4)[:, 0]
_W_OCT_HI = _as_words(_OCT, 4)[:, 0]                            # "ddd" in bytes 4..6
_U5 = np.uint64(100000)
_LITTLE = sys.byteorder == "little"


def _uint_field(x):
    """(words, spare) of the decimal digits of a uint64 array: a word per group of five digits."""
    x = np.asarray(x, np.uint64)
    top = int(x.max()) if len(x) else 0
    if top < 100000:
        return _W5_LEAD[x.astype(np.intp)][:, None], 3
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
    out = np.empty((len(x), len(groups)), np.uint64)
    out[:, 0] = _W5_NONE[groups[0]]
    seen = groups[0] != 0                   # a more significant group was not zero
    last = len(groups) - 1
    for j in range(1, len(groups)):
        g = groups[j]
        out[:, j] = np.where(seen, _W5[g], (_W5_LEAD if j == last else _W5_NONE)[g])
        if j < last:
            seen |= g != 0
    return out, 3


def _round6_units(x):
    """(n, ok): n = the integer that round(v, 6) is n / 10**6 of, for the values where ok
    (1e-4 <= round(v, 6) < 2**33, see the module's notes); the rest need repr."""
    n, out, exact = round6_units(x)
    with np.errstate(invalid="ignore"):
        ok = exact & (out >= 1e-4) & (out < 8589934592.0)
    return n, ok


def _time_field(x, fallback):
    """(words, spare) of repr(round(v, 6)) for a float64 array; fallback(list of floats)
    formats the values outside the fast range (repr for CSV, orjson for JSON)."""
    units, ok = _round6_units(x)
    units = np.where(ok, units, 0.0).astype(np.uint64)
    whole, frac = np.divmod(units, np.uint64(1000000))
    head, tail = np.divmod(frac, np.uint64(1000))
    head, tail = head.astype(np.intp), tail.astype(np.intp)
    wd, _ = _uint_field(whole)
    out = np.empty((len(x), wd.shape[1] + 1), np.uint64)
    out[:, :-1] = wd
    out[:, -1] = np.where(tail != 0, _W_HEAD_ALL[head], _W_HEAD_CUT[head]) | _W_TAIL[tail]
    spare = 1
    if not ok.all():
        bad = np.flatnonzero(~ok)
        out, spare = _put_rows(out, spare, bad, fallback(round6(x[bad])))
    return out, spare


def _put_rows(words, spare, rows, texts):
    """(words, spare) with `rows` replaced by the byte strings `texts` (widened when needed)."""
    table, tspare = _text_words(texts)
    if table.shape[1] > words.shape[1]:
        wide = np.zeros((len(words), table.shape[1]), np.uint64)
        wide[:, :words.shape[1]] = words
        words, spare = wide, 8
    words[rows] = 0
    words[rows, :table.shape[1]] = table
    if table.shape[1] == words.shape[1]:
        spare = min(spare, tspare)
    return words, spare


class _Unformattable(Exception):
    """A value whose text holds the padding byte: the block goes the row path."""


def _text_words(texts):
    """(words (len(texts), c), spare) of byte strings, padded with 0."""
    for t in texts:
        if b"\0" in t:
            raise _Unformattable(t)
    w = max([1] + [len(t) for t in texts])
    c = -(-w // 8)
    buf = b"".join(t.ljust(8 * c, b"\0") for t in texts)
    return np.frombuffer(buf, np.uint64).reshape(len(texts), c).copy(), 8 * c - w


def _address_field(hi, lo, v4):
    """(words, spare) of socket.inet_ntop texts of address key words."""
    w = lo.astype(np.uint32)
    out = np.zeros((len(w), 2), np.uint64)
    octet = [((w >> s) & 0xFF).astype(np.intp) for s in (24, 16, 8, 0)]
    out[:, 0] = _W_OCT_DOT[octet[0]] | _W_OCT_DOT_HI[octet[1]]
    out[:, 1] = _W_OCT_DOT[octet[2]] | _W_OCT_HI[octet[3]]
    spare = 1
    if not v4.all():
        rows = np.flatnonzero(~v4)
        pairs = np.empty((len(rows), 2), ">u8")          # big-endian: the 16 address bytes
        pairs[:, 0], pairs[:, 1] = hi[rows], lo[rows]
        uniq, inv = np.unique(pairs.view(np.dtype((np.void, 16))).reshape(-1), return_inverse=True)
        ntop, af6 = socket.inet_ntop, socket.AF_INET6
        table, tspare = _text_words([ntop(af6, a).encode() for a in uniq.tolist()])
        wide = np.zeros((len(w), max(2, table.shape[1])), np.uint64)
        wide[:, :2] = out
        wide[rows] = 0
        wide[rows, :table.shape[1]] = table[inv.reshape(-1)]
        out = wide
        # The last word's spare bytes: IPv4 rows have byte 7 of word 1 free, IPv6 rows what
        # their text leaves; a row narrower than the matrix has its whole last word free.
        c = wide.shape[1]
        spare = min(1 if c == 2 else 8, tspare if table.shape[1] == c else 8)
    return out, spare


# -- formats --------------------------------------------------------------------------------

class _Format:
    """CSV or JSON lines: how values are written, and the bytes around the fields.

    Stateless once made (shared by every record file of the process, whatever the thread)."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "csv":
            self.before = [b""] + [b","] * (len(FIELDS) - 1)
            self.end = b"\n"
        else:
            dumps = orjson.dumps
            self.before = [(b"{" if j == 0 else b",") + dumps(name) + b":" for j, name in enumerate(FIELDS)]
            self.end = b"}\n"

    def values(self, vals):
        """Each value as the record file writes it, as bytes."""
        if self.kind != "csv":
            return [orjson.dumps(v) for v in vals]
        # Each value as csv.writer writes it in a row of two (quoting is per field, except for
        # a lone empty field, which records never are): the row less its ",\n".
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        out = []
        for v in vals:
            writer.writerow((v, ""))
            out.append(buf.getvalue()[:-2].encode())
            buf.seek(0)
            buf.truncate()
        return out

    def value(self, v):
        """One value as bytes."""
        return self.values((v,))[0]


_FORMATS = {}


def _format(kind):
    fmt = _FORMATS.get(kind)
    if fmt is None:
        fmt = _FORMATS[kind] = _Format(kind)
    return fmt


def _coded(values, fmt):
    """A column of Python values as (words, spare), or one bytes when all are equal; each
    distinct value formatted once."""
    index = {}
    codes = np.fromiter((index.setdefault((v.__class__, v), len(index)) for v in values), np.intp)
    texts = fmt.values([v for _, v in index])
    if len(texts) == 1:
        if b"\0" in texts[0]:
            raise _Unformattable(texts[0])
        return texts[0]
    table, spare = _text_words(texts)
    return table[codes], spare


def _columns(block, lo, hi, fmt):
    """The 23 fields of rows lo:hi as (words, spare) or constant bytes."""
    k, u, s = block.k[lo:hi], block.u[lo:hi], block.s[lo:hi]
    misc = k[:, 4]
    ver = misc & np.uint64(0xFF)
    v4 = ver == 4
    first, last = block.f[lo:hi, 0], block.f[lo:hi, 1]
    if block.time_shift:
        first, last = first + block.time_shift, last + block.time_shift
    ifx = k[:, 5]
    names = block.if_names
    uniq_if, inv_if = np.unique(ifx, return_inverse=True)
    if len(uniq_if) == 1:
        if_name = _const(fmt.value(names.get(int(uniq_if[0]), "")))
    else:
        table, spare = _text_words(fmt.values([names.get(x, "") for x in uniq_if.tolist()]))
        if_name = table[inv_if.reshape(-1)], spare
    table, spare = _text_words(fmt.values(END_REASONS))
    reasons = table[(s >> 24).astype(np.intp)], spare
    zero, empty = fmt.value(0), fmt.value("")
    u64 = np.uint64
    cols = [
        _address_field(k[:, 0], k[:, 1], v4), _address_field(k[:, 2], k[:, 3], v4),
        _uint_field(misc >> u64(48)), _uint_field((misc >> u64(32)) & u64(0xFFFF)),
        _uint_field((misc >> u64(24)) & u64(0xFF)), _uint_field((misc >> u64(16)) & u64(0xFF)),
        _uint_field(u[:, 0]), _uint_field(u[:, 1]),
        _time_field(first, fmt.values), _time_field(last, fmt.values),
        _uint_field(s & 0xFF), _const(fmt.value(block.agent_id)), if_name, _uint_field(ifx), zero,
        _uint_field(ver), _uint_field((s >> 8) & 0xFFFF), empty, zero, zero, zero, zero, reasons,
    ]
    if block.ann is not None:
        for j, col in zip((14, 17, 18, 19, 20, 21), block.ann):
            cols[j] = _coded(col[lo:hi], fmt)
    return cols


def _const(text):
    if b"\0" in text:
        raise _Unformattable(text)
    return text


def _assemble(cols, fmt, n):
    """One uint64 matrix of the rows (fields and the text around them), squeezed of padding."""
    if fmt.kind == "jsonl":
        # IP addresses are quoted around the digits the fast path makes.
        wrap = {0, 1}
    else:
        wrap = set()
    pieces = []                              # bytes or (words, spare), in order
    text = b""
    for j, (before, col) in enumerate(zip(fmt.before, cols)):
        text += before + (b'"' if j in wrap else b"")
        if isinstance(col, bytes):
            text += col
            continue
        pieces.append(text)
        text = b'"' if j in wrap else b""
        pieces.append(col)
    pieces.append(text + fmt.end)
    # Text after a field goes first into the field's spare bytes, the rest into words of its own.
    blocks = []
    for p in pieces:
        if isinstance(p, bytes):
            if blocks and blocks[-1][1] and p:
                words, spare = blocks[-1]
                head, p = p[:spare], p[spare:]
                words[:, -1] |= np.frombuffer(bytes(8 - spare) + head + bytes(spare - len(head)), np.uint64)[0]
                blocks[-1] = (words, spare - len(head))
            if p:
                c = -(-len(p) // 8)
                blocks.append((np.frombuffer(p.ljust(8 * c, b"\0"), np.uint64), 8 * c - len(p)))
        else:
            blocks.append(p)
    width = sum(b[0].shape[-1] for b in blocks)
    assemble = _native("assemble")
    if assemble is not None:
        # The C kernels' one pass over the parts, without the GIL and without the matrix.
        return assemble(n, [np.ascontiguousarray(words) for words, _ in blocks])
    # The text between fields is the same in every row: broadcast to its columns; the fields'
    # words to theirs.
    mat = np.empty((n, width), np.uint64)
    pos = 0
    for words, _ in blocks:
        c = words.shape[-1]
        mat[:, pos:pos + c] = words
        pos += c
    # bytes.translate deletes the padding in one C loop (faster than a boolean mask).
    return mat.tobytes().translate(None, b"\0")


@functools.cache
def _native(name):
    return kernels.native_only(name)


def format_block(block, kind):
    """The block's records as RecordFile writes them: kind "csv" (no header) or "jsonl"."""
    n = len(block)
    if not n:
        return b""
    fmt = _format(kind)
    if not _LITTLE:          # the word tables are little-endian
        return format_rows(block.rows(), kind)
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
