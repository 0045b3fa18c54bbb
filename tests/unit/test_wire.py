"""Tests for myason.wire: byte fixtures, round trips, rejection reasons, fuzzing, Batcher."""
import base64
import ipaddress
import random
import zlib

import pytest
from cryptography.fernet import Fernet, MultiFernet

from myason import wire
from myason.errors import WireError
from myason.schema import FIELDS, make_row

KEY = Fernet(base64.urlsafe_b64encode(bytes(range(32))))
OTHER = Fernet(base64.urlsafe_b64encode(bytes(range(100, 132))))
T0 = 1_700_000_000
ROW = ["192.0.2.1", "2001:db8::1", 1234, 443, 6, 0, 10, 1500, 1700000000.25, 1700000001.5, 27,
       "a1", "eth0", 2, 0, 4, 0, "", 24, 0, 0, 0, "fin"]

# encode_datagram([ROW], "a1", 7, KEY with IV 0*16, sent=1700000002.0, now=1700000003)
FIXTURE_PLAIN = (
    b'{"v":1,"agent":"a1","seq":7,"sent":1700000002.0,"flows":[["192.0.2.1","2001:db8::1",'
    b'1234,443,6,0,10,1500,1700000000.25,1700000001.5,27,"a1","eth0",2,0,4,0,"",24,0,0,0,"fin"]]}')
FIXTURE_COMPRESSED = bytes.fromhex(
    "789c454dcb0ac2400cfc973987254977ade6574a0f2d6e55908ab4e841fc77938a98d764062679e10113c2"
    "70aaf30ac320202cf50e6b03439396bfa18909d3f5f65c605d0739b89034854399c58ee3decc99689329e7"
    "8676c4245e857dfcaeb8a5fc99a442eaafb6bf753d3348dd95bde16b6024a6cb8cbe7f7f0037e527a1")
FIXTURE = bytes.fromhex(
    "4d594153010002613180000000006553f10300000000000000000000000000000000092fde828a2510e246"
    "58c1199ccc28fccccccd018caacd3157e1e56102dae42214cf7a42e5321177d4e8b0df930bf0a58d732945"
    "e0e52e37de757de2d69eb6e2a60f9ff90eb52f8c96087ac813db0621529b565588cb3304f12a90cfed2022"
    "ceabf1e939d88d624695843ca576f5dafbe5b2c9d694101dca450be5a3170b1f74b292bf65aff6b5cf33f0"
    "72d7d34d40089043da2dd30eff91220c5f58b5830eb0")


class FixedIV:
    """A key whose tokens use a fixed IV, so datagrams are reproducible byte for byte."""

    def __init__(self, fernet, iv=bytes(16)):
        self.fernet, self.iv = fernet, iv

    def encrypt_at_time(self, data, current_time):
        return self.fernet._encrypt_from_parts(data, current_time, self.iv)


def keys_of(mapping):
    return lambda agent: mapping.get(agent)


def decode(dgram, key=KEY, agent="a1", **kw):
    return wire.decode_datagram(dgram, keys_of({agent: key}), **kw)


def seal(plain, agent="a1", key=KEY, now=T0, compress=True, head=None):
    """A datagram around arbitrary body bytes (the encoder would refuse most of these)."""
    body = zlib.compress(plain) if compress else plain
    token = base64.urlsafe_b64decode(key.encrypt_at_time(body, now))
    return (wire.header(agent) if head is None else head) + token


