"""The rollups restated in plain Python: the documented method (docs/rollups.md) for totals, top-N
lists and their error bounds, the service port rule, and the enriched rows the rollup tests feed it."""
import random
from collections import defaultdict

from myason.schema import ENRICHED_ROW_FIELDS, ROW_FIELDS
from myason.services import builtin_table
from myason.store import rollup

T0 = 1700006400.0   # 2023-11-15 00:00:00 UTC
I = {f: i for i, f in enumerate(ENRICHED_ROW_FIELDS)}
RES = tuple(rollup.RESOLUTIONS)
# The dimensions every top-N level must hold (named here, so a dimension the SQL lacks fails).
DIMENSIONS = ("src_ip", "dst_ip", "src_port", "dst_port", "src_country", "dst_country", "src_asn", "dst_asn",
              "service_port")
PLAIN_DIMENSIONS = ("src_ip", "dst_ip", "src_port", "dst_port", "service_port")    # of rows not enriched


def rollup_rows(n, t0=T0, span=3 * 3600, seed=1, agents=("edge-1", "edge-2")):
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


def minute_of(first, kind):
    """The minute a flow's `first` falls in, as each database stores it (PostgreSQL rounds to microseconds)."""
    if kind == "postgresql":
        return int(round(first * 1e6)) // 60_000_000 * 60
    return int(first) // 60 * 60


def dimension_sums(rows, bucket):
    """{(bucket(first), agent, dimension, key): [bytes, packets, flows]} for each row's agent and '*'.

    Keys ref_key leaves out are skipped; rows without the enrichment columns have the address and
    port dimensions only."""
    sums = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        b = bucket(r[I["first"]])
        for dim in DIMENSIONS if len(r) > len(ROW_FIELDS) else PLAIN_DIMENSIONS:
            key = ref_key(r, dim)
            if key is None:
                continue
            for agent in (r[I["agent"]], "*"):
                s = sums[(b, agent, dim, key)]
                s[0] += r[I["bytes"]]
                s[1] += r[I["packets"]]
                s[2] += 1
    return sums


def ref_tops(rows, res, top=25):
    """{(bucket, agent, dimension, key): (bytes, packets, flows, rank)} computed in Python."""
    return rank_lists(dimension_sums(rows, lambda first: rollup.bucket_of(first, res)), top)


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
    groups = defaultdict(list)
    for (m, agent, dim, key), v in dimension_sums(rows, lambda first: minute_of(first, kind)).items():
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
    for (b, agent, dim, _key), v in lists.items():
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


# (proto, src_port, dst_port, service port) of docs/api.md's rule; None: not ranked.
SERVICE_CASES = [
    (6, 51000, 443, 443), (6, 443, 51000, 443),           # a client's request and the server's reply
    (17, 5353, 53, 53),                                   # both sides services (5353 is mdns): the lower
    (17, 5000, 6000, 5000), (17, 6000, 5000, 5000),       # neither: the lower
    (6, 45000, 3306, 3306), (6, 3306, 45000, 3306),       # registered service above 1024 (mysql)
    (6, 8080, 443, 443), (6, 0, 50000, 0), (132, 38412, 2905, 2905),
    (1, 0, 2048, None), (58, 0, 32768, None), (47, 0, 0, None),     # ICMP, ICMPv6, GRE: no ports
]
