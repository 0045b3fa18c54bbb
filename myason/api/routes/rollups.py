"""Answers from the rollups: traffic over time, top lists, where stored flows are."""
from __future__ import annotations

from typing import Literal, Optional

from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import JSONResponse

from myason.api import models, queries
from myason.api.context import AGENT, CSV_DOC, END_HELP, IF_NAME, ApiError, PeriodName, parse_end
from myason.api.csvout import csv_response, wants_csv
from myason.api.periods import get_period

RANGE_TTL = 30.0    # the rollups move on once per maintenance run (60 s by default)


def build(ctx, auth):
    router = APIRouter(tags=["rollups"], dependencies=auth)
    traffic_doc = dict(response_model=models.TrafficOut, responses={**models.ERRORS, 200: CSV_DOC})

    def traffic_answer(request, period, agent, if_name, by, end, as_csv):
        p = get_period(period)
        until = parse_end(end, ctx.clock())
        res = ctx.period_cached(("traffic", period, agent, if_name, by, end), p.ttl,
                                lambda: queries.traffic(ctx.database, p, ctx.clock(), agent, if_name, by, until))
        if as_csv or wants_csv(request):
            return csv_response(["t", "key", "bytes", "packets", "flows"],
                                [[x["t"], x.get("key", ""), x["bytes"], x["packets"], x["flows"]] for x in res["points"]])
        return JSONResponse(_drop_none_keys(res))

    # One handler for both paths: the .csv path answers CSV whatever the Accept header says.
    @router.get("/traffic", summary="Bytes, packets and flows over time from the rollups", **traffic_doc)
    @router.get("/traffic.csv", summary="/traffic as CSV", **traffic_doc)
    def traffic(request: Request, period: PeriodName = "1h",
                agent: Optional[str] = Query(None, pattern=AGENT, description="an agent id"),
                if_name: Optional[str] = Query(None, pattern=IF_NAME, description="an interface name"),
                by: Literal["none", "proto", "direction"] = "none",
                end: Optional[str] = Query(None, max_length=40, description=END_HELP)):
        return traffic_answer(request, period, agent, if_name, by, end, request.url.path.endswith(".csv"))

    @router.get("/top/{dimension}", response_model=models.TopOut, responses={**models.ERRORS, 200: CSV_DOC},
                summary="Top keys of a dimension by bytes over a period")
    def top(request: Request, dimension: str = PathParam(
                ..., pattern=r"^(%s)(\.csv)?$" % "|".join(queries.TOP_DIMENSIONS),
                description="one of %s (suffix .csv for CSV)" % ", ".join(queries.TOP_DIMENSIONS)),
            period: PeriodName = "1d", limit: int = Query(10, ge=1, le=1000),
            agent: Optional[str] = Query(None, pattern=AGENT, description="an agent id"),
            end: Optional[str] = Query(None, max_length=40, description=END_HELP)):
        as_csv = wants_csv(request, dimension)
        if dimension.endswith(".csv"):
            dimension = dimension[:-4]
        if dimension not in queries.TOP_DIMENSIONS:
            raise ApiError(400, "unknown dimension %r (known: %s)" % (dimension, ", ".join(queries.TOP_DIMENSIONS)))
        p = get_period(period)
        until = parse_end(end, ctx.clock())
        res = ctx.period_cached(("top", dimension, period, limit, agent, end), p.ttl,
                                lambda: queries.top(ctx.database, dimension, p, ctx.clock(), limit, agent, until))
        if as_csv:
            return csv_response(["key", "bytes", "packets", "flows"],
                                [[r["key"], r["bytes"], r["packets"], r["flows"]] for r in res["rows"]])
        return res

    @router.get("/range", response_model=models.RangeOut, responses=models.ERRORS,
                summary="Where stored flows are: earliest and latest time, from the rollups")
    def data_range():
        return ctx.period_cached(("range",), RANGE_TTL, lambda: queries.data_range(ctx.database))

    return router


def _drop_none_keys(res):
    # Points carry `key` only when the series are split (by=proto|direction).
    return {**res, "points": [{k: v for k, v in p.items() if v is not None} for p in res["points"]]}
