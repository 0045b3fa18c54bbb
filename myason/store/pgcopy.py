"""PostgreSQL COPY data for flow rows: the column layout, binary and text encoders.

The writer's hottest step (the processors run it for every spooled batch, see Writer.spool_encoder).
encode_binary works column by column: the rows are transposed once, the fixed-size columns become
one int64 array (numpy checks their types and ranges for the whole batch at once), addresses are
packed by C-level maps, the repetitive columns after them (exporter, next hop, agent, interface,
end reason, enrichment) are encoded once per distinct combination and cached across batches, and a
compiled kernel (myason.kernels.pgcopy) lays the rows out.
Without numba the same columns go through struct and bytes.join instead (encode_binary_python);
both give the same bytes. Figures: docs/performance.md, "Collector: columnar encoders and kernels".
"""
import socket
import struct
import time
from itertools import chain, count, repeat
from operator import mul, sub

from myason.kernels import load_or_none as _load_kernels
from myason.schema import ENRICHED_ROW_FIELDS, ENRICH_FIELDS, ENRICH_INT_FIELDS, ROW_FIELDS, INDEX as _I

_NCOLS = len(ROW_FIELDS)
# COPY column order: fixed-size columns first, then addresses, then texts.
_FIXED_COLS = (("src_port", "i", 4), ("dst_port", "i", 4), ("proto", "h", 2), ("tos", "h", 2),
               ("packets", "q", 8), ("bytes", "q", 8), ("first", "q", 8), ("last", "q", 8),
               ("tcp_flags", "h", 2), ("in_if", "q", 8), ("out_if", "q", 8),
               ("ip_version", "h", 2), ("vlan", "h", 2), ("src_mask", "h", 2),
               ("dst_mask", "h", 2), ("src_as", "q", 8), ("dst_as", "q", 8), ("received", "q", 8))
_INET_COLS = ("src_ip", "dst_ip", "exporter", "next_hop")
_TEXT_COLS = ("agent", "if_name", "end_reason")
COPY_COLUMNS = tuple(c for c, _, _ in _FIXED_COLS) + _INET_COLS + _TEXT_COLS
_FIXED = struct.Struct(">h" + "".join("i" + code for _, code, _ in _FIXED_COLS))

_PG_EPOCH_US = 946684800 * 1000000          # 2000-01-01 UTC, PostgreSQL's timestamp origin
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
# inet binary: length, family (PGSQL_AF_INET 2 / PGSQL_AF_INET6 3), bits, is_cidr, address size
_INET4 = struct.pack(">i4B", 8, 2, 32, 0, 4)
_INET6 = struct.pack(">i4B", 20, 3, 128, 0, 16)
_ENCODE_ERRORS = (struct.error, TypeError, ValueError, OverflowError, OSError, AttributeError,
                  UnicodeError, IndexError)


# Enriched rows (ENRICHED_ROW_FIELDS) add these COPY columns after COPY_COLUMNS.
ENRICH_COPY_COLUMNS = ENRICH_FIELDS
_NCOLS_ENRICHED = len(ENRICHED_ROW_FIELDS)
_ENRICH_KINDS = tuple(f in ENRICH_INT_FIELDS for f in ENRICH_FIELDS)
_INT8 = struct.Struct(">iq").pack


def encode_binary_enriched(rows):
    """Binary COPY data for ENRICHED_ROW_FIELDS rows (COPY_COLUMNS + ENRICH_COPY_COLUMNS)."""
    return encode_binary(rows, enriched=True)


def encode_text_enriched(rows):
    """Text COPY data for ENRICHED_ROW_FIELDS rows (COPY_COLUMNS + ENRICH_COPY_COLUMNS)."""
    lines = encode_text([r[:_NCOLS] for r in rows]).decode("utf-8").split("\n")
    out = []
    for line, r in zip(lines, rows):
        extra = "\t".join(("%d" % v) if is_int else _escape(v) for is_int, v in zip(_ENRICH_KINDS, r[_NCOLS:]))
        out.append(line + "\t" + extra + "\n")
    return "".join(out).encode("utf-8")


