"""Stored IDEA events and the greylist of their sources."""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from myason.api import models, queries
from myason.api.context import CSV_DOC, DURATION, END_HELP, ApiError, parse_end, parse_since
from myason.api.csvout import csv_response, wants_csv
from myason.api.grammar import GrammarError, parse_address


def build(ctx, auth):
    router = APIRouter(tags=["events"], dependencies=auth)

    @router.get("/events", response_model=models.EventsOut, responses=models.ERRORS,
                summary="Stored IDEA events, newest first")
    def events(since: str = Query("1h", pattern=DURATION, description="how far back: 30m, 1h, 7d, ..."),
               category: Optional[str] = Query(None, max_length=100, description="an IDEA category"),
               source: Optional[str] = Query(None, max_length=64, description="a source address"),
               limit: int = Query(100, ge=1, le=ctx.config.events_limit),
               end: Optional[str] = Query(None, max_length=40, description=END_HELP)):
        seconds = parse_since("since", since)
        now = ctx.clock()
        until = parse_end(end, now)
        if source:
            try:
                source = parse_address(source)
            except GrammarError as exc:
                raise ApiError(400, "source: %s" % exc) from None
        return {"events": queries.events(ctx.database, seconds, category, source, limit, now, until)}

    def greylist_rows(since):
        return queries.greylist(ctx.database, parse_since("since", since), ctx.clock())

    @router.get("/greylist", response_model=models.GreylistOut, responses={**models.ERRORS, 200: CSV_DOC},
                summary="Source addresses of stored events (JSON)")
    def greylist(request: Request,
                 since: str = Query("7d", pattern=DURATION, description="how far back: 1d, 7d, 30d, ...")):
        if wants_csv(request):
            return greylist_csv(since)
        return {"since": since, "rows": greylist_rows(since)}

    @router.get("/greylist.csv", response_class=Response, responses={**models.ERRORS, 200: CSV_DOC},
                summary="Source addresses of stored events (CSV, for firewalls)")
    def greylist_csv(since: str = Query("7d", pattern=DURATION, description="how far back: 1d, 7d, 30d, ...")):
        from myason.store.query import GREYLIST_FIELDS, greylist_table
        return csv_response(GREYLIST_FIELDS, greylist_table(greylist_rows(since)))

    return router
