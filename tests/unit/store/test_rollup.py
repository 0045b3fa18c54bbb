"""Rollups: bucket math, options, and SQLite end to end against a GROUP BY computed in Python."""
import random
import sqlite3
from collections import defaultdict

import pytest

from myason.services import builtin_table
from myason.errors import ConfigError
from myason.store import rollup
from myason.schema import ENRICHED_ROW_FIELDS
from myason.store.sqlite import SqliteWriter

T0 = 1700006400.0   # 2023-11-15 00:00:00 UTC
DAY = 86400
I = {f: i for i, f in enumerate(ENRICHED_ROW_FIELDS)}
RES = tuple(rollup.RESOLUTIONS)
# The dimensions every top-N level must hold (named here, so a dimension the SQL lacks fails).
DIMENSIONS = ("src_ip", "dst_ip", "src_port", "dst_port", "src_country", "dst_country", "src_asn", "dst_asn",
              "service_port")


def make_rows(n, t0=T0, span=3 * 3600, seed=1, agents=("edge-1", "edge-2")):
    """n enriched rows with `first` spread over [t0, t0 + span) and a few values per dimension."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        first = t0 + rnd.random() * span
        rows.append([
            "10.0.0.%d" % rnd.randrange(40), "2001:db8::%x" % rnd.randrange(1, 30),
            # Ports and protocols for every branch of the service port rule: one side a service
            # (below 1024 or registered, e.g. 3306), both (5353 -> 53), neither (5000 -> 6000),
            # reply flows from a service to an ephemeral port, and protocols without ports.
            rnd.choice((0, 53, 443, 3306, 5000, 1024 + rnd.randrange(50), 40000 + rnd.randrange(30))),
            rnd.choice((53, 80, 443, 8080, 6000, 33000 + rnd.randrange(20))),
            rnd.choice((6, 17, 6, 17, 1, 132)), 0, rnd.randrange(1, 50), rnd.randrange(40, 150000), first, first + 1.0,
            0x1b, rnd.choice(agents), rnd.choice(("eth0", "eth1")), 2, 3, 4, 0, "", 24, 64, 0, 0, "idle",
            first + 30.0, "127.0.0.1",
            rnd.choice(("in", "out", "")), "", rnd.choice(("", "CZ", "DE", "US")), rnd.choice(("", "CZ", "FR")),
            rnd.choice((0, 2852, 15169)), rnd.choice((0, 13335, 2852)), "", "", "", ""])
    return rows


def ref_totals(rows, res):
    """{(bucket, agent, if_name, proto, direction): (bytes, packets, flows)} computed in Python."""
    out = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        k = (rollup.bucket_of(r[I["first"]], res), r[I["agent"]], r[I["if_name"]], r[I["proto"]], r[I["direction"]])
        out[k][0] += r[I["bytes"]]
        out[k][1] += r[I["packets"]]
        out[k][2] += 1
    return {k: tuple(v) for k, v in out.items()}


# The rule of docs/api.md, restated independently of the SQL: ports below 1024 and the ports of
# the enrichment's built-in service table qualify; the side that qualifies alone is the service,
# else the lower port; only TCP, UDP and SCTP have ports.
KNOWN_PORTS = frozenset(port for _, port in builtin_table())


def ref_service_port(proto, src_port, dst_port):
    if proto not in (6, 17, 132):
        return None
    src_ok = src_port < 1024 or src_port in KNOWN_PORTS
    dst_ok = dst_port < 1024 or dst_port in KNOWN_PORTS
    if src_ok != dst_ok:
        return src_port if src_ok else dst_port
    return min(src_port, dst_port)


def ref_key(r, dim):
    if dim == "service_port":
        v = ref_service_port(r[I["proto"]], r[I["src_port"]], r[I["dst_port"]])
        return None if v is None else str(v)
    v = r[I[dim]]
    if dim.endswith("_country") and v == "" or dim.endswith("_asn") and v == 0:
        return None
    return str(v)


def ref_tops(rows, res, top=25):
    """{(bucket, agent, dimension, key): (bytes, packets, flows, rank)} computed in Python."""
    sums = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        b = rollup.bucket_of(r[I["first"]], res)
        for dim in DIMENSIONS:
            key = ref_key(r, dim)
            if key is None:
                continue
            for agent in (r[I["agent"]], "*"):
                s = sums[(b, agent, dim, key)]
                s[0] += r[I["bytes"]]
                s[1] += r[I["packets"]]
                s[2] += 1
    groups = defaultdict(list)
    for (b, agent, dim, key), v in sums.items():
        groups[(b, agent, dim)].append((key, v))
    out = {}
    for (b, agent, dim), items in groups.items():
        items.sort(key=lambda kv: (-kv[1][0], kv[0]))
        for rank, (key, v) in enumerate(items[:top], 1):
            out[(b, agent, dim, key)] = tuple(v) + (rank,)
    return out


def rank_lists(sums, top):
    """{(bucket, agent, dimension, key): (bytes, packets, flows, rank)} from summed values, top per list."""
    groups = defaultdict(list)
    for (b, agent, dim, key), v in sums.items():
        groups[(b, agent, dim)].append((key, v))
    out = {}
    for (b, agent, dim), items in groups.items():
        items.sort(key=lambda kv: (-kv[1][0], kv[0]))
        for rank, (key, v) in enumerate(items[:top], 1):
            out[(b, agent, dim, key)] = tuple(v[:3]) + (rank,)
    return out


def tops_from(finer, res, top):
    """The documented coarse method: sum the finer lists per key, rank, keep top."""
    sums = defaultdict(lambda: [0, 0, 0])
    for (b, agent, dim, key), v in finer.items():
        s = sums[(rollup.bucket_of(b, res), agent, dim, key)]
        for i in range(3):
            s[i] += v[i]
    return rank_lists(sums, top)


def ref_candidates(rows, top, kind="sqlite"):
    """{(bucket, agent, dimension): [(key, bytes, packets, flows)]} of one batch, as rollup_batch
    documents them: per list the `top` keys with the most bytes, ties to the smaller key; '*' over
    the batch's agents together."""
    sums = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        f = r[I["first"]]
        m = int(round(f * 1e6)) // 60_000_000 * 60 if kind == "postgresql" else int(f) // 60 * 60
        for dim in DIMENSIONS:
            key = ref_key(r, dim)
            if key is None:
                continue
            for agent in (r[I["agent"]], "*"):
                s = sums[(m, agent, dim, key)]
                s[0] += r[I["bytes"]]
                s[1] += r[I["packets"]]
                s[2] += 1
    groups = defaultdict(list)
    for (m, agent, dim, key), v in sums.items():
        groups[(m, agent, dim)].append((key,) + tuple(v))
    return {g: sorted(items, key=lambda kv: (-kv[1], kv[0]))[:top] if len(items) > top else items
            for g, items in groups.items()}, {g: sorted((v[1] for v in items), reverse=True)[top]
                                              if len(items) > top else 0 for g, items in groups.items()}


