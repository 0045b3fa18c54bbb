"""myason.store.influxdb.retention: options, statements, and what is left alone when nothing changed."""
import pytest

from myason.errors import ConfigError
from myason.store.influxdb import retention as ir


def plan(**opts):
    return ir.parse_retention(opts)


def test_options_and_durations():
    p = plan(retention="30d", downsample=[{"every": "1h", "retention": "1y"}, {"every": "1d", "retention": 0}])
    assert p.retention == 30 * 86400
    assert [(lv.rp, lv.retention, lv.resample_for) for lv in p.levels] == [
        ("rp_1h", 365 * 86400, 7200), ("rp_1d", 0, 2 * 86400)]
    assert not plan() and plan(retention=0)
    assert [ir.influx_duration(s) for s in (0, 3600, 86400, 7 * 86400, 90, 365 * 86400)] == [
        "INF", "1h", "1d", "1w", "90s", "365d"]
    assert ir.go_seconds("720h0m0s") == 2592000 and ir.go_seconds("0s") == 0


@pytest.mark.parametrize("opts, key", [
    ({"retention": "10m"}, "retention"),
    ({"retention": "soon"}, "retention"),
    ({"downsample": {"every": "1h"}}, "downsample"),
    ({"downsample": [{"every": "1h", "keep": "1y"}]}, "downsample[0]"),
    ({"downsample": [{"every": "0"}]}, "downsample[0].every"),
    ({"downsample": [{"every": "1h", "retention": "30m"}]}, "downsample[0].retention"),
    ({"downsample": [{"every": "1h", "for": "30m"}]}, "downsample[0].for"),
    ({"retention": "1h", "downsample": [{"every": "1h"}]}, "downsample[0].for"),
    ({"downsample": [{"every": "1h"}, {"every": "60m"}]}, "downsample"),
])
def test_bad_options_name_the_key(opts, key):
    with pytest.raises(ConfigError) as e:
        ir.parse_retention(opts)
    assert e.value.key == key


def test_statements_from_nothing_then_nothing_to_do():
    p = plan(retention="30d", downsample=[{"every": "1h", "retention": "52w"}])
    todo = ir.statements("db", p, {"autogen": (0, True)}, {})
    assert todo[:2] == ['CREATE RETENTION POLICY "rp_raw" ON "db" DURATION 30d REPLICATION 1 DEFAULT',
                        'CREATE RETENTION POLICY "rp_1h" ON "db" DURATION 52w REPLICATION 1']
    assert todo[2] == ('CREATE CONTINUOUS QUERY "cq_flows_1h" ON "db" RESAMPLE EVERY 1h FOR 2h BEGIN '
                       'SELECT sum("bytes") AS "bytes", sum("packets") AS "packets", sum("flows") AS "flows" '
                       'INTO "db"."rp_1h"."flows" FROM "db"."rp_raw"."flows" GROUP BY time(1h), * END')
    assert 'sum("count") AS "count" INTO "db"."rp_1h"."events"' in todo[3] and len(todo) == 4
    # What InfluxDB reports back after running them (it re-prints queries without quotes).
    policies = {"autogen": (0, False), "rp_raw": (2592000, True), "rp_1h": (52 * 604800, False)}
    queries = {name: stmt.split(" BEGIN ")[0].replace('"', "") + " BEGIN " + stmt.split(" BEGIN ")[1].replace('"', "")
               for name, stmt in (("cq_flows_1h", todo[2]), ("cq_events_1h", todo[3]))}
    assert ir.statements("db", p, policies, queries) == []
    # A changed option alters the policy and replaces the continuous queries.
    p2 = plan(retention="20d", downsample=[{"every": "1h", "retention": "52w", "for": "3h"}])
    todo2 = ir.statements("db", p2, policies, queries)
    assert todo2[0] == 'ALTER RETENTION POLICY "rp_raw" ON "db" DURATION 20d REPLICATION 1 DEFAULT'
    assert todo2[1] == 'DROP CONTINUOUS QUERY "cq_flows_1h" ON "db"' and "FOR 3h" in todo2[2]


def test_without_raw_retention_the_default_policy_is_the_source():
    p = plan(downsample=[{"every": "1d"}])
    todo = ir.statements("my db", p, {}, {})
    assert todo[0] == 'CREATE RETENTION POLICY "rp_1d" ON "my db" DURATION INF REPLICATION 1'
    assert 'FROM "my db".."flows" GROUP BY time(1d), *' in todo[1]


class FakeInflux:
    """Just enough of /query for ensure(): policies and continuous queries of one database."""

    def __init__(self, racer=None):
        self.policies, self.cqs, self.ran, self.racer = {}, {}, [], racer

    def __call__(self, q):
        if q.startswith("SHOW RETENTION"):
            vals = [[n, "%dh0m0s" % (d // 3600), "1h0m0s", 1, dflt] for n, (d, dflt) in self.policies.items()]
            return {"results": [{"series": [{"columns": ["name", "duration", "shardGroupDuration", "replicaN",
                                                         "default"], "values": vals}]}]}
        if q.startswith("SHOW CONTINUOUS"):
            return {"results": [{"series": [{"name": "db", "columns": ["name", "query"],
                                             "values": [[n, t] for n, t in self.cqs.items()]}]}]}
        if self.racer:                     # another writer creates everything first
            racer, self.racer = self.racer, None
            ir.ensure_retention(racer, "db", PLAN)
            self.policies, self.cqs = racer.policies, racer.cqs
        name = q.split('"')[1]
        if q.startswith("CREATE") and (name in self.policies or name in self.cqs):
            raise RuntimeError("InfluxDB refused %s: %s already exists" % (q, name))
        self.ran.append(q)
        if "RETENTION POLICY" in q:
            text = q.split("DURATION ")[1].split()[0]
            secs = 0 if text == "INF" else ir.parse_retention({"retention": text}).retention
            self.policies[name] = (secs, q.endswith("DEFAULT"))
        elif q.startswith("CREATE CONTINUOUS"):
            self.cqs[name] = q
        return {"results": [{}]}


PLAN = ir.parse_retention({"retention": "30d", "downsample": [{"every": "1h"}]})


def test_ensure_is_idempotent_and_survives_a_concurrent_writer():
    server = FakeInflux()
    assert len(ir.ensure_retention(server, "db", PLAN)) == 4
    assert ir.ensure_retention(server, "db", PLAN) == []
    raced = FakeInflux(racer=FakeInflux())
    assert ir.ensure_retention(raced, "db", PLAN) == [] and raced.ran == []
    assert set(raced.cqs) == {"cq_flows_1h", "cq_events_1h"}
