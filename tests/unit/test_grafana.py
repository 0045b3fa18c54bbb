"""tests/support/grafana.py (Grafana query expansion) against the expectations of Grafana's own tests
(macros_test.go, rangeutil, query_test.go)."""
import datetime as dt

import pytest

from tests.support import grafana as g

UTC = dt.timezone.utc
FROM = dt.datetime(2018, 4, 12, 18, 0, tzinfo=UTC)
TO = FROM + dt.timedelta(minutes=5)


def sql(text, start=FROM, end=TO, variables=None, **kw):
    return g.expand_sql(text, start, end, variables, **kw)


@pytest.mark.parametrize("text, want", [
    ("select $__time(time_column)", 'select time_column AS "time"'),
    ("select min($__time(time_column))", 'select min(time_column AS "time")'),
    ("WHERE $__timeFilter(time_column)",
     "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"),
    ("select $__timeFrom()", "select '2018-04-12T18:00:00Z'"),
    ("select $__timeTo()", "select '2018-04-12T18:05:00Z'"),
    ("SELECT $__timeGroup(time_column,'5m'), value",
     'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'),
    ("SELECT $__timeGroup(time_column,'5m') as time, value",
     "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"),
    ("SELECT $__timeGroup(time_column,'5m')", "SELECT floor(extract(epoch from time_column)/300)*300"),
    ("$__timeGroupAlias(time_column , '5m')", 'floor(extract(epoch from time_column)/300)*300 AS "time"'),
    ("select $__unixEpochFilter(time)", "select time >= 1523556000 AND time <= 1523556300"),
    ("select $__unixEpochNanoFilter(time)",
     "select time >= 1523556000000000000 AND time <= 1523556300000000000"),
    ("SELECT $__unixEpochGroup(time_column+time_adjustment,'5m')",
     "SELECT floor((time_column+time_adjustment)/300)*300"),
    ("SELECT $__unixEpochFrom(), $__unixEpochTo()", "SELECT 1523556000, 1523556300"),
])
def test_postgres_macros_as_grafana_tests_expect(text, want):
    assert sql(text) == want


def test_fractional_times_and_large_intervals_format_like_go():
    start = dt.datetime(1960, 2, 1, 7, 0, 0, 500000, tzinfo=UTC)
    assert g.rfc3339nano(start) == "1960-02-01T07:00:00.5Z"
    assert sql("$__timeGroup(t, '1w')") == "floor(extract(epoch from t)/604800)*604800"
    assert sql("$__timeGroup(t, '30d')") == "floor(extract(epoch from t)/2.592e+06)*2.592e+06"
    assert sql("$__timeGroup(t, '1h30m')") == "floor(extract(epoch from t)/5400)*5400"
    assert sql("$__timeGroup(t, '20ms')") == "floor(extract(epoch from t)/0.02)*0.02"
    with pytest.raises(g.GrafanaError):
        sql("$__timeGroup(t)")
    with pytest.raises(g.GrafanaError):
        sql("$__nope(t)")


@pytest.mark.parametrize("raw_ms, want", [(5, 1), (12, 10), (1000, 1000), (61000, 60000), (100000, 120000),
                                          (800000, 900000), (3700000, 3600000), (90000000, 86400000),
                                          (700000000, 604800000), (4e9, g.YEAR_MS)])
def test_round_interval(raw_ms, want):
    assert g.round_interval(raw_ms) == want


def test_interval_from_range_and_min_interval():
    hour = dt.timedelta(hours=1)
    assert g.calculate_interval(FROM, FROM + hour, 1000) == ("5s", 5000)
    assert g.calculate_interval(FROM, FROM + hour, 1000, "1m") == ("1m", 60000)
    assert g.calculate_interval(FROM, FROM + 24 * 30 * hour, 1000, "1m") == ("30m", 1800000)
    assert g.calculate_interval(FROM, FROM + 24 * 365 * hour, 100) == ("1d", 86400000)
    assert [g.format_interval(ms) for ms in (500, 10000, 120000, 7200000, 86400000 * 7, g.YEAR_MS)] == [
        "500ms", "10s", "2m", "2h", "7d", "1y"]
    assert g.seconds_to_hms(90) == "1m" and g.seconds_to_hms(0.25) == "250ms"


