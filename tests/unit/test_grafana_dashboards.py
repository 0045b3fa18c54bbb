"""grafana/: dashboards are valid, consistent with each other and with the provisioned data sources."""
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.support.grafana import iter_panels

ROOT = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
PANEL_TYPES = {"timeseries", "table", "bargauge", "piechart", "geomap", "stat"}
UNITS = {"bps", "pps", "bytes", "short", "s"}
NEEDS_UNIT = {"timeseries", "stat", "bargauge"}
SQL_TIME_MACROS = ("$__timeFilter(", "$__timeFrom()", "$__timeTo()", "$__unixEpochFilter(")
# Names Grafana itself provides: built-in variables and the InfluxQL/SQL macros.
BUILTIN = re.compile(r"^(__\w+|timeFilter|interval)$")
VAR_REF = re.compile(r"\$(\w+)|\[\[(\w+?)(?::\w+)?\]\]|\$\{(\w+)(?:\.[^:^}]+)?(?::[^}]+)?\}", re.ASCII)
ENV_REF = re.compile(r"\$\{?(\w+)\}?")


def load(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def datasources():
    conf = yaml.safe_load((ROOT / "provisioning" / "datasources" / "myason.yaml").read_text())
    return {ds["uid"]: ds for ds in conf["datasources"]}


def targets(board):
    for panel in iter_panels(board):
        for t in panel.get("targets", []):
            yield panel, t


def test_there_are_the_five_dashboards_with_unique_uids():
    boards = [load(p) for p in DASHBOARDS]
    assert {b["uid"] for b in boards} == {"myason-traffic", "myason-top", "myason-geo", "myason-events",
                                         "myason-health"}
    assert len({b["uid"] for b in boards}) == len(boards) and len({b["title"] for b in boards}) == len(boards)
    for b in boards:
        assert b["schemaVersion"] >= 39 and b.get("id") is None   # ids are Grafana's; uids are ours


def test_provisioning_files(datasources):
    assert set(datasources) == {"myason-postgresql", "myason-influxdb"}
    pg, influx = datasources["myason-postgresql"], datasources["myason-influxdb"]
    assert pg["type"] == "grafana-postgresql-datasource" and influx["type"] == "influxdb"
    assert influx["jsonData"]["version"] == "InfluxQL"
    # Connection details come from the environment (Grafana's $VAR interpolation), never the file.
    for ds in datasources.values():
        for value in (ds["url"], ds["user"], ds["secureJsonData"]["password"]):
            assert re.fullmatch(r"\$\{MYASON_\w+\}", value), value
    assert re.fullmatch(r"\$\{MYASON_\w+\}", pg["jsonData"]["database"])
    assert re.fullmatch(r"\$\{MYASON_\w+\}", influx["jsonData"]["dbName"])
    providers = yaml.safe_load((ROOT / "provisioning" / "dashboards" / "myason.yaml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    assert ENV_REF.fullmatch(providers[0]["options"]["path"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_consistency(path, datasources):
    board = load(path)
    panels = list(iter_panels(board))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        unit = panel["fieldConfig"]["defaults"].get("unit")
        if panel["type"] in NEEDS_UNIT:
            assert unit in UNITS, "%s: unit %r" % (panel["title"], unit)
        for o in panel["fieldConfig"]["overrides"]:
            for prop in o["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in UNITS
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        assert datasource_uid_ok(panel["datasource"], datasources)
    for panel, t in targets(board):
        ds = datasources[t["datasource"]["uid"]]
        assert t["datasource"] == panel["datasource"]
        if ds["type"] == "influxdb":
            text = t["query"]
            assert t["rawQuery"] is True and "$timeFilter" in text, panel["title"]
            assert re.search(r'FROM "(flows|events)"', text), panel["title"]
        else:
            text = t["rawSql"]
            assert t["rawQuery"] is True and t["format"] in ("time_series", "table")
            assert any(m in text for m in SQL_TIME_MACROS), panel["title"]
            # Newer Grafana strips SQL comments before expanding macros; keep queries free of them.
            assert "--" not in text and "/*" not in text
            if t["format"] == "time_series":
                assert '$__timeGroupAlias(' in text and "ORDER BY 1" in text, panel["title"]
        assert referenced(text) <= set(variables), "%s: %s" % (panel["title"], referenced(text) - set(variables))
    for v in variables.values():
        if v["type"] == "query":
            assert datasource_uid_ok(v["datasource"], datasources)
            assert referenced(v["query"]) <= set(variables) - {v["name"]}
    for url in link_urls(board):
        assert referenced(url) <= set(variables), url
    # Every variable is used somewhere (a stale one would only confuse).
    used = set().union(*(referenced(t.get("rawSql") or t.get("query")) for _, t in targets(board)),
                       *(referenced(v.get("query", "")) for v in variables.values() if v["type"] == "query"),
                       *(referenced(url) for url in link_urls(board)))
    assert set(variables) <= used


def link_urls(board):
    """The URL templates of the dashboard's links and of its panels' data links."""
    urls = [link.get("url", "") for link in board.get("links", [])]
    for panel in iter_panels(board):
        urls += [link["url"] for link in panel["fieldConfig"]["defaults"].get("links", [])]
    return urls


def datasource_uid_ok(ref, datasources):
    return isinstance(ref, dict) and ref.get("uid") in datasources and ref.get("type") == datasources[ref["uid"]]["type"]


def referenced(text):
    names = set()
    for m in VAR_REF.finditer(text or ""):
        name = m.group(1) or m.group(2) or m.group(3)
        if not BUILTIN.match(name):
            names.add(name)
    return names


def test_both_datasources_and_the_agent_and_interface_variables_are_used():
    kinds = set()
    names = set()
    for path in DASHBOARDS:
        board = load(path)
        kinds |= {t["datasource"]["type"] for _, t in targets(board)}
        names |= {v["name"] for v in board["templating"]["list"]}
    assert kinds == {"grafana-postgresql-datasource", "influxdb"}
    assert {"agent", "interface"} <= names
    traffic = load(ROOT / "dashboards" / "traffic.json")
    sql = " ".join(t.get("rawSql", "") for _, t in targets(traffic))
    assert all("rollup_%s" % r in sql for r in ("1m", "15m", "1h", "1d"))
    # The raw table is read only in the branch for an address or port filter (docs/grafana.md).
    branches = [b for _, t in targets(traffic)
                for b in re.findall(r"SELECT [^()]*? FROM flows WHERE ([^\n]*)", t.get("rawSql", ""))]
    assert branches and sql.count("FROM flows") == len(branches)
    assert all(b.startswith("'$src_net$dst_net$port' <> ''") for b in branches)


DIMENSION_REF = re.compile(r"dimension\s*(?:=\s*'(\w+)'|IN\s*\(([^)]*)\))")


def dimensions(sql):
    names = set()
    for m in DIMENSION_REF.finditer(sql):
        names |= {m.group(1)} if m.group(1) else {x.strip().strip("'") for x in m.group(2).split(",")}
    return names


def test_rollup_dimensions_exist_and_ports_rank_service_ports():
    """Dashboards name only dimensions the maintenance computes; ports rank by service port (docs/grafana.md).

    The raw destination ports (replies' ephemeral ports included) stay in one table titled "(raw)".
    """
    from myason.store.rollup import DIMENSIONS
    used = {}
    for path in DASHBOARDS:
        for panel, t in targets(load(path)):
            for d in dimensions(t.get("rawSql", "")):
                used.setdefault(d, set()).add((path.name, panel["title"]))
    assert set(used) <= set(DIMENSIONS), set(used) - set(DIMENSIONS)
    assert used["dst_port"] == {("top.json", "Top destination ports (raw)")}
    assert used["service_port"] == {("top.json", "Top service ports"), ("top.json", "Top 5 service ports over time")}


FILTERS = {"traffic.json": {"src_net", "dst_net", "proto", "port"}, "top.json": {"src_net", "dst_net", "proto", "port"},
           "geo.json": {"src_net", "dst_net", "proto", "port"}, "events.json": {"src_net", "dst_net"}}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_every_panel_of_a_flow_dashboard_takes_the_filter_variables(name):
    """Source, destination, protocol and port are text boxes (empty: any) applied to every query."""
    board = load(ROOT / "dashboards" / name)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for var in FILTERS[name]:
        assert variables[var]["type"] == "textbox" and variables[var]["query"] == "", var
    for panel, t in targets(board):
        assert FILTERS[name] <= referenced(t.get("rawSql") or t["query"]), panel["title"]


def test_data_links_open_the_flow_search_of_the_web_page():
    """Data links use the page's deep link (#q=clauses) under myason_url, over the dashboard's time range."""
    linked = {}
    for path in DASHBOARDS:
        board = load(path)
        variables = {v["name"]: v for v in board["templating"]["list"]}
        for panel in iter_panels(board):
            for link in panel["fieldConfig"]["defaults"].get("links", []):
                url = link["url"]
                assert url.startswith("${myason_url}/#q=") and link["targetBlank"] is True, url
                assert url.endswith("after%2F${__from:date:iso}%2Fbefore%2F${__to:date:iso}"), url
                linked.setdefault(path.name, set()).add(panel["title"])
        if path.name in linked:
            assert variables["myason_url"]["query"] == "http://127.0.0.1:8080"
    assert {"Top talkers (source or destination)", "Top service ports", "Top source addresses",
            "Top destination addresses"} <= linked["top.json"]
    assert {"Top event sources", "Top event targets"} <= linked["events.json"]
    assert len(linked["geo.json"]) == len(list(iter_panels(load(ROOT / "dashboards" / "geo.json"))))
