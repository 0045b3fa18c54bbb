"""Every Grafana panel and variable query, expanded as Grafana does, runs on real stores and returns rows.

Two agents replay generated traffic (benign sessions and crafted attacks) into a real collector
with the postgresql and influxdb writers, GeoIP enrichment (small .mmdb files) and detection;
the rollups are then maintained. Each dashboard's variables are resolved by running their own
queries, then each panel query is expanded with tests/support/grafana.py over the data's time range and
run: for PostgreSQL panels at the four rollup resolutions (the interval picks the table), and again
with the filter variables (source, destination, protocol, port) set. A set address must filter
(fewer rows, each matching, sums equal to the raw flows'), and every data link, expanded for a
returned row, must open a flow search whose clauses the API's grammar accepts.
"""
import datetime as dt
import ipaddress
import json
import socket
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from myason.api.grammar import parse_query
from tests.support import grafana as g
from tests.support import trafficgen as gen
from tests.support import collector as col
from tests.support.attacks import DETECT, attacks
from tests.support.rollups import ref_service_port
from tests.support.services import influx_query, influx_rows, wait_until
from tests.support.stores import pg_query

psycopg = pytest.importorskip("psycopg")
mmdb_writer = pytest.importorskip("mmdb_writer")
IPSet = pytest.importorskip("netaddr").IPSet

BOARDS = sorted((col.ROOT / "grafana" / "dashboards").glob("*.json"))
AGENTS = ("edge-1", "edge-2")
UTC = dt.timezone.utc
COUNTRIES = {"192.0.2.0/24": "US", "198.51.100.0/24": "DE", "203.0.113.0/24": "CN", "198.18.0.0/15": "BR",
             "100.64.0.0/10": "RU", "2001:db8::/32": "CZ"}
ASNS = {"192.0.2.0/24": 64500, "198.51.100.0/24": 64501, "203.0.113.0/24": 64502, "198.18.0.0/15": 64503,
        "100.64.0.0/10": 64504, "2001:db8::/32": 64505}
# Forced (range, max data points) per rollup resolution: the interval decides the table.
RESOLUTIONS = {"1m": 60000, "15m": 900000, "1h": 3600000, "1d": 86400000}
# The filter variables set for the sweep over every panel: values the generated traffic has on
# every flow dashboard (HTTPS between 10.1/16 clients and 192.0.2.80) and on the events one.
FILTERED = {"traffic.json": {"dst_net": "0.0.0.0/0", "proto": "tcp", "port": "443"},
            "top.json": {"dst_net": "0.0.0.0/0", "proto": "tcp", "port": "443"},
            "geo.json": {"dst_net": "0.0.0.0/0", "proto": "tcp", "port": "443"},
            "events.json": {"src_net": "203.0.113.0/24", "dst_net": "0.0.0.0/0"}}


def mmdb(path, kind, records):
    w = mmdb_writer.MMDBWriter(ip_version=6, database_type=kind, ipv4_compatible=True, description="myason test")
    for net, rec in records.items():
        w.insert_network(IPSet([net]), rec)
    w.to_db_file(str(path))
    return str(path)