# ROW_FIELDS index of each _FIXED_COLS column, and which of them are times (microseconds).
_FIXED_IDX = tuple(_I[c] for c, _, _ in _FIXED_COLS)
_TIME_COLS = frozenset(("first", "last", "received"))
_TAIL_IDX = tuple(_I[c] for c in ("exporter", "next_hop", "agent", "if_name", "end_reason"))


def _microseconds(col, _e=_PG_EPOCH_US):
    # Unix seconds -> microseconds since 2000-01-01 UTC, all in C-level iteration.
    return map(sub, map(round, map(mul, col, repeat(1e6))), repeat(_e))


# Integer columns (ROW_FIELDS index), their rows in the fixed block and the range of their width.
_INT_IDX = tuple(i for (c, _, _), i in zip(_FIXED_COLS, _FIXED_IDX) if c not in _TIME_COLS)
_TIME_IDX = tuple(i for (c, _, _), i in zip(_FIXED_COLS, _FIXED_IDX) if c in _TIME_COLS)
_INT_ROWS = [p for p, (c, _, _) in enumerate(_FIXED_COLS) if c not in _TIME_COLS]
_TIME_ROWS = [p for p, (c, _, _) in enumerate(_FIXED_COLS) if c in _TIME_COLS]
_WIDTHS = tuple(w for _, _, w in _FIXED_COLS)
_FIXED_BYTES = 2 + sum(4 + w for w in _WIDTHS)
_INT_LO = [-(1 << (8 * _WIDTHS[p] - 1)) for p in _INT_ROWS]
_INT_HI = [(1 << (8 * _WIDTHS[p] - 1)) - 1 for p in _INT_ROWS]
_pton, _AF4, _AF6 = socket.inet_pton, socket.AF_INET, socket.AF_INET6
# Encoded tails of earlier batches: the same agents, interfaces and services keep coming.
_TAIL_CACHE = {}
_TAIL_CACHE_MAX = 65536


def _columns(rows, enriched, cols=None):
    # (columns, tail keys, COPY field count) of a non-empty batch; both encoders start here.
    ncols = _NCOLS_ENRICHED if enriched else _NCOLS
    if cols is None:
        cols = list(zip(*rows))
    if len(cols) < ncols:
        raise ValueError("a row has fewer than %d values" % ncols)
    keys = list(zip(*(cols[i] for i in _TAIL_IDX), *cols[_NCOLS:ncols]))
    return cols, keys, len(COPY_COLUMNS) + (len(ENRICH_COPY_COLUMNS) if enriched else 0)