def realistic_rows(n, seed=1):
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        v6 = rnd.random() < 0.3
        if v6:
            src = str(ipaddress.IPv6Address((0x20010db8 << 96) | rnd.getrandbits(64)))
            dst = str(ipaddress.IPv6Address((0x2a001450 << 96) | rnd.getrandbits(48)))
        else:
            src = "10.%d.%d.%d" % (rnd.randrange(256), rnd.randrange(256), rnd.randrange(1, 255))
            dst = "%d.%d.%d.%d" % (rnd.randrange(1, 224), rnd.randrange(256), rnd.randrange(256),
                                   rnd.randrange(1, 255))
        proto = rnd.choice((6, 6, 17, 1))
        first = round(T0 + i * 0.01 + rnd.random(), 6)
        pk = rnd.randrange(1, 5000)
        rows.append(make_row(
            src_ip=src, dst_ip=dst, src_port=rnd.randrange(1024, 65536),
            dst_port=rnd.choice((443, 80, 53, rnd.randrange(1, 65536))), proto=proto,
            tos=rnd.choice((0, 0, 0xb8)), packets=pk, bytes=pk * rnd.randrange(40, 1500),
            first=first, last=round(first + rnd.random() * 30, 6),
            tcp_flags=rnd.choice((0x1b, 0x02, 0x18)) if proto == 6 else 0,
            agent="edge-01.example", if_name="eth0", in_if=2, ip_version=6 if v6 else 4,
            vlan=rnd.choice((0, 100)), next_hop="fe80::1" if v6 else "192.168.1.1",
            src_mask=48 if v6 else 24, dst_as=rnd.choice((0, 15169, 13335)),
            end_reason=rnd.choice(("idle", "active", "fin", "rst"))))
    return rows


# --- byte fixtures -------------------------------------------------------------------------

def test_fixture_decodes_to_known_batch():
    batch = decode(FIXTURE, now=T0 + 3, ttl=60)
    assert batch == wire.Batch("a1", 7, 1700000002.0, [ROW])


def test_fixture_layout():
    assert FIXTURE[:9] == b"MYAS\x01\x00\x02a1"
    token = FIXTURE[9:]
    assert token[0] == 0x80 and int.from_bytes(token[1:9], "big") == T0 + 3
    assert token[9:25] == bytes(16)
    assert len(token) == wire.token_size(len(FIXTURE_COMPRESSED))
    assert zlib.decompress(KEY.decrypt(base64.urlsafe_b64encode(token))) == FIXTURE_PLAIN


def test_encoder_produces_fixture_bytes():
    if zlib.compress(FIXTURE_PLAIN, wire.COMPRESS_LEVEL) != FIXTURE_COMPRESSED:
        pytest.skip("this zlib build compresses differently (e.g. zlib-ng)")
    dgram = wire.encode_datagram([ROW], "a1", 7, FixedIV(KEY), sent=1700000002.0, now=T0 + 3)
    assert dgram == FIXTURE


def test_peek_agent():
    assert wire.peek_agent(FIXTURE) == "a1"
    assert wire.peek_agent(bytearray(FIXTURE[:9])) == "a1"


# --- round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 50, 400])
def test_round_trip(n):
    rows = realistic_rows(n)
    dgram = wire.encode_datagram(rows, "edge-01.example", 42, KEY, sent=123.5)
    batch = decode(dgram, agent="edge-01.example")
    assert (batch.agent, batch.seq, batch.sent, batch.rows) == ("edge-01.example", 42, 123.5, rows)
    assert all(len(r) == len(FIELDS) for r in batch.rows)


def test_round_trip_ipv6_and_agent_id_characters():
    agent = "Agent_9.example:eth0-" + "x" * 43
    assert len(agent) == wire.MAX_AGENT_ID
    row = list(ROW)
    row[0], row[1], row[17] = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "::1", "fe80::1%eth0"
    batch = decode(wire.encode_datagram([tuple(row)], agent, 0, KEY), agent=agent)
    assert batch.rows == [row] and batch.agent == agent


def test_rotation_old_key_still_decodes():
    dgram = wire.encode_datagram([ROW], "a1", 1, OTHER)
    assert decode(dgram, key=MultiFernet([KEY, OTHER])).rows == [ROW]
    with pytest.raises(WireError) as exc:
        decode(dgram, key=KEY)
    assert exc.value.reason == "bad_token"
    # MultiFernet encrypts with its first key.
    new = wire.encode_datagram([ROW], "a1", 2, MultiFernet([KEY, OTHER]))
    assert decode(new, key=KEY).seq == 2


def test_encode_rejects_bad_input():
    for agent in ("", "a" * 65, "a b", "é", None):
        with pytest.raises(ValueError):
            wire.encode_datagram([ROW], agent, 0, KEY)
    with pytest.raises(ValueError):
        wire.encode_datagram([ROW[:-1]], "a1", 0, KEY)
    for seq in (-1, True, 1.0):
        with pytest.raises(ValueError):
            wire.encode_datagram([ROW], "a1", seq, KEY)
    with pytest.raises(ValueError):
        wire.encode_datagram(realistic_rows(3000), "a1", 0, KEY)  # > 65507 bytes


