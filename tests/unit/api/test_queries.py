"""The API's time formatting: millisecond rounding carries into the second, and order is kept."""
import datetime as dt
import random

import pytest
from fastapi.testclient import TestClient

from myason.api import queries
from myason.api.app import create_app
from myason.api.config import ApiConfig
from myason.store.sqlite import SqliteWriter
from tests.support.api import AUTH, TOKEN, row

S = 1700000268          # 2023-11-14T22:17:48Z


@pytest.mark.parametrize("t, text", [
    (S + 0.99995, "2023-11-14T22:17:49.000Z"),      # rounds up into the next second
    (S + 0.9995, "2023-11-14T22:17:49.000Z"),       # exactly half a millisecond: up
    (S + 0.99949, "2023-11-14T22:17:48.999Z"),
    (S + 0.9994, "2023-11-14T22:17:48.999Z"),
    (S, "2023-11-14T22:17:48.000Z"),                # exactly on the second
    (S + 0.0004, "2023-11-14T22:17:48.000Z"),
    (S + 0.0005, "2023-11-14T22:17:48.001Z"),
    (S + 0.25, "2023-11-14T22:17:48.250Z"),
    (0.0, "1970-01-01T00:00:00.000Z"),
    (-0.0, "1970-01-01T00:00:00.000Z"),
    (-0.0001, "1970-01-01T00:00:00.000Z"),         # negative fraction rounding to zero
    (-0.0005, "1970-01-01T00:00:00.000Z"),
    (-0.0006, "1969-12-31T23:59:59.999Z"),
    (-0.9996, "1969-12-31T23:59:59.000Z"),
    (-1.5, "1969-12-31T23:59:58.500Z"),
    ("1700000268.99995", "2023-11-14T22:17:49.000Z"),
    (None, None),
])
def test_iso_rounds_the_whole_time_to_milliseconds(t, text):
    assert queries.iso(t) == text


def test_iso_keeps_the_order_of_times():
    rnd = random.Random(3)
    times = sorted(S + rnd.randrange(-3, 3) + rnd.choice((0.0, 0.9995, 0.99949, 0.99995, 0.0005, 0.0004,
                                                          rnd.random()))
                   for _ in range(5000))
    texts = [queries.iso(t) for t in times]
    assert texts == sorted(texts)
    # Never more than half a millisecond away from the time it stands for.
    for t, text in zip(times, texts):
        back = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        assert abs(back - t) <= 0.0005 + 1e-6, (t, text)


def test_flow_search_shows_times_rounded_and_newest_first(tmp_path):
    path = str(tmp_path / "flows.db")
    w = SqliteWriter(path=path, maintain_interval=0)
    w.open()
    firsts = [S + 0.5, S + 0.99995, S + 1.2, S + 0.9994, S + 1.0]
    assert w.write("a", [row("10.1.0.1", "192.0.2.10", 40000 + i, 443, 6, 100, t) for i, t in enumerate(firsts)])
    w.close()
    client = TestClient(create_app(ApiConfig(database={"type": "sqlite", "path": path}, token=TOKEN)),
                        raise_server_exceptions=False)
    body = client.get("/q/host/10.1.0.1/after/2023-11-14T00:00:00Z", headers=AUTH).json()
    shown = [r[0] for r in body["rows"]]
    assert shown == ["2023-11-14T22:17:49.200Z", "2023-11-14T22:17:49.000Z", "2023-11-14T22:17:49.000Z",
                     "2023-11-14T22:17:48.999Z", "2023-11-14T22:17:48.500Z"]
    assert shown == sorted(shown, reverse=True)
    # `last` (first + 1.5 s) goes through the same formatting.
    assert body["rows"][1][1] == "2023-11-14T22:17:50.500Z"