def encode_binary(rows, enriched=False, columns=None):
    """COPY ... (FORMAT BINARY) data for rows in ROW_FIELDS order (columns in COPY_COLUMNS order).

    enriched: rows are in ENRICHED_ROW_FIELDS order and ENRICH_COPY_COLUMNS follow. columns:
    the rows already transposed (list(zip(*rows))), when the caller has them.

    Raises ValueError/TypeError/struct.error/OSError for a value PostgreSQL could not take (an
    empty exporter address becomes NULL, which the NOT NULL column refuses).
    """
    kernels = _kernels()
    if kernels is None or not rows:
        return encode_binary_python(rows, enriched)
    import numpy as np
    cols, keys, ncopy = _columns(rows, enriched, columns)
    n = len(rows)
    # Integers: inferred, so a float, a string or a bool-free overflow shows up as another dtype.
    ints = np.array([cols[i] for i in _INT_IDX])
    if ints.dtype.kind != "i":
        raise TypeError("a non-integer value in an integer column (%s)" % ints.dtype)
    lo, hi = ints.min(axis=1), ints.max(axis=1)
    if (lo < _INT_LO).any() or (hi > _INT_HI).any():
        bad = [COPY_COLUMNS[_INT_ROWS[i]] for i in range(len(_INT_IDX)) if lo[i] < _INT_LO[i] or hi[i] > _INT_HI[i]]
        raise struct.error("value out of range for column %s" % bad[0])
    times = np.array([cols[i] for i in _TIME_IDX])
    if times.dtype.kind not in "if" or not np.isfinite(times).all():
        raise ValueError("a time is not a finite number")
    vals = np.empty((len(_FIXED_COLS), n), dtype=np.int64)
    vals[_INT_ROWS] = ints
    # round() of Python floats and rint both round half to even, on the same double products.
    vals[_TIME_ROWS] = np.rint(times * 1e6).astype(np.int64) - _PG_EPOCH_US
    src, sfam = _addresses(np, kernels, cols[_I["src_ip"]])
    dst, dfam = _addresses(np, kernels, cols[_I["dst_ip"]])
    # Tails: row i uses the encoding of the first row with the same combination.
    first = {}
    tid = np.fromiter(map(first.setdefault, keys, count()), dtype=np.int64, count=n)
    tstart = np.zeros(n, dtype=np.int64)
    tlen = np.zeros(n, dtype=np.int64)
    parts, off = [], 0
    for key, i in first.items():
        b = _tail_cached(key)
        parts.append(b)
        tstart[i], tlen[i] = off, len(b)
        off += len(b)
    tails = np.frombuffer(b"".join(parts), dtype=np.uint8)
    size = len(_SIGNATURE) + len(_TRAILER) + n * _FIXED_BYTES + int(tlen[tid].sum())
    for fam in (sfam, dfam):
        size += 4 * n + 8 * int(np.count_nonzero(fam == 4)) + 20 * int(np.count_nonzero(fam == 6))
    out = np.empty(size, dtype=np.uint8)
    out[:len(_SIGNATURE)] = np.frombuffer(_SIGNATURE, dtype=np.uint8)
    end = kernels.copy_rows(ncopy, vals, np.array(_WIDTHS, dtype=np.int64), src, sfam, dst, dfam, tails, tstart, tlen, tid, out,
                            len(_SIGNATURE))
    out[end:end + 2] = 0xFF
    if end + 2 != size:
        raise AssertionError("COPY size mismatch: %d != %d" % (end + 2, size))
    return out.tobytes()


def _addresses(np, kernels, col):
    # (rows, 16) packed addresses and their families (4/6): the kernel parses canonical dotted
    # quads from one joined buffer; inet_pton decides the rest (IPv6, anything unusual), so the
    # result is what encode_binary_python's inet_pton gives, errors included.
    n = len(col)
    packed = np.zeros((n, 16), dtype=np.uint8)
    fam = np.full(n, 4, dtype=np.uint8)
    need = np.empty(n, dtype=np.uint8)
    buf = np.frombuffer("\n".join(col).encode("utf-8"), dtype=np.uint8)
    if kernels.parse_ipv4(buf, packed, need) != 0:
        raise ValueError("an address contains a line break")
    for i in np.flatnonzero(need).tolist():
        a = col[i]
        if not a:
            fam[i] = 0
        elif ":" in a:
            packed[i] = np.frombuffer(_pton(_AF6, a), dtype=np.uint8)
            fam[i] = 6
        else:
            packed[i, :4] = np.frombuffer(_pton(_AF4, a), dtype=np.uint8)
    return packed, fam


def _kernels():
    return _load_kernels()