def test_keys_callback_lookup_error_is_unknown_agent():
    with pytest.raises(WireError) as exc:
        wire.decode_datagram(FIXTURE, {}.__getitem__)
    assert exc.value.reason == "unknown_agent"


# --- every rejection reason ----------------------------------------------------------------

def body(**over):
    obj = {"v": 1, "agent": "a1", "seq": 1, "sent": 1.5, "flows": [ROW]}
    obj.update(over)
    return wire._dumps({k: v for k, v in obj.items() if v is not ...})


GOOD = seal(body())
CASES = [
    ("short", b""),
    ("short", b"MYAS\x01\x00"),
    ("short", b"MYAS\x01\x00\x05abc"),
    ("short", GOOD[:9 + 72]),
    ("bad_magic", b"MYAZ" + GOOD[4:]),
    ("bad_version", GOOD[:4] + b"\x02" + GOOD[5:]),
    ("bad_flags", GOOD[:5] + b"\x01" + GOOD[6:]),
    ("bad_agent_id", GOOD[:6] + b"\x00" + GOOD[7:]),
    ("bad_agent_id", GOOD[:6] + bytes([65]) + b"a" * 65 + GOOD[9:]),
    ("bad_agent_id", b"MYAS\x01\x00\x02a " + GOOD[9:]),
    ("bad_agent_id", b"MYAS\x01\x00\x02a\xff" + GOOD[9:]),
    ("unknown_agent", seal(body(agent="zz"), agent="zz")),
    ("bad_token", GOOD[:-1] + bytes([GOOD[-1] ^ 1])),
    ("bad_token", GOOD[:40] + bytes([GOOD[40] ^ 0x80]) + GOOD[41:]),
    ("bad_token", GOOD[:9] + b"\x81" + GOOD[10:]),
    ("bad_token", GOOD[:-5]),
    ("bad_token", seal(body(), key=OTHER)),
    ("too_large", seal(body()[:-1] + b" " * (2 << 20) + b"}")),
    ("bad_compression", seal(body(), compress=False)),
    ("bad_compression", seal(zlib.compress(body())[:-6], compress=False)),
    ("bad_compression", seal(zlib.compress(body()) + b"junk", compress=False)),
    ("bad_json", seal(b'{"v":1,')),
    ("bad_json", seal(b'{"v":1,"agent":"a\xff"}')),
    ("bad_json", seal(b'{"v":1,"agent":"a1","seq":1,"sent":NaN,"flows":[]}')),
    ("bad_schema", seal(b"[1,2]")),
    ("bad_schema", seal(body(seq=...))),
    ("bad_schema", seal(body(extra=1))),
    ("bad_schema", seal(body(v=2))),
    ("bad_schema", seal(body(v=True))),
    ("bad_schema", seal(body(agent=5))),
    ("bad_schema", seal(body(seq=-1))),
    ("bad_schema", seal(body(seq="1"))),
    ("bad_schema", seal(body(seq=1.0))),
    ("bad_schema", seal(body(sent="now"))),
    ("bad_schema", seal(body(sent=None))),
    ("bad_schema", seal(body(flows={}))),
    ("agent_mismatch", seal(body(agent="a2"))),
    ("bad_row", seal(body(flows=[ROW[:-1]]))),
    ("bad_row", seal(body(flows=[ROW, "row"]))),
    ("bad_row", seal(body(flows=[dict.fromkeys(FIELDS, 0)]))),
    ("oversized", GOOD + bytes(65508 - len(GOOD))),
]


@pytest.mark.parametrize("reason,dgram", CASES, ids=[c[0] for c in CASES])
def test_rejection_reason(reason, dgram):
    with pytest.raises(WireError) as exc:
        decode(dgram, now=T0)
    assert exc.value.reason == reason


