"""Stored IDEA events and the greylist of their sources."""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from myason.api import models, queries
from myason.api.context import AGENT, CSV_DOC, DURATION, END_HELP, LAST_TIME, ApiError, parse_end, parse_since
from myason.api.csvout import csv_response, wants_csv
from myason.api.eventsearch import CursorError, decode_cursor, flows_link, parse_place
from myason.api.grammar import GrammarError, parse_time, resolve_time

START_HELP = ("start the period here (instead of `since`): ISO 8601 (2024-05-01T12:00:00Z, no zone = UTC), Unix"
              " seconds, or a duration ago (2h)")
PLACE_HELP = "a %s address, or a network (10.0.0.0/8, 2001:db8::/32)"
AGENT_HELP = ("an agent (probe) id: the events made from its flows (`_Myason.Agents`, each event's `agents`);"
              " or a collector's IDEA Node name (`detect.node_name`): the events it detected")


def _instant(name, text, now):
    """Unix seconds of a time parameter (as `end` takes them); 400 naming `name` for a bad one."""
    try:
        t = resolve_time(parse_time(text), now)
    except GrammarError as exc:
        raise ApiError(400, "%s: %s" % (name, exc)) from None
    if not 0 <= t < LAST_TIME:
        raise ApiError(400, "%s: out of range (1970 to 9999): %r" % (name, text))
    return t


def build(ctx, auth):
    router = APIRouter(tags=["events"], dependencies=auth)

    @router.get("/events", response_model=models.EventsOut, responses=models.ERRORS,
                summary="Stored IDEA events, newest first, a page at a time")
    def events(since: Optional[str] = Query(None, pattern=DURATION,
                                             description="how far back from `end`: 30m, 1h, 7d, ... (default 1h;"
                                                         " not with `start`)"),
               start: Optional[str] = Query(None, max_length=40, description=START_HELP),
               end: Optional[str] = Query(None, max_length=40, description=END_HELP),
               category: Optional[str] = Query(None, max_length=100, description="an IDEA category"),
               source: Optional[str] = Query(None, max_length=64, description=PLACE_HELP % "source"),
               target: Optional[str] = Query(None, max_length=64, description=PLACE_HELP % "target"),
               agent: Optional[str] = Query(None, pattern=AGENT, description=AGENT_HELP),
               limit: int = Query(100, ge=1, le=ctx.config.events_limit),
               cursor: Optional[str] = Query(None, max_length=200,
                                             description="`next` of the previous page (same filters)")):
        now = ctx.clock()
        until = parse_end(end, now)
        if start is not None and since is not None:
            raise ApiError(400, "give either since or start, not both")
        if start is not None:
            begin = _instant("start", start, now)
        else:
            begin = (now if until is None else until) - parse_since("since", since or "1h")
        if until is not None and begin >= until:
            raise ApiError(400, "start must be before end")
        after = None
        if cursor:
            try:
                after = decode_cursor(cursor, ctx.database.kind)
            except CursorError as exc:
                raise ApiError(400, "cursor: %s" % exc) from None
            begin = after[2]
        filters = {"category": category, "agent": agent}
        for name, value in (("source", source), ("target", target)):
            try:
                filters[name] = parse_place(value) if value else None
            except GrammarError as exc:
                raise ApiError(400, "%s: %s" % (name, exc)) from None
        return queries.events(ctx.database, begin, until, limit, after, **filters)

    @router.get("/events/{event_id}", response_model=models.EventOut,
                responses={**models.ERRORS, 404: {"model": models.ErrorOut, "description": "no such event"}},
                summary="One stored IDEA event and the flow search for its flows")
    def event(event_id: str = Path(max_length=100, description="the event's IDEA ID")):
        doc = queries.event(ctx.database, event_id)
        if doc is None:
            raise ApiError(404, "no stored event has the ID %r" % event_id)
        try:
            flows = flows_link(doc, ctx.config.default_limit, ctx.config.max_limit)
        except GrammarError as exc:
            # A stored event always has a DetectTime; this is a damaged document, not bad input.
            raise ApiError(500, "event %s: cannot build its flow search: %s" % (event_id, exc)) from None
        return {"id": str(doc.get("ID", event_id)), "idea": doc, "flows": flows}

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
