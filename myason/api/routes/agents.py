"""The agents (probes) whose flows are stored, for the page's agent selector and dashboards."""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Query

from myason.api import models, queries
from myason.api.context import DURATION, END_HELP, parse_end, parse_since

AGENTS_TTL = 30.0   # as /range: the rollups move on with every stored batch, a list of probes rarely


def build(ctx, auth):
    router = APIRouter(tags=["agents"], dependencies=auth)

    @router.get("/agents", response_model=models.AgentsOut, responses=models.ERRORS,
                summary="Agents with stored flows in a window, their interfaces and when last seen")
    def agents(since: str = Query("30d", pattern=DURATION, description="how far back: 1h, 7d, 30d, ..."),
               end: Optional[str] = Query(None, max_length=40, description=END_HELP)):
        seconds = parse_since("since", since)
        now = ctx.clock()
        until = parse_end(end, now)
        return ctx.period_cached(("agents", since, end), AGENTS_TTL,
                                 lambda: {"agents": queries.agents(ctx.database, seconds, now, until)})

    return router
