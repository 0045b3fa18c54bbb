"""Issue 12, API items: each test performs the attack against an in-process app (or the part under
attack) and checks the bound; tests/integration/test_api_hardening.py does the same against a
real `myason api` process for the ones that need sockets, signals or PostgreSQL."""
import csv
import io
import os
import re
import stat
import time

import pytest
from fastapi.testclient import TestClient

from myason.api import queries, server
from myason.api.app import create_app
from myason.api.cache import Memo, approx_size
from myason.api.config import ApiConfig, load_api_config
from myason.api.csvout import safe_cell
from myason.api.db import SqliteDatabase
from myason.api.grammar import MAX_CLAUSES, GrammarError, parse_query
from myason.errors import ConfigError
from tests.support.api import AUTH, NOW, TOKEN, idea, row, write_store


def client_for(path, base_url="http://testserver", **cfg):
    cfg = ApiConfig(database={"type": "sqlite", "path": path}, token=TOKEN, **cfg)
    return TestClient(create_app(cfg, clock=lambda: NOW), raise_server_exceptions=False, base_url=base_url)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A store whose agent sent formula-like text: an if_name and an event category."""
    rows = [row("10.5.0.1", "192.0.2.5", 40000 + i, 443, 6, 100, NOW - 600 + i, if_name='=HYPERLINK("x")')
            for i in range(3)] + [row("10.5.0.2", "192.0.2.5", 1, 2, 17, 100, NOW - 500, if_name="-2+3")]
    return write_store(str(tmp_path_factory.mktemp("hostile") / "flows.db"), rows,
                       [idea(7, NOW - 60, cat="=cmd|' /C calc'!A0", src="198.51.100.9")], maintain=True)


# -- item 4: the method label ------------------------------------------------------------------------

def test_made_up_methods_share_one_metrics_label(hostile):
    c = client_for(hostile)
    for i in range(300):
        r = c.request("X%04d" % i + "M" * 4000, "/healthz")
        assert r.status_code == 405
    c.head("/healthz")
    c.get("/healthz")
    text = c.get("/metrics", headers=AUTH).text
    methods = {line.split('method="')[1].split('"')[0] for line in text.splitlines() if 'method="' in line}
    assert methods == {"GET", "HEAD", "OTHER"}
    other = [line for line in text.splitlines()
             if line.startswith("myason_api_requests_total{") and 'method="OTHER"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in other) == 300
    assert len(text) < 20000


# -- item 6: the caches are bounded in bytes ----------------------------------------------------------

def test_large_results_evict_older_ones_and_the_total_stays_bounded():
    m = Memo(maxsize=100, maxbytes=200_000)
    def big(i):
        return {"rows": [[i, "x" * 100, 1.5] for _ in range(300)]}     # ~70 kB each

    for i in range(20):
        m.get_or_run(("q", i), 60, lambda i=i: big(i))
        assert m.stats()["bytes"] <= 200_000
    assert m.stats()["entries"] <= 3
    assert m.get(("q", 19))[0] and not m.get(("q", 0))[0]     # the newest stay, the oldest went
    small = m.get_or_run(("s",), 60, lambda: {"rows": []})[0]
    assert m.get(("s",)) == (True, small)


def test_a_result_larger_than_the_cap_is_answered_but_not_kept():
    m = Memo(maxsize=100, maxbytes=50_000)
    m.get_or_run("small", 60, lambda: [1, 2, 3])
    value, how = m.get_or_run("huge", 60, lambda: ["y" * 1000] * 100)
    assert how == "executed" and len(value) == 100
    assert not m.get("huge")[0] and m.get("small")[0]      # nothing evicted for it either
    assert m.stats()["bytes"] == approx_size([1, 2, 3])


def test_many_different_searches_stay_within_query_cache_bytes(hostile):
    c = client_for(hostile, query_cache_bytes=30_000)
    for n in range(1, 60):
        assert c.get("/q/net/10.0.0.0/8/after/%dh/limit/5000" % n, headers=AUTH).status_code == 200
    stats = c.app.state.memo.stats()
    assert 0 < stats["bytes"] <= 30_000 and stats["entries"] < 59
    assert 'myason_api_cache_bytes{key="query"}' in c.get("/metrics", headers=AUTH).text


# -- item 7: events through the Database, limited in SQL ----------------------------------------------

class Spy(SqliteDatabase):
    """A SqliteDatabase recording every statement and how many rows it returned."""

    def __init__(self, path):
        super().__init__(path)
        self.calls = []

    def fetch(self, sql, params=()):
        cols, rows = super().fetch(sql, params)
        self.calls.append((sql, len(rows)))
        return cols, rows


def test_events_limit_is_applied_by_the_database(tmp_path):
    path = write_store(str(tmp_path / "events.db"),
                       events=[idea(i, NOW - 3600 + i * 0.05, src="203.0.113.%d" % (i % 200)) for i in range(20000)])
    spy = Spy(path)
    c = TestClient(create_app(ApiConfig(database={"type": "sqlite", "path": path}, token=TOKEN), spy, TOKEN,
                              clock=lambda: NOW), raise_server_exceptions=False)
    t0 = time.monotonic()
    evs = c.get("/events?since=2h&limit=1", headers=AUTH).json()["events"]
    took = time.monotonic() - t0
    assert [e["ID"] for e in evs] == [idea(19999, 0)["ID"]]
    (sql, nrows), = spy.calls
    # One row more than the page: it tells whether a next page exists.
    assert "ORDER BY detecttime DESC" in sql and "LIMIT" in sql and nrows == 2
    assert took < 1.0, took
    # The greylist is aggregated by the database: one row per address, not per event.
    spy.calls.clear()
    grey = c.get("/greylist?since=2h", headers=AUTH).json()["rows"]
    assert len(grey) == 200 and sum(r["events"] for r in grey) == 20000
    (sql, nrows), = spy.calls
    assert "GROUP BY" in sql and nrows == 200


def test_greylist_in_sql_equals_the_cli_greylist(hostile, tmp_path):
    from myason.store.query import fetch_events, greylist
    evs = [idea(1, NOW - 600), idea(2, NOW - 300, "Attempt.Login", "198.51.100.1"), idea(3, NOW - 200),
           {**idea(4, NOW - 100, "Attempt.Login"), "EventTime": queries.iso(NOW - 4000)[:19] + "+01:00"}]
    path = write_store(str(tmp_path / "g.db"), events=evs)
    c = client_for(path)
    assert c.get("/greylist?since=1d", headers=AUTH).json()["rows"] == greylist(
        fetch_events({"type": "sqlite", "path": path}, NOW - 86400))


# -- item 8: grammar edges ------------------------------------------------------------------------------

@pytest.mark.parametrize("path, message", [
    ("after/9999-12-31T23:59:59-23:59", "out of range"),
    ("before/0001-01-01T00:00:00+23:59", "out of range"),
    ("port/\u0668\u0660", "ASCII"),
    ("proto/\u0661\u0667", "ASCII"),
    ("host/10.0.0.1/limit/\u0665", "ASCII"),
    ("after/\u0661h", "ASCII"),
    ("after/999999999w", "out of range"),
    ("/".join("port/%d" % p for p in range(MAX_CLAUSES + 1)), "too many clauses"),
])
def test_grammar_edges_are_400(hostile, path, message):
    with pytest.raises(GrammarError, match=message):
        parse_query(path)
    r = client_for(hostile).get("/q/" + path, headers=AUTH)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_a_thousand_clauses_are_400_not_503(hostile):
    r = client_for(hostile).get("/q/" + "/".join("port/%d" % p for p in range(1000)), headers=AUTH)
    assert r.status_code == 400 and "at most %d" % MAX_CLAUSES in r.json()["error"]
    assert client_for(hostile).get("/q/" + "/".join("port/%d" % p for p in range(MAX_CLAUSES)),
                                   headers=AUTH).status_code == 200


def test_end_parameter_edges_are_400(hostile):
    c = client_for(hostile)
    for end in ("9999-12-31T23:59:59-23:59", "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660"):
        r = c.get("/traffic", params={"end": end}, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"].startswith("end:"), r.text


# -- item 9: Host checking ------------------------------------------------------------------------------

def test_without_auth_only_loopback_hosts_are_answered(hostile):
    c = client_for(hostile, auth=False)
    for host in ("rebind.attacker.example", "rebind.attacker.example:8080", "192.0.2.1", "127.0.0.1.nip.io"):
        r = c.get("/q/host/10.5.0.1", headers={"Host": host})
        assert r.status_code == 400 and "not trusted" in r.json()["error"], host
        assert r.headers["x-frame-options"] == "DENY"
    for host in ("127.0.0.1:8080", "localhost", "LOCALHOST.:1", "[::1]:8080", "127.0.0.1"):
        r = c.get("/q/host/10.5.0.1", headers={"Host": host})
        assert r.status_code == 200 and r.json()["count"] == 3, host


def test_trusted_hosts_list_applies_with_auth_too(hostile):
    c = client_for(hostile, trusted_hosts=["flows.example.org"])
    assert c.get("/healthz", headers={"Host": "flows.example.org:443"}).status_code == 200
    assert c.get("/healthz", headers={"Host": "127.0.0.1"}).status_code == 400
    # With auth and no list, any Host: the token is what protects.
    assert client_for(hostile).get("/healthz", headers={"Host": "anything.example"}).status_code == 200


def test_trusted_hosts_config_is_checked(tmp_path):
    conf = tmp_path / "api.yaml"
    conf.write_text("trusted_hosts: [good.example, 'bad host']\n")
    with pytest.raises(ConfigError, match=r"trusted_hosts\[1\]"):
        load_api_config(str(conf))
    conf.write_text("trusted_hosts: '*'\n")
    with pytest.raises(ConfigError, match="trusted_hosts"):
        load_api_config(str(conf))


# -- item 10: CSV formulas --------------------------------------------------------------------------------

def test_csv_cells_cannot_be_formulas(hostile):
    c = client_for(hostile)
    rows = list(csv.reader(io.StringIO(c.get("/q/net/10.5.0.0/16.csv", headers=AUTH).text)))
    names = {r[rows[0].index("if_name")] for r in rows[1:]}
    assert names == {"'=HYPERLINK(\"x\")", "'-2+3"}
    for r in rows[1:]:
        assert not r[rows[0].index("if_name")].startswith(("=", "+", "-", "@", "\t", "\r"))
    grey = list(csv.reader(io.StringIO(c.get("/greylist.csv?since=1d", headers=AUTH).text)))
    assert grey[1][1] == "'=cmd|' /C calc'!A0"
    assert c.get("/greylist?since=1d", headers=AUTH).json()["rows"][0]["categories"] == ["=cmd|' /C calc'!A0"]


def test_numbers_stay_numbers_in_csv():
    assert safe_cell(-5) == -5 and safe_cell(-2.5) == -2.5 and safe_cell(0) == 0 and safe_cell(None) is None
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert safe_cell(text) == "'" + text
    assert safe_cell("10.0.0.1") == "10.0.0.1" and safe_cell("") == ""


# -- item 11: headers and /docs ----------------------------------------------------------------------------

def test_security_headers_on_every_answer(hostile):
    c = client_for(hostile)
    for url, status in (("/", 200), ("/healthz", 200), ("/q/host/10.5.0.1", 200), ("/nothing", 404),
                        ("/static/app.js", 200), ("/q/host/10.5.0.1", 200)):
        r = c.get(url, headers=AUTH)
        assert r.status_code == status, url
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-content-type-options"] == "nosniff"


def test_the_page_has_no_inline_code():
    from myason.api.app import STATIC_DIR
    page = (STATIC_DIR / "index.html").read_text()
    assert "<style" not in page and " style=" not in page and not re.search(r"\son[a-z]+=", page)
    assert all('src="' in tag for tag in page.split("<script")[1:])
    assert "setAttribute('style'" not in (STATIC_DIR / "app.js").read_text()


def test_docs_are_off_by_default(hostile):
    c = client_for(hostile)
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    assert c.get("/openapi.json").status_code == 200
    on = client_for(hostile, docs=True)
    r = on.get("/docs")
    assert r.status_code == 200 and "cdn.jsdelivr.net" in r.headers["content-security-policy"]


# -- item 12: the token in the start line --------------------------------------------------------------------

def test_the_start_line_shows_only_a_generated_token_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    gen = ApiConfig()
    path = server.write_token_file("tok-gen")
    assert os.path.dirname(path) == str(tmp_path) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert open(path).read() == "tok-gen\n"
    assert "#token=tok-gen" in server.announcement(gen, "sqlite", "127.0.0.1", 1, "tok-gen", True, path)
    line = server.announcement(gen, "sqlite", "127.0.0.1", 1, "tok-gen", False, path)
    assert "tok-gen" not in line and path in line and "http://127.0.0.1:1/" in line
    from_file = ApiConfig(token_file=str(tmp_path / "t"))
    for terminal in (True, False):
        line = server.announcement(from_file, "sqlite", "127.0.0.1", 1, "tok-file", terminal)
        assert "tok-file" not in line and str(tmp_path / "t") in line
        assert "tok-cfg" not in server.announcement(ApiConfig(token="tok-cfg"), "sqlite", "::1", 1, "tok-cfg", terminal)


def test_new_config_keys_fail_at_start_naming_the_key(tmp_path):
    conf = tmp_path / "api.yaml"
    for bad in ("max_connections: 0", "header_timeout: 0", "keepalive_timeout: -1", "max_header_bytes: 10",
                "query_cache_bytes: -1", "period_cache_bytes: x", "docs: yes please"):
        conf.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=bad.split(":")[0]):
            load_api_config(str(conf))