def test_every_reason_is_covered_and_listed():
    covered = {c[0] for c in CASES} | {"expired", "future"}  # time reasons tested below
    assert covered == set(wire.REASONS)


def test_good_case_and_json_integer_sent_accepted():
    assert decode(GOOD).rows == [ROW]
    assert decode(seal(body(sent=17, flows=[]))).sent == 17.0


def test_ttl_expired_future_and_skew():
    dgram = seal(body(), now=T0)
    assert decode(dgram, ttl=100, now=T0 + 100).seq == 1
    assert decode(dgram, ttl=100, now=T0 - 60).seq == 1  # within clock skew
    assert decode(dgram, now=T0 + 10 ** 6).seq == 1  # no ttl: no time checks
    for now, reason in ((T0 + 101, "expired"), (T0 - 61, "future")):
        with pytest.raises(WireError) as exc:
            decode(dgram, ttl=100, now=now)
        assert exc.value.reason == reason
    # A forged token is bad_token even if its timestamp is also stale.
    with pytest.raises(WireError) as exc:
        decode(dgram[:-1] + bytes([dgram[-1] ^ 1]), ttl=100, now=T0 + 1000)
    assert exc.value.reason == "bad_token"


def test_bomb_limit_is_max_plain():
    bomb = seal(body()[:-1] + b" " * (2 << 20) + b"}")
    assert len(bomb) < 8000
    assert decode(bomb, max_plain=4 << 20).rows == [ROW]


def test_non_bytes_input_is_wire_error():
    for junk in (None, "MYAS", 12, [1, 2]):
        with pytest.raises(WireError):
            wire.decode_datagram(junk, keys_of({"a1": KEY}))
        with pytest.raises(WireError):
            wire.peek_agent(junk)


