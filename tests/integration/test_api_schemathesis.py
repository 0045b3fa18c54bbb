"""Schemathesis against the spec of a running `myason api`: no 5xx, every answer matches the schema."""
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import positive_data_acceptance  # noqa: E402

from myason.store.sqlite import SqliteWriter  # noqa: E402
from tests.support.api import ApiProcess, idea, row  # noqa: E402

# The grammar of /q/{clauses} (and addresses in ?source=, times in ?end=) is not a JSON Schema: a
# schema-valid string may still be a bad query, answered 400 with a message, which is right.
GRAMMAR_PATHS = ("/q/{clauses}", "/events")
GRAMMAR_PARAMS = ("end",)

# Bounded so the whole file takes well under a minute on 2 cores.
MAX_EXAMPLES = 30
# uvicorn's own answer to a request its HTTP parser refuses (e.g. a negative case's malformed
# Content-Length header): the request never reaches the app, so it is not the API's answer.
SERVER_REFUSAL = "Invalid HTTP request received."


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    now = time.time()
    w = SqliteWriter(path=str(tmp / "flows.db"))
    w.open()
    w.write("s", [row("10.5.0.%d" % (i % 5), "2001:db8::%x" % i if i % 3 == 0 else "192.0.2.%d" % i, 1024 + i,
                      (443, 53, 22)[i % 3], (6, 17, 6)[i % 3], 100 * i, now - 60 * i) for i in range(1, 60)],
            [idea(1, now - 30)])
    w.maintain(now=now)
    w.close()
    proc = ApiProcess("database: {type: sqlite, path: %s}\ntoken: fuzz\nmax_limit: 500\n" % (tmp / "flows.db"), tmp)
    yield proc
    assert proc.stop() == 0


def operations(api):
    schema = schemathesis.openapi.from_url(api.base + "openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 13
    return ops


# Driven through hypothesis directly (schemathesis.pytest's lazy loader does not work with pytest 9).
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms(api, mode):
    for op in operations(api):
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # check() runs within this iteration of the loop, so `op` is the right one (B023).
            grammar = op.path in GRAMMAR_PATHS or any(k in (case.query or {}) for k in GRAMMAR_PARAMS)  # noqa: B023
            excluded = [positive_data_acceptance] if grammar else []
            headers = {"Authorization": "Bearer fuzz"}
            response = case.call(headers=headers)
            if mode == GenerationMode.NEGATIVE and response.status_code == 400 and response.text == SERVER_REFUSAL:
                return
            case.validate_response(response, headers=headers, excluded_checks=excluded)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)

        try:
            check()
        except Unsatisfiable:
            # Negative mode has nothing to break in an operation without parameters.
            assert mode == GenerationMode.NEGATIVE, op.path


def test_without_token(api):
    for op in operations(api):
        @given(case=op.as_strategy())
        @settings(max_examples=3, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call()
            if op.path in ("/", "/healthz"):  # noqa: B023 - check() runs within this iteration
                assert response.status_code == 200
            else:
                assert response.status_code in (400, 401), (op.path, response.status_code, response.text)  # noqa: B023

        check()