class RefRollups:
    """The 1m top-N lists and their error bounds, by the documented method, in plain Python.

    write(rows): a stored batch adds its candidates; maintain(now): every minute whose candidates
    are due (bucket end + SETTLE["1m"]) gets its list summed with them, ranked and cut to `top`.
    e1m: per list, what a listed key may miss (the sum of the cuts of the batches and of earlier
    finalisations of that list).
    """

    def __init__(self, top, kind="sqlite"):
        self.top, self.kind = top, kind
        self.pending = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))     # bucket -> (agent, dim, key) -> sums
        self.lists = {}                                                         # (b, agent, dim, key) -> (b, p, f, rank)
        self.e1m = defaultdict(int)

    def write(self, rows):
        cands, cuts = ref_candidates(rows, self.top, self.kind)
        for (m, agent, dim), items in cands.items():
            for key, b, p, f in items:
                s = self.pending[m][(agent, dim, key)]
                s[0] += b
                s[1] += p
                s[2] += f
        for g, cut in cuts.items():
            self.e1m[g] += cut

    def maintain(self, now, horizon=0):
        for m in sorted(self.pending):
            if m + 60 + rollup.SETTLE["1m"] > now:
                continue
            sums = self.pending.pop(m)
            if m < horizon:
                continue
            old = {k: v for k, v in self.lists.items() if k[0] == m}
            for k, v in old.items():
                del self.lists[k]
                s = sums[k[1:]]
                for i in range(3):
                    s[i] += v[i]
            # A list already cut before: what was cut off may have grown by the new candidates.
            for (b, agent, dim), values in _by_list(old).items():
                if len(values) >= self.top:
                    self.e1m[(b, agent, dim)] += min(values)
            self.lists.update(rank_lists({(m,) + k: v for k, v in sums.items()}, self.top))


