"""Flow search with the path grammar, query ids and their states."""
from __future__ import annotations

import re

from fastapi import APIRouter, Path as PathParam, Request

from myason.api import models, queries
from myason.api.context import CSV_DOC, ApiError
from myason.api.csvout import csv_response, wants_csv
from myason.api.grammar import GrammarError, parse_query

_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def build(ctx, auth):
    router = APIRouter(tags=["flows"], dependencies=auth)
    config, jobs = ctx.config, ctx.jobs

    @router.get("/q/{clauses:path}", response_model=models.QueryOut, responses={**models.ERRORS, 200: CSV_DOC},
                summary="Search flows with the path grammar (host/ADDR, net/CIDR, port/N, after/1h, ...)")
    def flow_query(request: Request, clauses: str = PathParam(
            ..., description="clauses, e.g. host/10.0.0.1/port/443/after/1h (suffix .csv for CSV)")):
        as_csv = wants_csv(request, clauses)
        if clauses.endswith(".csv"):
            clauses = clauses[:-4]
        try:
            q = parse_query(clauses, config.max_limit, config.default_limit)
        except GrammarError as exc:
            raise ApiError(400, str(exc)) from None
        qid, canonical = q.id, q.canonical

        def run():
            job = jobs.start(qid, canonical)
            try:
                res = queries.flow_search(ctx.database, q, ctx.clock())
            except Exception as exc:
                jobs.finish(job, error=str(exc))
                raise
            jobs.finish(job, count=res["count"])
            res["elapsed"] = round(job.elapsed, 6)
            return res

        res, how = ctx.memo.get_or_run(("q", qid), config.query_cache_ttl, run)
        if how == "cached":
            jobs.seen(qid, canonical, res["count"])
        if as_csv:
            return csv_response(res["columns"], res["rows"])
        return {"id": qid, "query": canonical, "cached": how == "cached", **res}

    @router.get("/status/{qid}", response_model=models.StatusOut,
                responses={**models.ERRORS, 404: {"model": models.ErrorOut, "description": "unknown id"}},
                summary="State of a query id")
    def status(qid: str = PathParam(..., pattern=r"^[0-9a-f]{16}$", description="a query id from /q or /ids")):
        if not _ID_RE.match(qid):
            raise ApiError(400, "a query id is 16 lowercase hex digits, got %r" % qid)
        job = jobs.get(qid)
        if job is None:
            raise ApiError(404, "unknown query id %s" % qid)
        return job.to_dict()

    @router.get("/ids", response_model=models.IdsOut, responses=models.ERRORS, summary="Known query ids, newest first")
    def ids():
        return {"ids": jobs.ids()}

    return router