def send_garbage(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        s.sendto(b"not a myason datagram", ("127.0.0.1", port))
    s.close()


@pytest.fixture(scope="module")
def stack(servers, tmp_path_factory):
    """Stores filled by a real collector; yields (pg dsn, influx url, influx db, start, end)."""
    if not (servers.pg_dsn and servers.influx_url):
        pytest.skip("PostgreSQL or InfluxDB not started")
    tmp = tmp_path_factory.mktemp("grafana")
    name = "t_%s" % uuid.uuid4().hex[:12]
    pg_query(servers.pg_dsn, "CREATE DATABASE %s" % name)
    dsn = psycopg.conninfo.make_conninfo(servers.pg_dsn, dbname=name)
    influx_db = "g_%s" % uuid.uuid4().hex[:10]
    geo = {"country_database": mmdb(tmp / "c.mmdb", "GeoLite2-Country",
                                    {n: {"country": {"iso_code": c}} for n, c in COUNTRIES.items()}),
           "asn_database": mmdb(tmp / "a.mmdb", "GeoLite2-ASN",
                                {n: {"autonomous_system_number": mmdb_writer.MmdbU32(a),
                                     "autonomous_system_organization": "AS-%d" % a} for n, a in ASNS.items()})}
    t0 = time.time() - 300
    pcaps = {AGENTS[0]: tmp / "a.pcap", AGENTS[1]: tmp / "b.pcap"}
    gen.write_pcap(pcaps[AGENTS[0]], attacks(t0) + [(t0 + 40 + t - gen.T0, p) for t, p in gen.scenario(seed=2)])
    gen.write_pcap(pcaps[AGENTS[1]], [(t0 + 5 + t - gen.T0, p) for t, p in gen.scenario(seed=3)])
    writers = [{"type": "postgresql", "dsn": dsn},
               {"type": "influxdb", "url": servers.influx_url, "database": influx_db, "instance": "gtest",
                "state_file": str(tmp / "influx.state")}]
    c = col.Collector(tmp / "c", writers, agents=AGENTS, enrich={"local_networks": ["10.0.0.0/8"], "geoip": geo},
                      detect=DETECT, node_name="org.example.test", health_interval=1.0, instance="gtest-node")
    exported = 0
    with c:
        for agent in AGENTS:
            out = tmp / ("%s.csv" % agent)
            col.run_agent(c.agent_conf(agent), [pcaps[agent]], output=out)
            exported += sum(1 for _ in open(out)) - 1
        send_garbage(c.port)
        wait_until(lambda: pg_query(dsn, "SELECT count(*) FROM flows")[0][0] >= exported, timeout=60,
                   ignore=(psycopg.Error,))
        wait_until(lambda: pg_query(dsn, "SELECT count(DISTINCT ts) FROM health_samples")[0][0] >= 3, timeout=30,
                   ignore=(psycopg.Error,))
        assert c.stop() == 0, c.log()
    # Events land at shutdown (detector windows close); the flows' minutes are rolled up now with
    # a clock days ahead, so every coarse bucket counts as closed and gets its top-N lists.
    from myason.store.rollup_maintain import maintain
    with psycopg.connect(dsn, autocommit=True) as conn:
        maintain(conn, now=time.time() + 3 * 86400)
    assert pg_query(dsn, "SELECT count(*) FROM events")[0][0] >= 5
    assert pg_query(dsn, "SELECT count(*) FROM rollup_top_1d")[0][0] > 0
    start = dt.datetime.fromtimestamp(t0 - 120, UTC)
    end = dt.datetime.fromtimestamp(time.time() + 60, UTC)
    yield dsn, servers.influx_url, influx_db, start, end
    try:
        pg_query(servers.pg_dsn, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    except psycopg.Error:
        pass


def load(path):
    return json.loads(Path(path).read_text())


def datasource_type(ref):
    return ref["type"]


def run(stack, ds_type, text, start, end, variables, max_dp=1000, min_interval=None):
    """Expand one query as Grafana would and run it; returns (expanded text, rows)."""
    dsn, url, db = stack[:3]
    if ds_type == "influxdb":
        q = g.expand_influxql(text, start, end, variables, max_dp, min_interval or "10s")
        answer = influx_query(url, q, db=db, epoch="ms")
        errors = [r.get("error") for r in answer.get("results", []) if r.get("error")]
        assert not errors, (q, errors)
        return q, [list(r.values()) for r in influx_rows(answer)]
    q = g.expand_sql(text, start, end, variables, max_dp, min_interval or "1m")
    return q, pg_query(dsn, q)


def resolve_variables(stack, board, start, end, pick_first=False, values=None):
    """Run the dashboard's variable queries in order, as Grafana does on load.

    values: what the user typed into text box variables (the others keep their defaults).
    """
    variables = {}
    for model in board["templating"]["list"]:
        if model["type"] == "custom":
            options = [o.strip() for o in model["query"].split(",")]
            variables[model["name"]] = g.variable_from_model(model, options, model["current"]["value"])
            continue
        if model["type"] in ("textbox", "constant"):
            value = (values or {}).get(model["name"], model["query"])
            variables[model["name"]] = g.variable_from_model(model, [value], value)
            continue
        q, rows = run(stack, datasource_type(model["datasource"]), model["query"], start, end, variables)
        options = [str(r[0]) for r in rows]
        assert options, "variable %s has no options: %s" % (model["name"], q)
        current = [options[0]] if pick_first and model.get("multi") else None
        variables[model["name"]] = g.variable_from_model(model, options, current)
    return variables


def has_values(rows):
    """At least one row with a non-null value besides a time column."""
    return any(any(v is not None for v in row[1:] or row) for row in rows)


def panel_cases():
    for path in BOARDS:
        board = load(path)
        for panel in g.iter_panels(board):
            for t in panel["targets"]:
                yield pytest.param(path.name, panel["id"], t["refId"], id="%s-%d-%s" % (path.stem, panel["id"],
                                                                                       t["refId"]))


def find(board_name, panel_id, ref):
    board = load(col.ROOT / "grafana" / "dashboards" / board_name)
    panel = next(p for p in g.iter_panels(board) if p["id"] == panel_id)
    target = next(t for t in panel["targets"] if t["refId"] == ref)
    return board, panel, target


@pytest.mark.parametrize("board_name, panel_id, ref", list(panel_cases()))
def test_panel_query_returns_rows(stack, board_name, panel_id, ref):
    start, end = stack[3], stack[4]
    board, panel, target = find(board_name, panel_id, ref)
    ds = datasource_type(target["datasource"])
    text = target.get("rawSql") or target["query"]
    for pick_first in (False, True):
        variables = resolve_variables(stack, board, start, end, pick_first)
        q, rows = run(stack, ds, text, start, end, variables, min_interval=panel.get("interval"))
        assert rows and has_values(rows), "%s / %s (first options: %s): no rows\n%s" % (
            board["title"], panel["title"], pick_first, q)
    if board_name in FILTERED:
        variables = resolve_variables(stack, board, start, end, values=FILTERED[board_name])
        q, rows = run(stack, ds, text, start, end, variables, min_interval=panel.get("interval"))
        if ds == "influxdb":
            # InfluxDB has no address or port series: the panel goes empty rather than unfiltered.
            assert not has_values(rows), "%s / %s ignores the filters\n%s" % (board["title"], panel["title"], q)
        else:
            assert rows and has_values(rows), "%s / %s (filtered): no rows\n%s" % (board["title"], panel["title"], q)
    if ds == "influxdb" or "rollup_" not in text:
        return
    # The same panel over two days around the data, at each rollup resolution.
    wide_start, wide_end = start - dt.timedelta(days=1), start + dt.timedelta(days=1)
    variables = resolve_variables(stack, board, wide_start, wide_end)
    span_ms = (wide_end - wide_start).total_seconds() * 1000
    for res, ms in RESOLUTIONS.items():
        max_dp = max(1, int(span_ms / ms))
        assert g.calculate_interval(wide_start, wide_end, max_dp, panel.get("interval"))[1] == ms
        q, rows = run(stack, ds, text, wide_start, wide_end, variables, max_dp, panel.get("interval"))
        assert rows and has_values(rows), "%s / %s at %s: no rows\n%s" % (board["title"], panel["title"], res, q)


def test_traffic_totals_agree_between_rollups_influxdb_and_raw_flows(stack):
    """The traffic dashboard's numbers are the stored flows' numbers, at every resolution."""
    dsn, url, db, start, end = stack
    board = load(col.ROOT / "grafana" / "dashboards" / "traffic.json")
    variables = resolve_variables(stack, board, start, end)
    raw_bytes = pg_query(dsn, "SELECT sum(bytes) FROM flows")[0][0]
    panel = next(p for p in board["panels"] if p["title"] == "Bytes in range")
    _, rows = run(stack, "grafana-postgresql-datasource", panel["targets"][0]["rawSql"], start, end, variables)
    assert rows[0][0] == raw_bytes
    wide_start, wide_end = start - dt.timedelta(days=1), start + dt.timedelta(days=1)
    for ms in RESOLUTIONS.values():
        span = (wide_end - wide_start).total_seconds() * 1000
        _, rows = run(stack, "grafana-postgresql-datasource", panel["targets"][0]["rawSql"], wide_start, wide_end,
                      variables, max(1, int(span / ms)))
        assert rows[0][0] == raw_bytes
    answer = influx_rows(influx_query(url, 'SELECT sum("bytes") FROM "flows"', db=db))
    assert answer[0]["sum"] == raw_bytes


def panel_rows(stack, board_name, title, values=None, **pick):
    board = load(col.ROOT / "grafana" / "dashboards" / board_name)
    variables = resolve_variables(stack, board, stack[3], stack[4], values=values)
    for name, value in pick.items():
        variables[name].current = value
    panel = next(p for p in g.iter_panels(board) if p["title"] == title)
    t = panel["targets"][0]
    return run(stack, datasource_type(t["datasource"]), t.get("rawSql") or t["query"], stack[3], stack[4],
               variables, min_interval=panel.get("interval"))[1]


def series(name):
    """A per-second series' name without the range total the dashboards append ("tcp (12 MB)")."""
    return name.rsplit(" (", 1)[0]


def test_panels_show_the_traffic_that_was_sent(stack):
    """Spot checks: the keys the generated traffic must produce appear where they belong."""
    srcs = {r[0] for r in panel_rows(stack, "top.json", "Top source addresses", top="50")}
    assert {"203.0.113.66", "203.0.113.9", "198.18.0.1"} <= srcs
    only2 = {r[0] for r in panel_rows(stack, "top.json", "Top source addresses", agent=["edge-2"], top="50")}
    assert only2 and not only2 & {"203.0.113.66", "203.0.113.9"}          # the attacks came from edge-1
    ports = {r[0] for r in panel_rows(stack, "top.json", "Top service ports", top="50")}
    assert {"22", "53", "80", "443"} <= ports
    raw_ports = {r[0] for r in panel_rows(stack, "top.json", "Top destination ports (raw)", top="50")}
    assert {"22", "53", "80", "443"} <= raw_ports
    countries = {r[0] for r in panel_rows(stack, "geo.json", "Destinations by country", top="50")}
    assert {"US", "DE"} <= countries
    asns = {r[0] for r in panel_rows(stack, "geo.json", "Top source AS", top="50")}
    assert {"AS64502", "AS64503"} <= asns
    cats = {r[0] for r in panel_rows(stack, "events.json", "Events by category")}
    assert cats == {"Recon.Scanning", "Attempt.Login", "Availability.DoS", "Intrusion.Botnet"}
    protos = {series(r[1]) for r in panel_rows(stack, "traffic.json", "Bits/s by protocol")}
    assert {"tcp", "udp", "icmp"} <= protos
    directions = {series(r[1]) for r in panel_rows(stack, "traffic.json", "Packets/s by direction")}
    assert {"inbound", "outbound"} <= directions
    rejects = {r[1] for r in panel_rows(stack, "health.json", "Rejects by reason")}
    assert rejects, "the garbage datagrams must show as a reject reason"
    agents = {r[0] for r in panel_rows(stack, "health.json", "Agents")}
    assert agents == set(AGENTS)


def test_port_panels_rank_service_ports_and_the_raw_panel_destination_ports(stack):
    """Replies count for their service in the service-port panels; their ephemeral ports only in the raw one.

    The generated traffic has flows whose service port is not their destination port: every
    reply (80, 443, 22, 53 -> the client's 40000+, 50000+, 20000+ port) and a UDP flow 5000 -> 6000
    (neither qualifies: the lower, 5000). The five heavy service ports are the only ones with
    more than a bare SYN's 40 bytes in any minute, so they are in every minute's list and their
    sums are exact: the reference is computed from the raw flows with the rule restated in
    tests/support/rollups.py.
    """
    dsn = stack[0]
    ref, raw_dst, replies = {}, {}, set()
    for proto, sport, dport, nbytes in pg_query(dsn, "SELECT proto, src_port, dst_port, bytes FROM flows"):
        raw_dst[str(dport)] = raw_dst.get(str(dport), 0) + nbytes
        port = ref_service_port(proto, sport, dport)
        if port is None:
            continue
        ref[str(port)] = ref.get(str(port), 0) + nbytes
        if port != dport:
            replies.add(str(dport))
    assert {"40000", "20000", "6000"} <= replies          # the data has what this test is about
    service = {r[0]: r[1] for r in panel_rows(stack, "top.json", "Top service ports", top="50")}
    raw = {r[0]: r[1] for r in panel_rows(stack, "top.json", "Top destination ports (raw)", top="50")}
    for port in ("22", "53", "80", "443", "5000"):
        assert service[port] == ref[port], port
    for port in ("22", "53", "80", "443"):
        # The replies' bytes count for the service, not under the port as a destination; the raw
        # sums are lower bounds (a crowded minute's raw list may cut a port), the service sums exact.
        assert raw.get(port, 0) <= raw_dst[port] < service[port], port
    assert set(service) <= set(ref) and not set(service) & (replies - set(ref))
    assert set(raw) & (replies - set(ref)), "the raw panel shows the replies' ephemeral destination ports"
    best = sorted(ref, key=lambda k: -ref[k])[:5]
    assert ref[best[-1]] > max(v for k, v in ref.items() if k not in best)   # no tie for the fifth
    names = {series(r[1]) for r in panel_rows(stack, "top.json", "Top 5 service ports over time")}
    assert names == {"port %s" % k for k in best}


def test_per_second_series_carry_their_range_total(stack):
    """Legends show min/max/mean of a rate; the name carries its true total, equal to the raw flows'."""
    dsn = stack[0]
    raw = dict(pg_query(dsn, "SELECT CASE proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp'"
                             " WHEN 58 THEN 'icmpv6' ELSE proto::text END, sum(packets) FROM flows GROUP BY 1"))
    names = {r[1] for r in panel_rows(stack, "traffic.json", "Packets/s by protocol")}
    assert names == {"%s (%d packets)" % (k, v) for k, v in raw.items()}
    flows = panel_rows(stack, "traffic.json", "Flows per interval, total and by protocol")
    count = pg_query(dsn, "SELECT count(*) FROM flows")[0][0]
    assert sum(r[2] for r in flows if r[1] == "total") == count == sum(r[2] for r in flows if r[1] != "total")
    attackers = panel_rows(stack, "events.json", "Attackers: distinct sources per interval")
    assert {r[1] for r in attackers} >= {"all categories", "Recon.Scanning"}


def in_net(address, net):
    return ipaddress.ip_address(address) in ipaddress.ip_network(net, strict=False)


def raw_sum(dsn, column, where, *params):
    return pg_query(dsn, "SELECT coalesce(sum(%s), 0) FROM flows WHERE %s" % (column, where), params)[0][0]


def test_address_filters_filter_every_kind_of_panel(stack):
    """A source or destination address / CIDR narrows the panels to the matching flows, exactly."""
    dsn = stack[0]
    every = panel_rows(stack, "top.json", "Top source addresses", top="50")
    one = panel_rows(stack, "top.json", "Top source addresses", values={"src_net": "203.0.113.66"}, top="50")
    assert 0 < len(one) < len(every) and [r[0] for r in one] == ["203.0.113.66"]
    assert one[0][1] == raw_sum(dsn, "bytes", "src_ip = %s::inet", "203.0.113.66")
    every = panel_rows(stack, "top.json", "Top destination addresses", top="50")
    net = panel_rows(stack, "top.json", "Top destination addresses", values={"dst_net": "192.0.2.0/24"}, top="50")
    assert 0 < len(net) < len(every) and all(in_net(r[0], "192.0.2.0/24") for r in net)
    talkers = panel_rows(stack, "top.json", "Top talkers (source or destination)",
                         values={"src_net": "10.0.0.0/8", "dst_net": "192.0.2.53"}, top="50")
    assert {r[0] for r in talkers} >= {"192.0.2.53"} and all(
        r[0] == "192.0.2.53" or in_net(r[0], "10.0.0.0/8") for r in talkers)
    v6 = panel_rows(stack, "top.json", "Top source addresses", values={"src_net": "2001:db8::/32"}, top="50")
    assert v6 and all(in_net(r[0], "2001:db8::/32") for r in v6)
    # Totals: the stats equal the raw flows' sums under the same filter, with protocol and port.
    cases = [({"src_net": "10.0.0.0/8"}, "src_ip <<= %s::inet", ("10.0.0.0/8",)),
             ({"dst_net": "192.0.2.80"}, "dst_ip <<= %s::inet", ("192.0.2.80",)),
             ({"port": "53"}, "53 IN (src_port, dst_port)", ()),
             ({"proto": "icmp"}, "proto = 1", ()),
             ({"src_net": "10.0.0.0/8", "proto": "tcp", "port": "443"},
              "src_ip <<= %s::inet AND proto = 6 AND 443 IN (src_port, dst_port)", ("10.0.0.0/8",))]
    total = raw_sum(dsn, "bytes", "true")
    for values, where, params in cases:
        want = raw_sum(dsn, "bytes", where, *params)
        assert 0 < want < total, values
        assert panel_rows(stack, "traffic.json", "Bytes in range", values=values)[0][0] == want, values
    countries = panel_rows(stack, "geo.json", "Sources by country", values={"src_net": "203.0.113.0/24"})
    assert [r[0] for r in countries] == ["CN"]
    assert [r[0] for r in panel_rows(stack, "geo.json", "Top source AS", values={"src_net": "203.0.113.0/24"})] \
        == ["AS64502"]
    # Events: the source filter keeps the events with a source in the network.
    every = panel_rows(stack, "events.json", "Top event sources")
    one = panel_rows(stack, "events.json", "Top event sources", values={"src_net": "203.0.113.9"})
    assert 0 < len(one) < len(every) and {r[0] for r in one} == {"203.0.113.9"}


def test_a_bad_filter_value_is_a_clear_error(stack):
    """A typo in an address or port fails the panel with PostgreSQL's message naming the value."""
    for values, word in (({"src_net": "10.0.0.300"}, "inet"), ({"port": "https"}, "integer")):
        with pytest.raises(psycopg.errors.InvalidTextRepresentation, match=word):
            panel_rows(stack, "traffic.json", "Bytes in range", values=values)


def named_rows(dsn, sql):
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def link_cases():
    for path in BOARDS:
        for panel in g.iter_panels(load(path)):
            for link in panel["fieldConfig"]["defaults"].get("links", []):
                yield pytest.param(path.name, panel["id"], link["url"], id="%s-%d" % (path.stem, panel["id"]))


@pytest.mark.parametrize("board_name, panel_id, url", list(link_cases()))
def test_data_links_open_a_flow_search_the_api_accepts(stack, board_name, panel_id, url):
    """Each data link, expanded for rows of its panel, is the page's deep link with valid clauses."""
    dsn, start, end = stack[0], stack[3], stack[4]
    board, panel, target = find(board_name, panel_id, "A")
    for pick_first, values in ((False, {}), (True, {}), (False, FILTERED.get(board_name, {}))):
        variables = resolve_variables(stack, board, start, end, pick_first, values=values)
        q = g.expand_sql(target["rawSql"], start, end, variables, 1000, panel.get("interval") or "1m")
        rows = named_rows(dsn, q)
        assert rows, q
        for row in rows[:3]:
            href = g.expand_link(url, variables, {k: "" if v is None else str(v) for k, v in row.items()}, start, end)
            parts = urllib.parse.urlsplit(href)
            assert "%s://%s" % (parts.scheme, parts.netloc) == "http://127.0.0.1:8080" and parts.path == "/"
            fragment = dict(kv.split("=", 1) for kv in parts.fragment.split("&"))
            query = parse_query(urllib.parse.unquote(fragment["q"]))
            clauses = dict(query.clauses)
            assert clauses["after"].startswith(start.strftime("%Y-%m-%dT%H:%M:%S")), href
            assert clauses["before"].startswith(end.strftime("%Y-%m-%dT%H:%M:%S")), href
            clicked = [c for c in query.clauses if c[0] in ("host", "src", "dst", "port")]
            if "__data.fields" in url:
                assert any(str(v) in (c[1] for c in clicked) for v in row.values()), (href, row)
            if pick_first and "flow_clauses" in variables:
                assert ("agent", AGENTS[0]) in query.clauses, href      # one agent selected: its clause
            if values.get("port"):
                assert ("port", values["port"]) in query.clauses and ("proto", "6") in query.clauses, href
                assert ("net", values["dst_net"]) in query.clauses, href