def _by_list(lists):
    out = defaultdict(list)
    for (b, agent, dim, key), v in lists.items():
        out[(b, agent, dim)].append(v[0])
    return out


def written(batches, top, now=float("inf")):
    """RefRollups after writing these batches and one maintenance at `now`."""
    ref = RefRollups(top)
    for rows in batches:
        ref.write(rows)
    ref.maintain(now)
    return ref


def expected_tops(rows, res, top=25, ref=None):
    """What maintain stores: the 1m lists (of `ref`, else of all rows in one batch), each coarser
    level summed from the finer one's lists."""
    lists = (ref or written([rows], top)).lists
    for r in RES[1:RES.index(res) + 1]:
        lists = tops_from(lists, r, top)
    return lists


def error_bounds(lists, top, e1m=None):
    """{res: {(bucket, agent, dimension): E}}: true bytes - listed bytes <= E for any key.

    E of a 1m list: from RefRollups.e1m (0 when every batch's list held all its keys). E of a
    coarse list = sum over its finer lists c of (cut_c + E_c), cut_c = the smallest bytes in c
    when c is full (top entries), else 0: a key missing from c has at most cut_c + E_c there.
    """
    out = {"1m": defaultdict(int, e1m or {})}
    for finer, res in zip(RES, RES[1:]):
        e = defaultdict(int)
        for (b, agent, dim), values in _by_list(lists[finer]).items():
            cut = min(values) if len(values) >= top else 0
            e[(rollup.bucket_of(b, res), agent, dim)] += cut + out[finer][(b, agent, dim)]
        out[res] = e
    return out


def assert_bounded(lists, rows, top, e1m=None):
    """Every stored list against a GROUP BY in Python, within the documented bound above."""
    bounds = error_bounds(lists, top, e1m)
    for res in RES:
        true = ref_tops(rows, res, 10 ** 9)
        by_list = _by_list(lists[res])
        for (b, agent, dim, key), v in lists[res].items():
            t = true[(b, agent, dim, key)]
            e = bounds[res][(b, agent, dim)]
            # Listed values are lower bounds, short of the truth by at most E.
            assert v[0] <= t[0] <= v[0] + e and v[1] <= t[1] and v[2] <= t[2], (res, b, agent, dim, key)
        for (b, agent, dim, key), t in true.items():
            listed = by_list.get((b, agent, dim), [])
            if (b, agent, dim, key) not in lists[res] and len(listed) >= top:
                # A key left out has at most the cut plus E.
                assert t[0] <= min(listed) + bounds[res][(b, agent, dim)], (res, b, agent, dim, key)
            elif (b, agent, dim, key) not in lists[res]:
                assert t[0] <= bounds[res][(b, agent, dim)], (res, b, agent, dim, key)