def test_deep_nesting(monkeypatch):
    deep = seal(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(WireError) as exc:
        decode(deep)
    assert exc.value.reason in ("bad_json", "bad_schema")
    monkeypatch.setattr(wire, "_loads", wire._std_loads)  # RecursionError in the stdlib parser
    with pytest.raises(WireError) as exc:
        decode(deep)
    assert exc.value.reason == "bad_json"


def test_stdlib_json_fallback_matches_orjson():
    rows = realistic_rows(20)
    assert wire._std_dumps(rows) == wire._dumps(rows)
    assert wire._std_loads(wire._dumps(rows)) == rows
    with pytest.raises(ValueError):
        wire._std_loads(b"[NaN]")


# --- fuzzing -------------------------------------------------------------------------------

def _mutate(rnd, data):
    kind = rnd.randrange(5)
    data = bytearray(data)
    if kind == 0:
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
    elif kind == 1:
        del data[rnd.randrange(len(data)):]
    elif kind == 2:
        pos = rnd.randrange(len(data))
        data[pos:pos + rnd.randint(1, 8)] = rnd.randbytes(rnd.randint(0, 8))
    elif kind == 3:
        data = bytearray(rnd.randbytes(rnd.randint(0, 300)))
        if rnd.random() < 0.5:
            data[:9] = b"MYAS\x01\x00\x02a1"
    else:
        pos = rnd.randrange(min(len(data), 12))  # header bytes: keep the token valid
        data[pos] = rnd.randrange(256)
    return bytes(data)


def _expect_wire_error_only(dgram):
    try:
        wire.decode_datagram(dgram, keys_of({"a1": KEY, "a": KEY}), ttl=3600, now=T0)
    except WireError as exc:
        assert exc.reason in wire.REASONS
        return exc.reason
    return "ok"


def test_fuzz_datagram_mutations():
    rnd = random.Random(20240601)
    seeds = [seal(body()), seal(body(flows=realistic_rows(5))), FIXTURE]
    reasons = {_expect_wire_error_only(_mutate(rnd, rnd.choice(seeds))) for _ in range(10_000)}
    assert {"bad_token", "short", "bad_magic"} <= reasons


def test_fuzz_authentic_tokens_with_broken_bodies():
    # Mutations inside the encryption reach the decompressor and the JSON/schema checks.
    rnd = random.Random(7)
    plain = body(flows=realistic_rows(3))
    reasons = set()
    for i in range(2000):
        if i % 2:
            dgram = seal(_mutate(rnd, zlib.compress(plain)), compress=False)
        else:
            dgram = seal(_mutate(rnd, plain))
        reasons.add(_expect_wire_error_only(dgram))
    assert {"bad_compression", "bad_json"} <= reasons


# --- Batcher -------------------------------------------------------------------------------

def _run_batcher(rows, max_datagram, first_seq=0):
    b = wire.Batcher("edge-01.example", KEY, max_datagram=max_datagram, first_seq=first_seq,
                     clock=lambda: 99.0)
    out = []
    for row in rows:
        out.extend(b.add(row))
    assert b.pending + sum(len(decode(d, agent="edge-01.example").rows) for d in out) == len(rows)
    out.extend(b.flush())
    assert b.pending == 0 and b.flush() == []
    assert b.next_seq == first_seq + len(out)
    return out


@pytest.mark.parametrize("max_datagram", [512, 1400, 9000])
def test_batcher_packs_all_rows_in_order(max_datagram):
    rows = realistic_rows(3000, seed=max_datagram)
    out = _run_batcher(rows, max_datagram, first_seq=5)
    batches = [decode(d, agent="edge-01.example") for d in out]
    assert [b.seq for b in batches] == list(range(5, 5 + len(out)))
    assert [r for b in batches for r in b.rows] == rows
    assert all(b.sent == 99.0 for b in batches)
    assert all(len(d) <= max_datagram for d in out)
    assert all(len(d) >= 0.75 * max_datagram for d in out[:-1])


def test_batcher_incompressible_and_repetitive_rows():
    rnd = random.Random(3)
    noisy = []
    for _ in range(300):
        row = list(ROW)
        row[12] = rnd.randbytes(30).hex()
        noisy.append(row)
    out = _run_batcher(noisy, 1400)
    assert all(len(d) <= 1400 for d in out)
    assert [r for d in out for r in decode(d, agent="edge-01.example").rows] == noisy
    # Identical rows compress ~100:1, so the JSON size cap binds before the datagram size.
    same = [ROW] * 20_000
    out = _run_batcher(same, 9000)
    assert len(out) >= len(same) * len(wire._dumps(ROW)) // wire.MAX_PLAIN + 1 >= 3
    assert sum(len(decode(d, agent="edge-01.example").rows) for d in out) == len(same)


def test_batcher_rejects_bad_setup_and_rows():
    for md in (200, 511, 65508):
        with pytest.raises(ValueError):
            wire.Batcher("a1", KEY, max_datagram=md)
    with pytest.raises(ValueError):
        wire.Batcher("bad id", KEY)
    b = wire.Batcher("a" * 64, KEY, max_datagram=512)
    with pytest.raises(ValueError):
        b.add(ROW[:-1])
    huge = list(ROW)
    huge[12] = random.Random(1).randbytes(300).hex()
    with pytest.raises(ValueError):
        b.add(huge)
    assert b.pending == 0
    assert b.add(ROW) == [] and b.pending == 1
    (dgram,) = b.flush()
    assert len(dgram) <= 512 and decode(dgram, agent="a" * 64).rows == [ROW]


def test_worst_agent_row_fits_in_smallest_datagram():
    rnd = random.Random(11)
    agent = "x" * wire.MAX_AGENT_ID
    for _ in range(50):
        v6 = [str(ipaddress.IPv6Address(rnd.getrandbits(128) | (0x8888 << 112) | (0x8888 << 96)))
              for _ in range(3)]
        row = [v6[0], v6[1], 65535, 65535, 255, 255, 2 ** 63 - 1, 2 ** 63 - 1, T0 + rnd.random(),
               T0 + rnd.random(), 255, agent, rnd.randbytes(8).hex()[:15], 2 ** 31 - 1, 2 ** 31 - 1,
               6, 4095, v6[2], 128, 128, 2 ** 32 - 1, 2 ** 32 - 1, "cache_full"]
        b = wire.Batcher(agent, KEY, max_datagram=wire.MIN_DATAGRAM, first_seq=2 ** 63 - 1)
        assert b.add(row) == []
        (dgram,) = b.flush()
        assert len(dgram) <= wire.MIN_DATAGRAM
