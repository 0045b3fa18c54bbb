"""GET /agents over a SQLite store filled through the real SqliteWriter (totals of every rollup)."""
import pytest
from fastapi.testclient import TestClient

from myason.api.app import create_app
from myason.api.config import ApiConfig
from tests.support.api import A, AGENTS, AUTH, B, C, D, NOW, OLD, TOKEN, agents_answer, write_store


def make_client(path):
    app = create_app(ApiConfig(database={"type": "sqlite", "path": path}, token=TOKEN), clock=lambda: NOW)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("agents") / "flows.db")
    return make_client(write_store(path, A + B + C + D + OLD))


@pytest.mark.parametrize("query, expected", AGENTS)
def test_agents_of_a_window(client, query, expected):
    r = client.get("/agents?" + query, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == agents_answer(expected)


def test_agents_of_an_empty_store(tmp_path):
    r = make_client(write_store(str(tmp_path / "empty.db"))).get("/agents", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"agents": []}


@pytest.mark.parametrize("query, status, message", [
    ("since=1y", 400, "since"), ("since=7d&agent=x", 400, "unknown parameter 'agent'"),
    ("end=yesterday", 400, "end"), ("end=99999-01-01T00:00:00Z", 400, "end")])
def test_bad_parameters(client, query, status, message):
    r = client.get("/agents?" + query, headers=AUTH)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_needs_the_token(client):
    r = client.get("/agents")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