def db_totals(path, res):
    with sqlite3.connect(path) as conn:
        return {(int(r[0]),) + tuple(r[1:5]): tuple(r[5:]) for r in conn.execute("SELECT * FROM rollup_%s" % res)}


def db_tops(path, res):
    with sqlite3.connect(path) as conn:
        return {(int(r[0]),) + tuple(r[1:4]): tuple(r[4:]) for r in conn.execute("SELECT * FROM rollup_top_%s" % res)}


def assert_rollups(path, rows, top=25, tops=RES, ref=None):
    """Totals exact; tops as the documented method makes them (ref: the batches as written, else
    all rows in one batch) and within the bound of the truth."""
    ref = ref or written([rows], top)
    for res in RES:
        assert db_totals(path, res) == ref_totals(rows, res), res
    for res in tops:
        assert db_tops(path, res) == expected_tops(rows, res, top, ref), res
    assert_bounded({res: db_tops(path, res) for res in RES}, rows, top, ref.e1m)


def count(path, table):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM %s" % table).fetchone()[0]


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "flows.db")


@pytest.fixture
def writer(db):
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=5)
    w.open()
    yield w
    w.close()


# -- pure functions ---------------------------------------------------------------------------

def test_bucket_math():
    assert rollup.bucket_of(T0 + 59.999, "1m") == T0
    assert rollup.bucket_of(T0 + 60, "1m") == T0 + 60
    assert rollup.bucket_of(T0 + 901, "15m") == T0 + 900
    assert rollup.bucket_of(T0 + DAY - 0.5, "1d") == T0
    assert rollup.enclosing([T0 + 60, T0 + 960, T0 + 3700], "15m") == [T0, T0 + 900, T0 + 3600]
    assert rollup.ranges([180, 0, 60, 300, 60], 60) == [(0, 120), (180, 240), (300, 360)]
    assert rollup.ranges([], 60) == []


def test_minutes_follow_what_each_database_stores():
    # The batch partials bucket each flow as its database stores it: PostgreSQL rounds to
    # microseconds (59.9999996 s is stored as 60 s), SQLite keeps the float (whole seconds).
    import numpy as np
    from myason.store.rollup_batch import minute_buckets
    firsts = np.array([T0 + 59.9999996, T0 + 59.4, T0 + 120.0, T0 + 58.4])
    assert minute_buckets(np, firsts, "sqlite").tolist() == [T0, T0, T0 + 120, T0]
    assert minute_buckets(np, firsts, "postgresql").tolist() == [T0 + 60, T0, T0 + 120, T0]
    rnd = random.Random(0)
    for _ in range(2000):
        t = T0 + rnd.randrange(600) + rnd.choice((0.0, 0.9999995, 0.99999949, 0.9999999, rnd.random()))
        assert minute_buckets(np, np.array([t]), "postgresql")[0] == round(t * 1e6) // 60000000 * 60


def test_partitions_are_named_and_bounded():
    assert rollup.partition_of("1m", T0 + 5) == ("rollup_1m_p20231115", T0, T0 + DAY)
    name, lo, hi = rollup.partition_of("15m", T0, top=True)
    assert name == "rollup_top_15m_p202311" and lo == 1698796800 and hi == 1701388800
    assert rollup.partition_of("1h", 1701388800 - 1)[0] == "rollup_1h_p202311"
    assert rollup.partition_of("1d", T0) == ("rollup_1d_p2023", 1672531200, 1704067200)
    assert rollup.partition_of("1h", 1703980800 + 3600)[1:] == (1701388800, 1704067200)   # December
    for res in RES:
        for top in (False, True):
            name, lo, hi = rollup.partition_of(res, T0, top)
            assert rollup.period_of_partition(name) == (name.rsplit("_p", 1)[0], lo, hi)
    assert rollup.period_of_partition("flows_p20231115") is None
    assert rollup.period_of_partition("rollup_1m_p202311") is None


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("7d", 7 * DAY), ("1y", 365 * DAY), (0, 0), ("0", 0),
                                           ("2w", 14 * DAY), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert rollup.parse_duration("k", text) == seconds


