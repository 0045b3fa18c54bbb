"""A batch's rollup partials (myason.store.rollup_batch) against the same sums made in plain Python."""
import random
from collections import defaultdict

import pytest

from myason.store import rollup
from myason.schema import ROW_FIELDS
from myason.store.rollup_batch import CAND_COLUMNS, batch_partials as columnar, coarse_totals, rollup_buckets
from tests.support.rollups import I, T0, dimension_sums, minute_of, rollup_rows


def batch_partials(rows, top, kind):
    """(totals, candidates as tuples in CAND_COLUMNS order)."""
    totals, cands = columnar(rows, top, kind)
    return totals, list(zip(*(cands[c] for c in CAND_COLUMNS)))


def ref_partials(rows, top, kind):
    """(totals, candidates) as batch_partials documents them, by dicts and sorts."""
    totals = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        direction = r[I["direction"]] if len(r) > len(ROW_FIELDS) else ""
        t = totals[(minute_of(r[I["first"]], kind), r[I["agent"]], r[I["if_name"]], r[I["proto"]], direction)]
        t[0] += r[I["bytes"]]
        t[1] += r[I["packets"]]
        t[2] += 1
    groups = defaultdict(list)
    for (m, agent, dim, key), v in dimension_sums(rows, lambda first: minute_of(first, kind)).items():
        groups[(m, agent, dim)].append((key, v))
    cands = set()
    for (m, agent, dim), items in groups.items():
        items.sort(key=lambda kv: (-kv[1][0], kv[0]))
        for key, v in items[:top]:
            cands.add((m, agent, dim, key) + tuple(v))
    return {k + tuple(v) for k, v in totals.items()}, cands


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
@pytest.mark.parametrize("top", [1, 3, 25, 10 ** 6])
def test_partials_match_python_sums(kind, top):
    rows = rollup_rows(3000, span=1800, seed=21)
    totals, cands = batch_partials(rows, top, kind)
    want_totals, want_cands = ref_partials(rows, top, kind)
    assert set(totals) == want_totals and len(totals) == len(want_totals)
    assert set(cands) == want_cands and len(cands) == len(want_cands)


def test_ties_at_the_cut_go_to_the_smaller_key_in_text_order():
    rows = rollup_rows(6, seed=22)
    for r, port in zip(rows, (9, 10, 80, 443, 1000, 20)):
        r[I["first"]], r[I["bytes"]], r[I["packets"]] = T0 + 1.0, 100, 1
        r[I["agent"]], r[I["src_port"]] = "a", port
    _, cands = batch_partials(rows, 3, "sqlite")
    got = sorted(c[3] for c in cands if c[2] == "src_port" and c[1] == "a")
    # All six tie at 100 bytes: the three smallest as text are "10", "1000", "20".
    assert got == ["10", "1000", "20"]


def test_plain_rows_have_no_enrichment_dimensions():
    rows = [r[:len(ROW_FIELDS)] for r in rollup_rows(500, seed=23)]
    totals, cands = batch_partials(rows, 5, "sqlite")
    assert {c[2] for c in cands} == {"src_ip", "dst_ip", "src_port", "dst_port", "service_port"}
    assert {t[4] for t in totals} == {""}
    assert ref_partials(rows, 5, "sqlite") == (set(totals), set(cands))


def test_postgresql_minutes_follow_the_microsecond_rounding():
    rows = rollup_rows(2, seed=24)
    rows[0][I["first"]] = T0 + 59.9999996          # stored as T0 + 60.000000
    rows[1][I["first"]] = T0 + 59.9999994          # stored as T0 + 59.999999
    assert sorted({t[0] for t in batch_partials(rows, 5, "postgresql")[0]}) == [T0, T0 + 60]
    assert sorted({t[0] for t in batch_partials(rows, 5, "sqlite")[0]}) == [T0]


def test_coarse_totals_and_buckets():
    rows = rollup_rows(2000, span=2 * 86400, seed=25)
    totals, _ = batch_partials(rows, 5, "sqlite")
    coarse = coarse_totals(totals)
    for res in ("15m", "1h", "1d"):
        want, _ = ref_partials([dict_row for dict_row in rows], 5, "sqlite")
        sums = defaultdict(lambda: [0, 0, 0])
        for b, agent, if_name, proto, direction, nb, np_, nf in want:
            s = sums[(rollup.bucket_of(b, res), agent, if_name, proto, direction)]
            s[0] += nb
            s[1] += np_
            s[2] += nf
        assert set(coarse[res]) == {k + tuple(v) for k, v in sums.items()}
    buckets = rollup_buckets(totals)
    assert {b for res, b in buckets if res == "1m"} == {t[0] for t in totals}
    assert {b for res, b in buckets if res == "1d"} == {rollup.bucket_of(r[I["first"]], "1d") for r in rows}


def test_empty_batch():
    assert batch_partials([], 5, "postgresql") == ([], [])


def test_speed_is_not_asserted_but_large_batches_work():
    rnd = random.Random(26)
    rows = rollup_rows(5000, span=120, seed=26)
    for r in rows:
        r[I["src_ip"]] = "10.%d.%d.%d" % (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
    totals, cands = batch_partials(rows, 25, "postgresql")
    assert sum(t[7] for t in totals) == 5000
    assert max(sum(1 for c in cands if c[:3] == g) for g in {c[:3] for c in cands}) <= 25