def encode_binary_python(rows, enriched=False):
    """encode_binary without numba: struct.pack per row through C-level maps, then bytes.join."""
    if not rows:
        return _SIGNATURE + _TRAILER
    # Every per-row step is a C-level map; only distinct addresses and tails run Python code.
    cols, keys, ncopy = _columns(rows, enriched)
    args = [repeat(ncopy)]
    for (name, _code, size), i in zip(_FIXED_COLS, _FIXED_IDX):
        args.append(repeat(size))
        args.append(_microseconds(cols[i]) if name in _TIME_COLS else cols[i])
    fixed = map(_FIXED.pack, *args)
    inets = {"": _NULL}
    src, dst = cols[_I["src_ip"]], cols[_I["dst_ip"]]
    for a in set(src).union(dst).difference(inets):
        inets[a] = _inet(a)
    get = inets.__getitem__
    tails = {}
    for key in set(keys):
        tails[key] = _tail_cached(key)
    return b"".join(chain((_SIGNATURE,), chain.from_iterable(zip(fixed, map(get, src), map(get, dst),
                                                                  map(tails.__getitem__, keys))),
                          (_TRAILER,)))


def _inet(a, _pton=socket.inet_pton, _af4=socket.AF_INET, _af6=socket.AF_INET6):
    return _INET6 + _pton(_af6, a) if ":" in a else _INET4 + _pton(_af4, a)


def _text(s, _len=struct.Struct(">i").pack):  # noqa: B008 - bound once, at definition
    b = s.encode("utf-8")
    return _len(len(b)) + b


def _tail_cached(key):
    b = _TAIL_CACHE.get(key)
    if b is None:
        if len(_TAIL_CACHE) >= _TAIL_CACHE_MAX:
            _TAIL_CACHE.clear()
        b = _TAIL_CACHE[key] = _tail(key)
    return b


def _tail(key):
    # exporter, next_hop, agent, if_name, end_reason[, ENRICH_FIELDS]: the columns after
    # src/dst, which repeat across rows; encoded once per distinct combination (_tail_cached).
    exp, nh, agent, ifn, end = key[:5]
    parts = [_inet(exp) if exp else _NULL, _inet(nh) if nh else _NULL, _text(agent), _text(ifn), _text(end)]
    if len(key) > 5:
        # ENRICH_FIELDS: direction, service, 2 countries (text), 2 ASNs (int8), 4 texts.
        d, sv, sc, dc, sa, da, so, do, sh, dh = key[5:]
        parts += [_text(d), _text(sv), _text(sc), _text(dc), _INT8(8, sa), _INT8(8, da), _text(so), _text(do),
                  _text(sh), _text(dh)]
    return b"".join(parts)


def _escape(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def encode_text(rows):
    """COPY ... FROM STDIN (text format) data for rows, columns in COPY_COLUMNS order.

    Integers are written with %s, so a float or bool in an integer column reaches PostgreSQL
    as "1.5" or "True" and is refused rather than silently truncated.
    """
    seconds, strings = {}, {}
    sget = strings.get

    def ts(x):
        sec, us = divmod(round(x * 1e6), 1000000)
        base = seconds.get(sec)
        if base is None:
            base = seconds[sec] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
        return "%s.%06d+00" % (base, us)

    def esc(s):
        e = strings[s] = _escape(s)
        return e

    line = "\t".join(["%s"] * len(COPY_COLUMNS)) + "\n"
    out = []
    append = out.append
    # Unrolled like encode_binary; the tuple follows COPY_COLUMNS.
    for r in rows:
        src, dst, nh, exp = r[0], r[1], r[17], r[24]
        agent, ifn, end = r[11], r[12], r[22]
        append(line % (r[2], r[3], r[4], r[5], r[6], r[7], ts(r[8]), ts(r[9]), r[10], r[13], r[14],
                       r[15], r[16], r[18], r[19], r[20], r[21], ts(r[23]),
                       sget(src) or esc(src), sget(dst) or esc(dst), sget(exp) or esc(exp),
                       (sget(nh) or esc(nh)) if nh else "\\N",
                       sget(agent) or esc(agent), sget(ifn) or esc(ifn), sget(end) or esc(end)))
    return "".join(out).encode("utf-8")