@pytest.mark.parametrize("text", ["7", 7, "7x", "", None, True, "-1d"])
def test_parse_duration_refuses(text):
    with pytest.raises(ConfigError) as err:
        rollup.parse_duration("sqlite.retention.1m", text)
    assert err.value.key == "sqlite.retention.1m"


@pytest.mark.parametrize("options, key", [
    ({"retention": {"raw": "12h"}}, "sqlite.retention.raw"),
    ({"retention": {"raw": "36h"}}, "sqlite.retention.raw"),
    ({"retention": {"5m": "1d"}}, "sqlite.retention.5m"),
    ({"retention": {"1m": "30"}}, "sqlite.retention.1m"),
    ({"retention": "7d"}, "sqlite.retention"),
    ({"retention": {"raw": "7d"}, "retention_days": 3}, "sqlite.retention_days"),
    ({"rollup_top": 0}, "sqlite.rollup_top"),
    ({"maintain_interval": -1}, "sqlite.maintain_interval"),
])
def test_bad_options_name_the_key(db, options, key):
    with pytest.raises(ConfigError) as err:
        SqliteWriter(path=db, **options)
    assert err.value.key == key


def test_options_and_retention_days_as_raw(db):
    w = SqliteWriter(path=db, retention={"raw": "7d", "1m": "30d", "15m": "90d", "1h": "1y", "1d": 0}, rollup_top=3)
    assert w.retention == {"raw": 7 * DAY, "1m": 30 * DAY, "15m": 90 * DAY, "1h": 365 * DAY, "1d": 0}
    assert (w.retention_days, w.rollup_top, w.maintain_interval) == (7, 3, 60.0)
    w = SqliteWriter(path=db, retention_days=2)
    assert w.retention["raw"] == 2 * DAY and w.retention_days == 2


def test_horizon():
    now = T0 + 10 * DAY + 3600
    assert rollup.horizon({}, now) == 0
    assert rollup.horizon({"raw": 7 * DAY}, now) == T0 + 3 * DAY
    assert rollup.horizon({"raw": 7 * DAY, "1m": 2 * DAY}, now) == T0 + 9 * DAY


# -- SQLite end to end ------------------------------------------------------------------------

def test_rollups_match_a_group_by_in_python(writer, db):
    rows = make_rows(3000, span=2 * DAY + 3 * 3600)
    batches = [rows[i:i + 500] for i in range(0, len(rows), 500)]
    for i, b in enumerate(batches):
        writer.write("b%d" % i, b)
    # Totals are there as soon as the batches are.
    for res in RES:
        assert db_totals(db, res) == ref_totals(rows, res), res
    s = writer.maintain(now=T0 + 5 * DAY)
    assert s["tops"]["1d"] == 3 and s["tops"]["1m"] > 1000 and s["lag"] == 0 and not s["more"]
    assert_rollups(db, rows, top=5, ref=written(batches, 5))
    assert count(db, "rollup_cand") == 0 and count(db, "rollup_pending") == 0
    assert "tops 1m=" in rollup.format_summary(s)


def test_a_minute_spread_over_batches_is_a_lower_bound_within_the_cuts(db):
    # Many small batches over few minutes, many keys: most 1m lists are cut in every batch.
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=3)
    w.open()
    rows = make_rows(4000, span=600, seed=31)
    batches = [rows[i:i + 100] for i in range(0, len(rows), 100)]
    for i, b in enumerate(batches):
        w.write("b%d" % i, b)
    w.maintain(now=T0 + 2 * DAY)
    w.close()
    ref = written(batches, 3)
    assert db_tops(db, "1m") == ref.lists
    assert any(ref.e1m.values())            # the bound is not vacuous here
    assert_rollups(db, rows, top=3, ref=ref)


