"""Kernels of PostgreSQL's binary COPY encoder (myason.store.pgcopy): rows into bytes.

Everything that needs Python objects (type checks, address parsing, the per-batch encoding of
the repetitive text columns) is done by pgcopy before the call; the kernel only lays the bytes
out, row after row, in the COPY column order.
"""
from myason.kernels.registry import RO_BYTES, helper, kernel, ro


@helper(inline=True)
def _put(out, pos, value, width):
    # Big-endian two's complement, like struct's ">h", ">i", ">q".
    for b in range(width):
        out[pos + b] = (value >> (8 * (width - 1 - b))) & 0xFF
    return pos + width


@helper(inline=True)
def _inet(out, pos, addr, fam, i):
    # inet binary: length, family (2 = AF_INET, 3 = AF_INET6), bits, is_cidr, size, address;
    # family 0: NULL (an empty address, which a NOT NULL column then refuses).
    if fam == 0:
        return _put(out, pos, -1, 4)
    size = 4 if fam == 4 else 16
    pos = _put(out, pos, size + 4, 4)
    out[pos] = 2 if fam == 4 else 3
    out[pos + 1] = size * 8
    out[pos + 2] = 0
    out[pos + 3] = size
    pos += 4
    for b in range(size):
        out[pos + b] = addr[i, b]
    return pos + size


@kernel("int64(int64, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, uint8[::1], int64)"
        % (ro("int64", 2), ro("int64"), ro("uint8", 2), ro("uint8"), ro("uint8", 2), ro("uint8"), RO_BYTES,
           ro("int64"), ro("int64"), ro("int64")))
def copy_rows(ncols, vals, widths, src, sfam, dst, dfam, tails, tstart, tlen, tid, out, pos):
    """Write each row (field count, fixed columns, src, dst, tail bytes) into out from pos; returns the end.

    vals (fields, rows): fixed-size column values, written with `widths` bytes each; src/dst
    (rows, 16) packed addresses of family sfam/dfam (4, 6, or 0 for NULL); row i's remaining columns are
    the bytes tails[tstart[tid[i]]:][:tlen[tid[i]]], already encoded.
    """
    nf = vals.shape[0]
    for i in range(vals.shape[1]):
        pos = _put(out, pos, ncols, 2)
        for f in range(nf):
            w = widths[f]
            pos = _put(out, pos, w, 4)
            pos = _put(out, pos, vals[f, i], w)
        pos = _inet(out, pos, src, sfam[i], i)
        pos = _inet(out, pos, dst, dfam[i], i)
        k = tid[i]
        start = tstart[k]
        for b in range(tlen[k]):
            out[pos + b] = tails[start + b]
        pos += tlen[k]
    return pos


@kernel("int64(%s, uint8[:, ::1], uint8[::1])" % RO_BYTES)
def parse_ipv4(buf, out, need):
    """Parse n newline-separated addresses (n = rows of out) in canonical dotted quad into out[i, :4].

    need[i] = 1 for an entry that is not canonical IPv4 (IPv6, leading zeros, anything odd): the
    caller parses those with inet_pton, which decides. Returns 0 when buf held exactly n entries.
    """
    n = out.shape[0]
    size = buf.shape[0]
    pos = 0
    for i in range(n):
        octet = 0
        digits = 0
        parts = 0
        ok = True
        while pos < size and buf[pos] != 10:
            c = buf[pos]
            if 48 <= c <= 57:
                if digits > 0 and octet == 0:
                    ok = False          # a leading zero: inet_pton refuses it
                if digits < 3:
                    octet = octet * 10 + (c - 48)
                digits += 1
                if digits > 3 or octet > 255:
                    ok = False
            elif c == 46 and ok and digits > 0 and parts < 3:
                out[i, parts] = octet
                parts += 1
                octet = 0
                digits = 0
            else:
                ok = False
            pos += 1
        if ok and digits > 0 and parts == 3:
            out[i, 3] = octet
            need[i] = 0
        else:
            need[i] = 1
        pos += 1                        # the separator
    return pos - 1 - size
