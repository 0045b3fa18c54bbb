"""The Docket path grammar: clauses, normalisation, canonical form and ids, errors."""
import pytest

from myason.api.grammar import GrammarError, parse_query, parse_time, query_id, resolve_time

NOW = 1700049600.0   # 2023-11-15 12:00:00 UTC


@pytest.mark.parametrize("path, canonical", [
    ("host/10.0.0.1", "host/10.0.0.1/limit/100"),
    ("/host/10.0.0.1/", "host/10.0.0.1/limit/100"),
    ("src/2001:DB8:0:0::1", "src/2001:db8::1/limit/100"),
    ("dst/192.0.2.7/limit/5", "dst/192.0.2.7/limit/5"),
    ("net/10.1.2.3/8", "net/10.0.0.0/8/limit/100"),
    ("net/2001:db8::/32", "net/2001:db8::/32/limit/100"),
    ("port/0443", "port/443/limit/100"),
    ("proto/TCP", "proto/6/limit/100"),
    ("proto/udp", "proto/17/limit/100"),
    ("proto/icmp", "proto/1/limit/100"),
    ("proto/58", "proto/58/limit/100"),
    ("agent/edge-1.example:7", "agent/edge-1.example:7/limit/100"),
    ("after/300s", "after/5m/limit/100"),
    ("after/90m", "after/90m/limit/100"),
    ("after/24h", "after/1d/limit/100"),
    ("before/14d", "before/2w/limit/100"),
    ("after/2023-11-15T10:00:00Z", "after/2023-11-15T10:00:00Z/limit/100"),
    ("after/2023-11-15T11:00:00+01:00", "after/2023-11-15T10:00:00Z/limit/100"),
    ("after/2023-11-15", "after/2023-11-15T00:00:00Z/limit/100"),
    ("after/1700042400", "after/2023-11-15T10:00:00Z/limit/100"),
    ("HOST/10.0.0.1/Limit/7", "host/10.0.0.1/limit/7"),
])
def test_canonical(path, canonical):
    assert parse_query(path).canonical == canonical


def test_order_and_duplicates_do_not_change_the_id():
    a = parse_query("port/80/host/10.0.0.1/after/1h/proto/tcp/limit/20")
    b = parse_query("limit/20/proto/6/after/60m/host/10.0.0.1/port/80/port/080")
    assert a.canonical == b.canonical == "host/10.0.0.1/port/80/proto/6/after/1h/limit/20"
    assert a.id == b.id == query_id(a.canonical)
    assert len(a.id) == 16 and int(a.id, 16) >= 0


def test_default_limit_is_explicit_in_the_canonical_form():
    assert parse_query("host/10.0.0.1").id == parse_query("host/10.0.0.1/limit/100").id
    assert parse_query("host/10.0.0.1").id != parse_query("host/10.0.0.1/limit/99").id
    assert parse_query("host/10.0.0.1", max_limit=50).limit == 50
    assert parse_query("host/10.0.0.1", default_limit=7).limit == 7


def test_several_clauses_of_one_kind_are_all_kept():
    q = parse_query("host/10.0.0.2/host/10.0.0.1")
    assert q.values("host") == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize("path, message", [
    ("", "empty query"),
    ("limit/5", "at least one clause"),
    ("bogus/1", "unknown clause 'bogus'"),
    ("host", "needs a value"),
    ("host/10.0.0.300", "not an IP address"),
    ("host/example.com", "not an IP address"),
    ("src/", "needs a value"),
    ("net/10.0.0.0", "net needs ADDR/PREFIX"),
    ("net/10.0.0.0/33", "not a network"),
    ("net/10.0.0.0/x", "net needs ADDR/PREFIX"),
    ("net/nothing/8", "not a network"),
    ("port/65536", "not a port"),
    ("port/-1", "not a port"),
    ("port/http", "not a port"),
    ("proto/tcpx", "not a protocol"),
    ("proto/256", "not a protocol"),
    ("agent/bad agent", "not an agent id"),
    ("agent/" + "a" * 65, "not an agent id"),
    ("after/5x", "not a time"),
    ("after/yesterday", "not a time"),
    ("before/2023-13-01", "not a time"),
    ("after/1h/after/2h", "after given twice"),
    ("host/10.0.0.1/limit/0", "limit must be between 1 and 10000"),
    ("host/10.0.0.1/limit/10001", "limit must be between 1 and 10000"),
    ("host/10.0.0.1/limit/ten", "limit must be"),
    ("host/10.0.0.1/limit/5/limit/6", "limit given twice"),
])
def test_errors(path, message):
    with pytest.raises(GrammarError, match=message.replace("(", r"\(")):
        parse_query(path)


def test_max_limit_from_config():
    assert parse_query("host/10.0.0.1/limit/500", max_limit=500).limit == 500
    with pytest.raises(GrammarError, match="between 1 and 500"):
        parse_query("host/10.0.0.1/limit/501", max_limit=500)


def test_resolve_time():
    assert resolve_time("5m", NOW) == NOW - 300
    assert resolve_time("2w", NOW) == NOW - 14 * 86400
    assert resolve_time(parse_time("2023-11-15T10:00:00Z"), NOW) == NOW - 7200
    assert resolve_time(parse_time("2023-11-15T10:00:00.250Z"), NOW) == NOW - 7199.75