def test_coarse_tops_are_exact_when_the_finer_lists_hold_every_key(db):
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=1000)
    w.open()
    rows = make_rows(2000, span=DAY + 3600, seed=9)
    w.write("a", rows)
    w.maintain(now=T0 + 3 * DAY)
    w.close()
    for res in RES:
        assert db_tops(db, res) == ref_tops(rows, res, 1000), res


def test_coarse_tops_stay_within_the_bound_on_skewed_keys(db):
    # Many keys just below the cut in every minute: the case the bound is about.
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=3)
    w.open()
    rnd = random.Random(11)
    rows = make_rows(4000, span=2 * 3600, seed=10)
    for r in rows:
        r[I["src_port"]] = int(rnd.paretovariate(0.7)) % 500
    w.write("a", rows)
    w.maintain(now=T0 + 2 * DAY)
    w.close()
    lists = {res: db_tops(db, res) for res in RES}
    assert lists["1d"] == expected_tops(rows, "1d", 3)
    assert_bounded(lists, rows, 3)
    # The bound is not vacuous here: some coarse list differs from the exact one.
    assert any(lists[res] != ref_tops(rows, res, 3) for res in RES[1:])


def test_running_twice_gives_the_same_result(writer, db):
    rows = make_rows(800)
    writer.write("a", rows)
    writer.maintain(now=T0 + 2 * DAY)
    before = [db_totals(db, r) for r in RES] + [db_tops(db, r) for r in RES]
    s = writer.maintain(now=T0 + 2 * DAY)
    assert s["dirty"] == 0 and sum(s["buckets"].values()) == 0
    assert [db_totals(db, r) for r in RES] + [db_tops(db, r) for r in RES] == before
    # Marking everything dirty again recomputes the same rows.
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO rollup_dirty (bucket) SELECT DISTINCT bucket FROM rollup_1m")
    writer.maintain(now=T0 + 2 * DAY)
    assert [db_totals(db, r) for r in RES] + [db_tops(db, r) for r in RES] == before


def test_late_flows_and_batches_between_runs(writer, db):
    ref = RefRollups(5)
    rows = make_rows(600, span=3600, seed=2)
    writer.write("a", rows)
    ref.write(rows)
    # During the hour: totals are there; 1m lists for the minutes settled (ended SETTLE ago),
    # coarse tops wait for their bucket to close.
    writer.maintain(now=T0 + 3000)
    ref.maintain(T0 + 3000)
    assert db_totals(db, "1h") == ref_totals(rows, "1h")
    assert rollup.SETTLE["1m"] == 60 and rollup.SETTLE["15m"] == 300
    settled = [r for r in rows if r[I["first"]] < T0 + 3000 - rollup.SETTLE["1m"]]
    assert db_tops(db, "1m") == ref.lists == ref_tops(settled, "1m", 5)
    # 15m buckets settled at 3000 s: those ending by 3000 - SETTLE, i.e. starting before 2700 s.
    assert db_tops(db, "1h") == {} and db_tops(db, "15m") == expected_tops(
        [r for r in rows if r[I["first"]] < T0 + 2700], "15m", 5)
    # A batch arrives late: flows that started in the first minutes of the hour, whose 1m lists
    # are already made (the new candidates are summed into them).
    late = make_rows(300, span=300, seed=3)
    writer.write("late", late)
    ref.write(late)
    more = make_rows(200, t0=T0 + 3600, span=600, seed=4)
    writer.write("more", more)
    ref.write(more)
    writer.maintain(now=T0 + 3600 + 600)
    ref.maintain(T0 + 3600 + 600)
    everything = rows + late + more
    for res in RES:
        assert db_totals(db, res) == ref_totals(everything, res), res
    assert db_tops(db, "1m") == ref.lists
    assert db_tops(db, "1h") == {}     # closed, but not settled yet
    writer.maintain(now=T0 + 2 * DAY)
    ref.maintain(T0 + 2 * DAY)
    assert_rollups(db, everything, top=5, ref=ref)


