"""Wire format v1: flow rows packed into encrypted UDP datagrams (see docs/protocol.md).

This module is the only owner of the format; the agent's exporter and the collector both use
it. Datagram = clear header (magic, version, flags, agent id) + raw Fernet token whose
plaintext is zlib-compressed JSON. Decoding never raises anything but WireError.
"""
import base64
import math
import re
import time
import zlib
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

from myason.errors import WireError
from myason.schema import FIELDS

MAGIC = b"MYAS"
VERSION = 1
MAX_AGENT_ID = 64
MAX_UDP_PAYLOAD = 65507
MIN_DATAGRAM = 512
COMPRESS_LEVEL = 6
MAX_PLAIN = 1 << 20  # decompressed body limit; the decoder's default cap, so senders stay under it
CLOCK_SKEW = 60  # seconds a token may come from the future; same as Fernet's own limit

REASONS = (
    "short", "bad_magic", "bad_version", "bad_flags", "bad_agent_id", "unknown_agent",
    "bad_token", "expired", "future", "too_large", "bad_compression", "bad_json",
    "bad_schema", "agent_mismatch", "bad_row", "oversized",
)

_HEADER_FIXED = len(MAGIC) + 3
# Fernet token = version(1) + timestamp(8) + IV(16) + AES-CBC ciphertext + HMAC-SHA256(32).
_TOKEN_OVERHEAD = 1 + 8 + 16 + 32
_MIN_TOKEN = _TOKEN_OVERHEAD + 16
_AGENT_RE = re.compile(r"[A-Za-z0-9._:-]{1,%d}" % MAX_AGENT_ID)
_BODY_KEYS = frozenset(("v", "agent", "seq", "sent", "flows"))
_NFIELDS = len(FIELDS)
# zlib never grows its input by more than this for inputs far below 16 kB (header, one stored
# block, adler32), so a row whose JSON fits with this margin needs no trial compression.
_ZLIB_SLACK = 16
# Longest possible envelope around the rows: 20-digit seq and a 24-character float.
_ENVELOPE_SLACK = len(b'{"v":1,"agent":"","seq":,"sent":,"flows":[]}') + 20 + 24


def _std_dumps(obj):
    """Compact UTF-8 JSON with the standard library (fallback when orjson is missing)."""
    import json
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _reject_constant(name):
    raise ValueError("non-standard JSON constant %s" % name)


def _std_loads(data):
    """Strict JSON parse with the standard library (NaN/Infinity rejected like orjson)."""
    import json
    return json.loads(data, parse_constant=_reject_constant)


try:
    import orjson
    _dumps = orjson.dumps
    _loads = orjson.loads

    def _dump_row(row):
        # The flow cache keeps numpy columns; numpy scalars would otherwise be a TypeError.
        return orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover - orjson is a declared dependency
    _dumps = _dump_row = _std_dumps
    _loads = _std_loads


@dataclass
class Batch:
    """One decoded datagram: who sent it, its sequence number, send time and flow rows."""

    agent: str
    seq: int
    sent: float
    rows: list = field(default_factory=list)


def check_agent_id(agent_id):
    """Return agent_id as ASCII bytes or raise ValueError if it is not a valid agent id."""
    if not isinstance(agent_id, str) or not _AGENT_RE.fullmatch(agent_id):
        raise ValueError("agent id must be 1..%d characters of [A-Za-z0-9._:-], got %r"
                         % (MAX_AGENT_ID, agent_id))
    return agent_id.encode("ascii")


def header(agent_id):
    """The clear header for agent_id: magic, version, flags, id length, id."""
    raw = check_agent_id(agent_id)
    return MAGIC + bytes((VERSION, 0, len(raw))) + raw


