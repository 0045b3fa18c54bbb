"""Flow search with the path grammar, Docket style: answered at once when done within search_wait,
else 202 with the query id, run in the background and fetched from /result/<id> later."""
from __future__ import annotations

import re
from typing import Optional

from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import JSONResponse

from myason.api import models, queries
from myason.api.context import CSV_DOC, ApiError
from myason.api.csvout import csv_response, wants_csv
from myason.api import grammar
from myason.api.grammar import CLAUSES, GrammarError, parse_query, parse_time
from myason.api.searches import IN_FLIGHT, Busy

_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_ORDER = {n: k for k, n in enumerate(CLAUSES)}
ID_DOC = "a query id (16 hex digits) from /q or /ids"
ACCEPTED = {"model": models.SearchAcceptedOut, "description": "not done yet: fetch it from result_url later",
            "headers": {"Location": {"description": "the result's URL", "schema": {"type": "string"}}}}
BUSY = {"model": models.ErrorOut, "description": "the database cannot answer now, or too many searches wait",
        "headers": {"Retry-After": {"description": "seconds (when too many searches wait)",
                                    "schema": {"type": "string"}}}}
UNKNOWN = {"model": models.ErrorOut, "description": "unknown query id"}


def with_bound(q, default_bound):
    """(query, bound text): `q` with after/<default_bound> added when it has no after/ or before/.

    The bound is part of the canonical query (and so of its id): the query a search states is the
    one that ran, and asking it again gives the same flows whatever default_bound is then.
    """
    given = [(n, v) for n, v in q.clauses if n in ("after", "before")]
    if given:
        return q, "/".join("%s/%s" % c for c in given)
    if default_bound is None:
        return q, "none"
    # Not through parse_query: the added clause must not count against MAX_CLAUSES.
    clauses = sorted(q.clauses + (("after", parse_time(default_bound)),), key=lambda c: (_ORDER[c[0]], c[1]))
    return grammar.Query(tuple(clauses), q.limit), "after/%s (default)" % default_bound


def accepted(s, state) -> JSONResponse:
    """The 202 of a search not done yet (`state`: queued or running, when last seen)."""
    body = {"id": s.id, "query": s.query, "state": state, "status_url": "/status/" + s.id,
            "result_url": "/result/" + s.id}
    return JSONResponse(body, status_code=202, headers={"Location": "/result/" + s.id})


def build(ctx, auth):
    router = APIRouter(tags=["flows"], dependencies=auth)
    config, searches = ctx.config, ctx.searches

    def answer(s, as_csv, cached):
        """The 200 of a done search (JSON or CSV), 410 when its result is gone, the error of a failed one."""
        if s.state == "failed":
            raise ApiError(s.status, s.error)
        res = searches.result(s) if s.state == "done" else None
        if res is None:
            raise ApiError(410, "the result of %s has expired (%s): ask /q/%s again"
                           % (s.id, s.expired_by or "result_ttl", s.query))
        if as_csv:
            return csv_response(res["columns"], res["rows"])
        return {"id": s.id, "query": s.query, "bound": s.bound, "cached": cached, **res}

    @router.get("/q/{clauses:path}", response_model=models.QueryOut,
                responses={**models.ERRORS, 200: CSV_DOC, 202: ACCEPTED, 503: BUSY},
                summary="Search flows with the path grammar (host/ADDR, net/CIDR, port/N, after/1h, ...)")
    def flow_query(request: Request, clauses: str = PathParam(
            ..., description="clauses, e.g. host/10.0.0.1/port/443/after/1h (suffix .csv for CSV)"),
            wait: Optional[float] = Query(None, ge=0, le=3600, allow_inf_nan=False,
                                          description="seconds to wait for the result before answering 202 "
                                                      "(at most search_wait; 0: answer 202 at once)")):
        as_csv = wants_csv(request, clauses)
        if clauses.endswith(".csv"):
            clauses = clauses[:-4]
        try:
            q = parse_query(clauses, config.max_limit, config.default_limit)
            q, bound = with_bound(q, config.default_bound)
        except GrammarError as exc:
            raise ApiError(400, str(exc)) from None
        now = ctx.clock()
        try:
            s, how, state = searches.ask(q.id, q.canonical, bound, lambda: queries.flow_search(ctx.database, q, now))
        except Busy as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})
        limit = config.search_wait if wait is None else min(wait, config.search_wait)
        if how == "cached" or (limit > 0 and searches.wait(s, limit)):
            return answer(s, as_csv, how == "cached")
        if limit > 0:
            state = s.state
            if state not in IN_FLIGHT:      # done between the end of the wait and now
                return answer(s, as_csv, False)
        # wait=0 never waits: the id at once, even when a worker is quicker than this answer.
        return accepted(s, state)

    @router.get("/result/{qid}", response_model=models.QueryOut,
                responses={**models.ERRORS, 200: CSV_DOC, 202: ACCEPTED, 404: UNKNOWN,
                           410: {"model": models.ErrorOut, "description": "the result expired or was evicted "
                                                                          "(its /status stays readable)"},
                           500: {"model": models.ErrorOut, "description": "the search failed"}},
                summary="The result of a search by id (JSON; .csv or Accept: text/csv for CSV)")
    def result(request: Request, qid: str = PathParam(..., pattern=r"^[0-9a-f]{16}(\.csv)?$", description=ID_DOC)):
        as_csv = wants_csv(request, qid)
        s = searches.get(qid[:16])
        if s is None:
            raise ApiError(404, "unknown query id %s" % qid[:16])
        state = s.state
        if state in IN_FLIGHT:
            return accepted(s, state)
        if s.state == "failed":
            raise ApiError(500, "the search failed: %s" % s.error)
        return answer(s, as_csv, False)

    @router.get("/status/{qid}", response_model=models.StatusOut, responses={**models.ERRORS, 404: UNKNOWN},
                summary="State and state history of a query id")
    def status(qid: str = PathParam(..., pattern=r"^[0-9a-f]{16}$", description=ID_DOC)):
        if not _ID_RE.match(qid):
            raise ApiError(400, "a query id is 16 lowercase hex digits, got %r" % qid)
        s = searches.get(qid)
        if s is None:
            raise ApiError(404, "unknown query id %s" % qid)
        return s.to_status()

    @router.get("/ids", response_model=models.IdsOut, responses=models.ERRORS, summary="Known query ids, newest first")
    def ids():
        return {"ids": searches.ids()}

    @router.get("/urls", response_model=models.UrlsOut, responses=models.ERRORS,
                summary="The API's endpoints (Docket's /urls)")
    def urls(request: Request):
        # From the OpenAPI document (built once per app), so the list is the documented one.
        out = []
        for path, ops in request.app.openapi()["paths"].items():
            for method, op in ops.items():
                out.append({"path": path, "methods": [method.upper()], "summary": op.get("summary", "")})
        return {"urls": out}

    return router
