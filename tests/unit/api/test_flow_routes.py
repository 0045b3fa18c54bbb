"""The routes of background searches in process, over a SQLite store: /urls, ?wait=, /result's answers
(202, 404, 410, 500), /status after expiry, and the default bound's configuration."""
import pytest
from fastapi.testclient import TestClient

from myason.api import queries
from myason.api.app import create_app
from myason.api.config import ApiConfig
from myason.errors import ConfigError
from tests.support.api import A, AUTH, NOW, TOKEN, Clock, write_store
from tests.support.services import wait_until


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(str(tmp_path_factory.mktemp("routes") / "flows.db"), A)


@pytest.fixture
def make(store):
    clients = []

    def build(clock=None, **cfg):
        app = create_app(ApiConfig(database={"type": "sqlite", "path": store}, token=TOKEN, **cfg),
                         clock=clock or (lambda: NOW))
        clients.append(TestClient(app, raise_server_exceptions=False))
        return clients[-1]

    yield build
    for c in clients:
        c.app.state.searches.close()


def get(client, url, status=200):
    r = client.get(url, headers=AUTH)
    assert r.status_code == status, (url, r.status_code, r.text)
    return r


def done(client, qid):
    """The answer of /result/<qid> once it is no longer 202."""
    return wait_until(lambda: (lambda r: r if r.status_code != 202 else None)(client.get("/result/" + qid, headers=AUTH)))


def test_urls_lists_the_documented_endpoints(make):
    client = make()
    urls = {u["path"]: u for u in get(client, "/urls").json()["urls"]}
    for path in ("/q/{clauses}", "/result/{qid}", "/status/{qid}", "/ids", "/urls", "/traffic", "/healthz"):
        assert urls[path]["methods"] == ["GET"] and urls[path]["summary"], path
    assert set(urls) == set(client.get("/openapi.json").json()["paths"])


@pytest.mark.parametrize("query, message", [("wait=-1", "wait:"), ("wait=nan", "wait:"), ("wait=3601", "wait:"),
                                            ("wait=soon", "wait:"), ("wiat=1", "unknown parameter 'wiat'")])
def test_bad_waits_are_refused(make, query, message):
    assert message in get(make(), "/q/host/10.1.0.1?" + query, status=400).json()["error"]


@pytest.mark.parametrize("url", ["/result/0123", "/result/0123456789ABCDEF", "/result/0123456789abcdef.json",
                                 "/status/0123456789abcdeg"])
def test_bad_ids_are_refused(make, url):
    get(make(), url, status=400)


def test_the_result_of_a_failed_search_is_a_500_with_its_reason(make, monkeypatch):
    def broken(db, query, now=None):
        raise ValueError("boom")

    monkeypatch.setattr(queries, "flow_search", broken)
    client = make()
    qid = get(client, "/q/host/10.1.0.1?wait=0", status=202).json()["id"]
    r = done(client, qid)
    assert r.status_code == 500 and r.json() == {"error": "the search failed: internal error: ValueError"}
    st = get(client, "/status/" + qid).json()
    assert st["state"] == "failed" and st["error"] == "internal error: ValueError" and st["rows"] is None


def test_an_expired_result_is_410_and_its_status_stays(make):
    clock = Clock(NOW)
    client = make(clock, result_ttl=600)
    qid = get(client, "/q/host/10.1.0.1?wait=0", status=202).json()["id"]
    assert done(client, qid).json()["count"] == 20
    clock.t += 600
    r = get(client, "/result/" + qid, status=410)
    assert r.json()["error"] == ("the result of %s has expired (result_ttl): ask /q/host/10.1.0.1/after/1d/limit/100 "
                                 "again" % qid)
    get(client, "/result/" + qid + ".csv", status=410)
    st = get(client, "/status/" + qid).json()
    assert st["state"] == "expired" and st["expired_by"] == "result_ttl" and st["rows"] == 20
    # Asked again, it runs again under the same id.
    assert get(client, "/q/host/10.1.0.1").json()["id"] == qid
    assert get(client, "/status/" + qid).json()["state"] == "done"


def test_a_shorter_wait_than_the_configured_one_is_taken_a_longer_one_is_not(make):
    client = make(search_wait=0)
    assert get(client, "/q/host/10.1.0.1?wait=5", status=202).json()["state"] in ("queued", "running")


@pytest.mark.parametrize("value", ["1d1h", "-1h", "24", "0h", True, 3.5, "999999999w"])
def test_a_bad_default_bound_names_the_key(value):
    with pytest.raises(ConfigError, match="default_bound"):
        ApiConfig(default_bound=value)