def token_size(compressed_len):
    """Raw Fernet token length for a plaintext of compressed_len bytes (PKCS7 always pads)."""
    return _TOKEN_OVERHEAD + 16 * (compressed_len // 16 + 1)


def max_compressed(room):
    """Largest plaintext whose raw token fits in `room` bytes (negative if none fits)."""
    return ((room - _TOKEN_OVERHEAD) // 16) * 16 - 1


def _plaintext(agent_json, seq, sent, row_jsons):
    # Built by hand from pre-serialised rows so the Batcher can retry sizes without
    # re-serialising; the key order matches orjson.dumps of the same dict.
    return b'{"v":1,"agent":%b,"seq":%d,"sent":%b,"flows":[%b]}' % (
        agent_json, seq, _dumps(float(sent)), b",".join(row_jsons))


def _check_seq(seq):
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError("seq must be a non-negative int, got %r" % (seq,))


def _check_row(row):
    if not isinstance(row, (list, tuple)) or len(row) != _NFIELDS:
        raise ValueError("a flow row must be a list of %d values in FIELDS order" % _NFIELDS)


def _seal(head, compressed, key, now):
    token = key.encrypt(compressed) if now is None else key.encrypt_at_time(compressed, int(now))
    return head + base64.urlsafe_b64decode(token)


def encode_datagram(records_rows, agent_id, seq, key, sent=None, now=None):
    """One datagram holding all rows; `now` fixes the token time (tests). ValueError if bad."""
    head = header(agent_id)
    _check_seq(seq)
    for row in records_rows:
        _check_row(row)
    if sent is None:
        sent = time.time() if now is None else now
    plain = _plaintext(_dumps(agent_id), seq, sent, [_dump_row(r) for r in records_rows])
    if len(plain) > MAX_PLAIN:
        raise ValueError("%d rows exceed %d bytes of JSON" % (len(records_rows), MAX_PLAIN))
    compressed = zlib.compress(plain, COMPRESS_LEVEL)
    if len(head) + token_size(len(compressed)) > MAX_UDP_PAYLOAD:
        raise ValueError("%d rows do not fit in one UDP datagram" % len(records_rows))
    return _seal(head, compressed, key, now)


class Batcher:
    """Packs rows into datagrams of at most max_datagram bytes."""

    # Stop searching once the compressed body fills this share of its room.
    FILL_TARGET = 0.93
    MAX_ATTEMPTS = 4

    def __init__(self, agent_id, key, max_datagram=1400, first_seq=0, clock=time.time):
        self._head = header(agent_id)
        if not MIN_DATAGRAM <= max_datagram <= MAX_UDP_PAYLOAD:
            raise ValueError("max_datagram must be %d..%d, got %r"
                             % (MIN_DATAGRAM, MAX_UDP_PAYLOAD, max_datagram))
        _check_seq(first_seq)
        self._agent_json = _dumps(agent_id)
        self._key = key
        self._clock = clock
        self.max_datagram = max_datagram
        self.next_seq = first_seq
        self._budget = max_compressed(max_datagram - len(self._head))
        self._envelope = _ENVELOPE_SLACK + len(self._agent_json)
        self._rows = []
        self._raw = 0  # sum of row JSON lengths + separators
        # Compressed/raw ratio, updated after every compression; start pessimistic so the
        # first trigger comes early rather than after a huge backlog.
        self._ratio = 0.6

    @property
    def pending(self):
        """Rows waiting for a datagram."""
        return len(self._rows)

    def add(self, row):
        """Queue one row; return the datagrams it completed (usually []); ValueError if it never fits."""
        _check_row(row)
        data = _dump_row(row)
        if len(data) + self._envelope > MAX_PLAIN:
            raise ValueError("a row of %d JSON bytes exceeds the body limit" % len(data))
        if len(data) + self._envelope + _ZLIB_SLACK > self._budget:
            alone = zlib.compress(_plaintext(self._agent_json, 10 ** 19, 1e18, [data]),
                                  COMPRESS_LEVEL)
            if len(alone) > self._budget:
                raise ValueError("a row of %d JSON bytes cannot fit in a %d-byte datagram"
                                 % (len(data), self.max_datagram))
        self._rows.append(data)
        self._raw += len(data) + 1
        if not self._may_be_full():
            return []
        out = []
        while self._rows:
            dgram = self._pack(final=False)
            if dgram is None:
                break
            out.append(dgram)
            if not self._may_be_full():
                break
        return out

    def flush(self):
        """Everything pending, as datagrams (the last one may be small)."""
        out = []
        while self._rows:
            out.append(self._pack(final=True))
        return out

    def _may_be_full(self):
        # Highly repetitive rows compress so well that the JSON size limit binds first.
        raw = self._raw + self._envelope
        return raw * self._ratio > self._budget or raw > MAX_PLAIN

    def _compress(self, n, sent):
        plain = _plaintext(self._agent_json, self.next_seq, sent, self._rows[:n])
        comp = zlib.compress(plain, COMPRESS_LEVEL)
        self._ratio = len(comp) / len(plain)
        return comp

    def _rows_for(self, cum, ratio, fill):
        # How many leading rows are expected to compress to `fill` of the budget.
        raw_limit = self._budget * fill / ratio - self._envelope
        return bisect_right(cum, raw_limit)

    def _pack(self, final):
        # Returns one datagram built from a prefix of the pending rows, or None when
        # (not final) every pending row fits but the datagram would still be under-full.
        sent = self._clock()
        cum = list(accumulate(len(r) + 1 for r in self._rows))
        # `limit`: rows allowed by the JSON size cap (at least one: add() checked each row).
        limit = max(1, bisect_right(cum, MAX_PLAIN - self._envelope))
        total = len(cum)
        if limit >= total:
            limit = total
        n = max(1, min(limit, self._rows_for(cum, self._ratio, 0.97)))
        best, best_n, too_big = None, 0, limit + 1
        for _ in range(self.MAX_ATTEMPTS):
            comp = self._compress(n, sent)
            if len(comp) <= self._budget:
                best, best_n = comp, n
                if n == limit:
                    if limit == total and not final and len(comp) < self._budget * self.FILL_TARGET:
                        return None
                    break
                if len(comp) >= self._budget * self.FILL_TARGET:
                    break
                nxt = min(self._rows_for(cum, self._ratio, 0.97), too_big - 1)
                if nxt <= n:
                    nxt = n + 1 if n + 1 < too_big else n
                if nxt == n:
                    break
            else:
                too_big = n
                if n == 1:
                    break  # cannot happen: add() checked every row fits alone
                nxt = max(1, min(self._rows_for(cum, self._ratio, 0.95), n - 1))
                if nxt <= best_n:
                    break
            n = nxt
        while best is None:
            # Rare: the estimate kept overshooting; halve until it fits (one row always does).
            n = max(1, n // 2)
            comp = self._compress(n, sent)
            if len(comp) <= self._budget:
                best, best_n = comp, n
        del self._rows[:best_n]
        self._raw = cum[-1] - cum[best_n - 1]
        dgram = _seal(self._head, best, self._key, None)
        self.next_seq += 1
        return dgram


def _parse_header(data):
    if len(data) > MAX_UDP_PAYLOAD:
        raise WireError("oversized", "%d bytes" % len(data))
    if len(data) < _HEADER_FIXED:
        raise WireError("short", "%d bytes" % len(data))
    if data[:4] != MAGIC:
        raise WireError("bad_magic")
    if data[4] != VERSION:
        raise WireError("bad_version", "version %d" % data[4])
    if data[5] != 0:
        raise WireError("bad_flags", "flags 0x%02x" % data[5])
    size = data[6]
    if not 1 <= size <= MAX_AGENT_ID:
        raise WireError("bad_agent_id", "agent id length %d" % size)
    end = _HEADER_FIXED + size
    if len(data) < end:
        raise WireError("short", "header cut inside the agent id")
    try:
        agent = data[_HEADER_FIXED:end].decode("ascii")
    except UnicodeDecodeError:
        raise WireError("bad_agent_id", "not ASCII") from None
    if not _AGENT_RE.fullmatch(agent):
        raise WireError("bad_agent_id", "bad characters in %r" % agent)
    return agent, end


def _as_bytes(datagram):
    if isinstance(datagram, bytes):
        return datagram
    if isinstance(datagram, (bytearray, memoryview)):
        return bytes(datagram)
    raise WireError("short", "datagram is %s, not bytes" % type(datagram).__name__)


def peek_agent(datagram):
    """The agent id from the clear header only (selects the key); raises WireError(reason)."""
    return _parse_header(_as_bytes(datagram))[0]


def _decrypt(token, keys, ttl, now, skew=CLOCK_SKEW):
    # Imported here: the agent imports this module for its constants, and a replay without
    # export should not pay for loading cryptography.
    from cryptography.fernet import InvalidToken
    if len(token) < _MIN_TOKEN:
        raise WireError("short", "token of %d bytes" % len(token))
    if token[0] != 0x80 or (len(token) - _TOKEN_OVERHEAD) % 16:
        raise WireError("bad_token", "not a Fernet token")
    try:
        # Decrypt without Fernet's ttl so a failure means "not authentic" and the time checks
        # below run only on authenticated timestamps, giving exact reasons.
        raw = getattr(keys, "decrypt_raw", None)
        plain = raw(token) if raw is not None else keys.decrypt(base64.urlsafe_b64encode(token))
    except InvalidToken:
        raise WireError("bad_token", "authentication failed") from None
    if ttl is not None:
        stamp = int.from_bytes(token[1:9], "big")
        current = int(time.time() if now is None else now)
        if stamp + ttl < current:
            raise WireError("expired", "token is %d s old" % (current - stamp))
        if current + skew < stamp:
            raise WireError("future", "token is %d s ahead" % (stamp - current))
    return plain


def _inflate(data, max_plain):
    try:
        d = zlib.decompressobj()
        out = d.decompress(data, max_plain)
        if d.unconsumed_tail or (not d.eof and len(out) >= max_plain):
            raise WireError("too_large", "plaintext over %d bytes" % max_plain)
        if not d.eof or d.unused_data:
            raise WireError("bad_compression", "truncated or trailing data")
    except zlib.error as exc:
        raise WireError("bad_compression", str(exc)) from None
    return out


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_body(body, agent):
    if not isinstance(body, dict) or body.keys() != _BODY_KEYS:
        raise WireError("bad_schema", "body must be an object with keys %s" % sorted(_BODY_KEYS))
    v, seq, sent, flows = body["v"], body["seq"], body["sent"], body["flows"]
    if not _is_int(v) or v != VERSION:
        raise WireError("bad_schema", "v must be %d" % VERSION)
    if not isinstance(body["agent"], str):
        raise WireError("bad_schema", "agent must be a string")
    if not _is_int(seq) or seq < 0:
        raise WireError("bad_schema", "seq must be a non-negative integer")
    if not (_is_int(sent) and -2 ** 63 <= sent < 2 ** 64
            or isinstance(sent, float) and math.isfinite(sent)):
        raise WireError("bad_schema", "sent must be a finite number")
    if not isinstance(flows, list):
        raise WireError("bad_schema", "flows must be a list")
    if body["agent"] != agent:
        raise WireError("agent_mismatch", "header %r, body %r" % (agent, body["agent"]))
    for i, row in enumerate(flows):
        if not isinstance(row, list) or len(row) != _NFIELDS:
            raise WireError("bad_row", "row %d is not a list of %d values" % (i, _NFIELDS))
    return Batch(agent, seq, float(sent), flows)


def decode_datagram(datagram, keys_for_agent, ttl=None, now=None, max_plain=MAX_PLAIN, skew=CLOCK_SKEW):
    """Authenticate, decrypt and validate one datagram into a Batch; raises only WireError.

    ttl: seconds a token may be old (None: not checked); skew: seconds it may come from the future.
    """
    data = _as_bytes(datagram)
    agent, end = _parse_header(data)
    try:
        keys = keys_for_agent(agent)
    except LookupError:
        keys = None
    if keys is None:
        raise WireError("unknown_agent", agent)
    plain = _inflate(_decrypt(data[end:], keys, ttl, now, skew), max_plain)
    try:
        body = _loads(plain)
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise WireError("bad_json", str(exc)[:80]) from None
    return _check_body(body, agent)