def test_interval_variables_in_sql():
    q = sql("SELECT $__timeGroupAlias(b, $__interval), x / $__interval_ms, ${__interval}",
            FROM, FROM + dt.timedelta(days=2))
    assert q == 'SELECT floor(extract(epoch from b)/120)*120 AS "time", x / 120000, 2m'


def test_sql_variables_single_multi_all_and_custom_all():
    agent = g.Variable("agent", "it's", multi=False)
    assert sql("agent = '$agent'", variables={"agent": agent}) == "agent = 'it''s'"
    many = g.Variable("agent", ["a", "b'c"], multi=True, include_all=True, options=["a", "b'c", "d"])
    assert sql("agent IN ($agent)", variables={"agent": many}) == "agent IN ('a','b''c')"
    one = g.Variable("agent", "a", multi=True, include_all=True, options=["a", "d"])
    assert sql("agent IN ($agent)", variables={"agent": one}) == "agent IN ('a')"
    every = g.Variable("agent", g.ALL, multi=True, include_all=True, options=["a", "d"])
    assert sql("agent IN ($agent) OR [[agent]] OR ${agent}", variables={"agent": every}) == \
        "agent IN ('a','d') OR 'a','d' OR 'a','d'"
    custom = g.Variable("agent", g.ALL, multi=True, include_all=True, all_value="%", options=["a"])
    assert sql("agent LIKE '$agent'", variables={"agent": custom}) == "agent LIKE '%'"
    assert sql("${agent:csv}|${agent:pipe}|${agent:regex}|${agent:singlequote}",
               variables={"agent": many}) == "a,b'c|a|b'c|(a|b'c)|'a','b\\'c'"
    assert sql("$unknown $__timeFrom()") == "$unknown '2018-04-12T18:00:00Z'"


def test_influxql_time_filter_and_intervals():
    q = g.expand_influxql('SELECT sum("bytes") * 8000 / $__interval_ms FROM "flows" WHERE $timeFilter '
                          'GROUP BY time($__interval), time($interval)', FROM, FROM + dt.timedelta(hours=1))
    assert q == ('SELECT sum("bytes") * 8000 / 10000 FROM "flows" WHERE time >= 1523556000000ms and '
                 'time <= 1523559600000ms GROUP BY time(10s), time(10s)')


def test_influxql_regex_variables():
    many = g.Variable("agent", ["edge.1", "b/2"], multi=True, include_all=True, options=["edge.1", "b/2"])
    q = '"agent" =~ /^$agent$/'
    assert g.expand_influxql(q, FROM, TO, {"agent": many}) == '"agent" =~ /^(edge\\.1|b\\/2)$/'
    every = g.Variable("agent", g.ALL, multi=True, include_all=True, options=["x", "y"])
    assert g.expand_influxql(q, FROM, TO, {"agent": every}) == '"agent" =~ /^(x|y)$/'
    single = g.Variable("agent", "a.b")
    assert g.expand_influxql(q, FROM, TO, {"agent": single}) == '"agent" =~ /^a\\.b$/'
    assert g.expand_influxql("\"agent\" = '$agent'", FROM, TO, {"agent": single}) == "\"agent\" = 'a.b'"
    # Grafana leaves numeric-looking single values alone (parseFloat succeeds).
    assert g.expand_influxql(q, FROM, TO, {"agent": g.Variable("agent", "10.0.0.1", multi=True)}) == \
        '"agent" =~ /^10.0.0.1$/'


def test_variable_from_model_defaults_to_all_or_first():
    v = g.variable_from_model({"name": "agent", "multi": True, "includeAll": True}, ["a", "b"])
    assert v.current == g.ALL and v.resolved() == ["a", "b"]
    w = g.variable_from_model({"name": "top", "type": "custom"}, ["10", "25"])
    assert w.current == "10" and not w.multi
