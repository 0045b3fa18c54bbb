"""Prepared spool batches: the processor encodes the PostgreSQL COPY data, the writer only sends it."""
import datetime as dt
import time

import pytest

from myason.store.base import WriterError, decode_prepared, encode_batch, encode_prepared
from myason.store.postgresql import PostgresWriter, encode_binary, prepare_batch
from myason.store.rollup_batch import batch_partials


def row(i, first):
    return ["10.0.0.%d" % (i % 250 + 1), "2001:db8::%x" % (i + 1), 1000 + i, 443, 6, 0, 3, 180, first, first + 1,
            0x1b, "a1", "eth0", 2, 3, 4, 0, "", 24, 24, 0, 0, "fin", first + 2, "192.0.2.7"]


def test_roundtrip_and_plain_batches_are_not_prepared():
    data = encode_prepared({"rows": 2, "x": [1]}, b"payload")
    header, payload = decode_prepared(data)
    assert header == {"rows": 2, "x": [1]} and bytes(payload) == b"payload"
    assert decode_prepared(encode_batch([[1]])) is None


@pytest.mark.parametrize("damage", [lambda d: d[:8], lambda d: d[:11] + b"\xff" + d[12:],
                                    lambda d: encode_prepared({"norows": 1}, b"")])
def test_damaged_prepared_batch_is_a_permanent_error(damage):
    with pytest.raises(WriterError) as err:
        decode_prepared(damage(encode_prepared({"rows": 1}, b"abc")))
    assert err.value.permanent


def test_prepare_batch_carries_copy_data_days_rollup_partials_and_events():
    t = time.mktime((2026, 11, 22, 23, 59, 30, 0, 0, 0)) - time.timezone
    rows = [row(i, t + i * 20) for i in range(4)]          # crosses midnight UTC
    events = [{"ID": "x"}]
    header, payload = decode_prepared(prepare_batch(rows, events, top=3))
    assert header["rows"] == 4 and header["enriched"] is False and header["events"] == events
    assert header["days"] == ["2026-11-22", "2026-11-23"]
    totals, cands = batch_partials(rows, 3, "postgresql")
    assert header["totals"] == [list(t) for t in totals] and header["candidates"] == cands
    assert bytes(payload) == encode_binary(rows)


def test_prepare_batch_refuses_a_short_row():
    with pytest.raises(ValueError):
        prepare_batch([row(0, 1.7e9)[:-1]])


def test_spool_encoder_only_for_binary_copy_with_the_writers_top():
    enc = PostgresWriter.spool_encoder({"dsn": "x", "rollup_top": 7})
    assert enc.func is prepare_batch and enc.keywords == {"top": 7}
    assert PostgresWriter.spool_encoder({"dsn": "x", "copy": "text"}) is None


def test_write_prepared_rejects_a_damaged_header_permanently():
    w = PostgresWriter(dsn="postgresql://127.0.0.1:1/none")
    with pytest.raises(WriterError) as err:
        w.write_prepared("b1", {"rows": 1, "days": ["not a day"], "minutes": [], "enriched": False}, b"")
    assert err.value.permanent
    assert dt.date.fromisoformat("2026-11-23")


def test_days_include_the_next_one_when_a_time_may_round_into_it():
    midnight = time.mktime((2026, 11, 23, 0, 0, 0, 0, 0, 0)) - time.timezone
    rows = [row(0, midnight - 0.0000004), row(1, midnight - 3600)]
    header, _ = decode_prepared(prepare_batch(rows))
    assert header["days"] == ["2026-11-22", "2026-11-23"]
    header, _ = decode_prepared(prepare_batch([row(1, midnight - 3600)]))
    assert header["days"] == ["2026-11-22"]
