"""Health and service: store health, the API's metrics, liveness, the web page."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from myason.api import models, queries

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATS_TTL = 10.0    # the collector writes its health rows every 10 s by default


def build(ctx, auth):
    router = APIRouter()
    bad_only = {400: models.ERRORS[400]}

    @router.get("/stats", response_model=models.StatsOut, dependencies=auth, tags=["health"],
                responses=models.ERRORS, summary="Ingest and storage health")
    def stats():
        return ctx.period_cached(("stats",), STATS_TTL, lambda: queries.stats(ctx.database, ctx.clock()))

    @router.get("/metrics", dependencies=auth, tags=["health"], response_class=Response,
                responses={**models.ERRORS, 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
                summary="Prometheus metrics of the API")
    def metrics():
        body, ctype = ctx.telemetry.render()
        return Response(body, media_type=ctype)

    @router.get("/healthz", response_model=models.HealthOut, tags=["health"], responses=bad_only,
                summary="Liveness (no auth)")
    def healthz():
        return {"status": "ok"}

    @router.get("/", response_class=HTMLResponse, tags=["page"], responses=bad_only,
                summary="The web page (no auth; token in #token=)")
    def index():
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse("<!doctype html><title>myason</title><p>myason API: see /openapi.json</p>")

    return router