def test_a_retried_batch_is_not_counted_twice(writer, db):
    rows = make_rows(300, seed=5)
    assert writer.write("x", rows)
    writer.maintain(now=T0 + DAY * 2)
    assert not writer.write("x", rows)
    writer.maintain(now=T0 + DAY * 2)
    assert_rollups(db, rows, top=5)


def test_retention_per_resolution(db):
    now = T0 + 40 * DAY + 3600
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=5,
                     retention={"raw": "30d", "1m": "35d", "15m": "37d", "1h": "1y", "1d": 0})
    w.clock = lambda: T0
    w.open()
    old = make_rows(300, span=8 * DAY, seed=6)     # days 0..7 after T0
    w.write("old", old)
    w.maintain(now=T0 + 9 * DAY)
    assert_rollups(db, old, top=5)
    s = w.maintain(now=now)
    assert s["deleted"]["flows"] == sum(1 for r in old if r[I["first"]] < T0 + 10 * DAY)
    for res, keep in (("1m", 35), ("15m", 37)):
        cutoff = now - keep * DAY
        assert db_totals(db, res) == {k: v for k, v in ref_totals(old, res).items() if k[0] >= cutoff}
        assert db_tops(db, res) == {k: v for k, v in expected_tops(old, res, 5).items() if k[0] >= cutoff}
    assert db_totals(db, "1h") == ref_totals(old, "1h") and db_totals(db, "1d") == ref_totals(old, "1d")
    # A very late flow before the horizon adds to the totals still kept, but must not replace
    # good top lists by itself alone: its candidates are dropped.
    before = {res: db_tops(db, res) for res in RES}
    too_late = make_rows(1, t0=T0 + 2 * DAY, span=10, seed=7)
    w.write("too-late", too_late)
    s = w.maintain(now=now)
    assert s["skipped"] == 1 and count(db, "rollup_cand") == 0
    assert db_totals(db, "1d") == ref_totals(old + too_late, "1d")
    assert {res: db_tops(db, res) for res in RES} == before
    assert db_totals(db, "1m") == {k: v for k, v in ref_totals(old, "1m").items() if k[0] >= now - 35 * DAY}
    w.close()


def test_health_samples_are_kept_seven_days(writer, db):
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO health_samples VALUES (?, 'n', '', 'flows', 1.0)",
                         [(T0 - 8 * DAY,), (T0 - 6 * DAY,)])
    s = writer.maintain(now=T0)
    assert s["deleted"]["health_samples"] == 1 and count(db, "health_samples") == 1


def test_a_write_adds_its_totals_and_candidates_nothing_else(db):
    w = SqliteWriter(path=db, maintain_interval=60, rollup_top=5)
    w.open()
    rows = make_rows(200, span=30, seed=8)
    w.write("a", rows)
    for res in RES:
        assert db_totals(db, res) == ref_totals(rows, res)
    cands, _ = ref_candidates(rows, 5)
    assert count(db, "rollup_cand") == sum(len(v) for v in cands.values())
    # Writing never runs the maintenance (the collector's maintenance thread does).
    assert count(db, "rollup_top_1m") == 0 and count(db, "rollup_state") == 0
    w.close()


# (proto, src_port, dst_port, service port) of docs/api.md's rule; None: not ranked.
SERVICE_CASES = [
    (6, 51000, 443, 443), (6, 443, 51000, 443),           # a client's request and the server's reply
    (17, 5353, 53, 53),                                   # both sides services (5353 is mdns): the lower
    (17, 5000, 6000, 5000), (17, 6000, 5000, 5000),       # neither: the lower
    (6, 45000, 3306, 3306), (6, 3306, 45000, 3306),       # registered service above 1024 (mysql)
    (6, 8080, 443, 443), (6, 0, 50000, 0), (132, 38412, 2905, 2905),
    (1, 0, 2048, None), (58, 0, 32768, None), (47, 0, 0, None),     # ICMP, ICMPv6, GRE: no ports
]


def test_the_service_port_rule_in_sql(db):
    assert [ref_service_port(p, s, d) for p, s, d, _ in SERVICE_CASES] == [x for _, _, _, x in SERVICE_CASES]
    w = SqliteWriter(path=db, maintain_interval=0)
    w.open()
    # One flow per minute, so each 1m list holds the service port of that flow alone.
    rows = make_rows(len(SERVICE_CASES), seed=12)
    for k, (r, (proto, sport, dport, _)) in enumerate(zip(rows, SERVICE_CASES)):
        r[I["first"]] = T0 + 60 * k
        r[I["proto"]], r[I["src_port"]], r[I["dst_port"]] = proto, sport, dport
    w.write("a", rows)
    w.maintain(now=T0 + DAY)
    w.close()
    got = {b: key for (b, agent, dim, key) in db_tops(db, "1m") if dim == "service_port" and agent == "*"}
    assert [got.get(T0 + 60 * k) for k in range(len(SERVICE_CASES))] == [
        None if x is None else str(x) for _, _, _, x in SERVICE_CASES]


def test_service_ports_of_rollups_made_before_migration_4(db):
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=5)
    w.open()
    rows = make_rows(600, span=DAY + 3600, seed=13)
    w.write("a", rows)
    w.maintain(now=T0 + 3 * DAY)
    # As if the rollups had been made before migration 004: no service_port lists anywhere.
    with sqlite3.connect(db) as conn:
        for res in RES:
            conn.execute("DELETE FROM rollup_top_%s WHERE dimension = 'service_port'" % res)
        conn.execute("DELETE FROM schema_migrations WHERE version = 4")
    w.close()
    w.open()
    assert count(db, "rollup_dirty") > 0
    w.maintain(now=T0 + 3 * DAY)
    assert_rollups(db, rows, top=5)
    w.close()


def test_existing_flows_are_marked_by_the_migration(db):
    w = SqliteWriter(path=db, maintain_interval=0, rollup_top=5)
    w.open()
    rows = make_rows(200, seed=9)
    w.write("a", rows)
    # As if the flows had been stored before migration 003: no marks, no rollups, migration again.
    with sqlite3.connect(db) as conn:
        for t in ("rollup_dirty", "rollup_state", "rollup_pending", "health_collectors", "health_agents",
                  "health_samples") + tuple("rollup_%s" % r for r in RES) + tuple("rollup_top_%s" % r for r in RES):
            conn.execute("DROP TABLE %s" % t)
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
    w.close()
    w.open()
    w.maintain(now=T0 + 2 * DAY)
    assert_rollups(db, rows, top=5)
    w.close()


def test_myason_maintain_command(db, tmp_path, capsys):
    from myason.cli import main
    w = SqliteWriter(path=db, maintain_interval=0)
    w.clock = lambda: T0
    w.open()
    rows = make_rows(100, span=600, seed=10)
    w.write("a", rows)
    w.close()
    conf = tmp_path / "collector.yaml"
    conf.write_text("writers:\n  - {type: sqlite, path: %s, rollup_top: 5, retention: {raw: 7d}}\n"
                    "  - {type: jsonl, path: %s}\n" % (db, tmp_path / "x.jsonl"))
    assert main(["maintain", "-cc", str(conf), "--now", "2023-11-16T00:45:00Z"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("writers[0] sqlite: dirty marks ") and "1d=1" in out
    assert_rollups(db, rows, top=5)
    assert main(["maintain", "-cc", str(conf), "--now", "2023-11-30T00:00:00Z"]) == 0
    assert "deleted rows flows=100" in capsys.readouterr().out
    assert main(["maintain", "-cc", str(conf), "--now", "yesterday"]) == 2
