"""The FastAPI application: routes, bearer-token auth, CSV answers, caching, errors as {"error": ...}."""
from __future__ import annotations

import logging
import re
import secrets
import time
from pathlib import Path
from typing import Literal, Optional

from fastapi import Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from myason import __version__
from myason.api import models, queries
from myason.api.cache import Jobs, Memo
from myason.api.config import ApiConfig, resolve_database, resolve_token
from myason.api.csvout import csv_response, wants_csv
from myason.api.db import Database, DatabaseError, open_database
from myason.api.grammar import GrammarError, parse_address, parse_query, parse_time, resolve_time
from myason.api.periods import PERIODS, get_period
from myason.api.security import SecurityHeaders, TrustedHost, trusted_host_names
from myason.errors import ConfigError

log = logging.getLogger("myason.api")
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATS_TTL = 10.0    # the collector writes its health rows every 10 s by default
RANGE_TTL = 30.0    # the rollups move on once per maintenance run (60 s by default)
LAST_TIME = 253402300800.0      # 10000-01-01: the databases' and ISO 8601's four-digit years
END_HELP = ("end the period here instead of now: ISO 8601 (2024-05-01T12:00:00Z, no zone = UTC), Unix seconds,"
            " or a duration ago (2h)")
PeriodName = Literal["1h", "6h", "1d", "1w", "1m", "3m", "1y"]
DURATION = r"^[0-9]{1,6}[smhdw]$"
AGENT = r"^[A-Za-z0-9._:-]{1,64}$"
IF_NAME = r"^[!-.0-~]{1,15}$"     # printable ASCII but '/', as Linux interface names go
_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_CSV = {"content": {"text/csv": {"schema": {"type": "string"}}}}


class ApiError(Exception):
    """An answer other than 200: HTTP status and the message of {"error": ...}."""

    def __init__(self, status, message):
        self.status = status
        super().__init__(message)


def _error(status, message, headers=None):
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc):
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
        parts.append("%s: %s" % (where, err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def _parse_since(key, text):
    from myason.store.query import parse_duration
    try:
        return parse_duration(key, text)
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None


def _parse_end(text, now):
    """Unix seconds of an `end` parameter (None stays None); 400 for a bad one."""
    if text is None:
        return None
    try:
        t = resolve_time(parse_time(text), now)
    except GrammarError as exc:
        raise ApiError(400, "end: %s" % exc) from None
    if not 0 <= t < LAST_TIME:
        raise ApiError(400, "end: out of range (1970 to 9999): %r" % text)
    return t


def known_params_only(request: Request):
    """Dependency of every route: 400 for a query parameter the route does not take."""
    # A misspelt parameter (?perod=1d) would otherwise be ignored silently.
    route = request.scope.get("route")
    known = {p.alias for p in getattr(getattr(route, "dependant", None), "query_params", ())}
    for dep in getattr(getattr(route, "dependant", None), "dependencies", ()):
        known.update(p.alias for p in dep.query_params)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ApiError(400, "unknown parameter %r%s" % (unknown[0], " (known: %s)" % ", ".join(sorted(known))
                                                        if known else " (this route takes none)"))



def create_app(config: ApiConfig, database: Optional[Database] = None, token: Optional[str] = None,
               clock=time.time) -> FastAPI:
    """The API over `database` (default: the one `config` names); auth with `token` unless config.auth is off."""
    if database is None:
        spec = resolve_database(config)
        database = open_database(spec, config.pool_size, config.query_timeout)
    if config.auth and token is None:
        token = resolve_token(config)
    # /docs and /redoc load their scripts from a CDN without integrity checks: off unless asked for.
    app = FastAPI(title="myason API", version=__version__, dependencies=[Depends(known_params_only)],
                  docs_url="/docs" if config.docs else None, redoc_url="/redoc" if config.docs else None,
                  description="Flow search (Docket-style path grammar), traffic, top lists, events and "
                              "store health. Authenticate with `Authorization: Bearer TOKEN`.")
    app.state.db = database
    app.state.token = token if config.auth else None
    app.state.config = config
    app.state.memo = memo = Memo(config.query_cache_size, config.query_cache_bytes)
    app.state.periods = periods = Memo(config.period_cache_size, config.period_cache_bytes)
    app.state.jobs = jobs = Jobs(config.known_ids)
    from myason.api.telemetry import Telemetry
    app.state.telemetry = telemetry = Telemetry(lambda: {"cache": {"query": memo.stats(), "period": periods.stats()}})
    bearer = HTTPBearer(auto_error=False, description="the API token (printed by `myason api` at start)")

    def require_token(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
        if app.state.token is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), app.state.token.encode()):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")

    auth = [Depends(require_token)]

    @app.exception_handler(ApiError)
    async def _api_error(request, exc):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return _error(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(DatabaseError)
    async def _db(request, exc):
        log.warning("api: database: %s", exc)
        return _error(503, str(exc))

    @app.exception_handler(Exception)
    async def _bug(request, exc):
        log.exception("api: %s %s failed", request.method, request.url.path)
        return _error(500, "internal error: %s" % type(exc).__name__)

    @app.middleware("http")
    async def _measure(request, call_next):
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            telemetry.observe(getattr(route, "path", "unmatched"), request.method, status, time.perf_counter() - t0)

    def period_cached(key, period_ttl, fn):
        return periods.get_or_run(key, period_ttl, fn)[0]

    # -- flow search ------------------------------------------------------------------------------

    @app.get("/q/{clauses:path}", response_model=models.QueryOut, dependencies=auth, tags=["flows"],
             responses={**models.ERRORS, 200: _CSV},
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
                res = queries.flow_search(database, q, clock())
            except Exception as exc:
                jobs.finish(job, error=str(exc))
                raise
            jobs.finish(job, count=res["count"])
            res["elapsed"] = round(job.elapsed, 6)
            return res

        res, how = memo.get_or_run(("q", qid), config.query_cache_ttl, run)
        if how == "cached":
            jobs.seen(qid, canonical, res["count"])
        if as_csv:
            return csv_response(res["columns"], res["rows"])
        return {"id": qid, "query": canonical, "cached": how == "cached", **res}

    @app.get("/status/{qid}", response_model=models.StatusOut, dependencies=auth, tags=["flows"],
             responses={**models.ERRORS, 404: {"model": models.ErrorOut, "description": "unknown id"}},
             summary="State of a query id")
    def status(qid: str = PathParam(..., pattern=r"^[0-9a-f]{16}$", description="a query id from /q or /ids")):
        if not _ID_RE.match(qid):
            raise ApiError(400, "a query id is 16 lowercase hex digits, got %r" % qid)
        job = jobs.get(qid)
        if job is None:
            raise ApiError(404, "unknown query id %s" % qid)
        return job.to_dict()

    @app.get("/ids", response_model=models.IdsOut, dependencies=auth, tags=["flows"], responses=models.ERRORS,
             summary="Known query ids, newest first")
    def ids():
        return {"ids": jobs.ids()}

    # -- rollups --------------------------------------------------------------------------------------

    def traffic_answer(request, period, agent, if_name, by, end, as_csv):
        p = get_period(period)
        until = _parse_end(end, clock())
        res = period_cached(("traffic", period, agent, if_name, by, end), p.ttl,
                            lambda: queries.traffic(database, p, clock(), agent, if_name, by, until))
        if as_csv or wants_csv(request):
            return csv_response(["t", "key", "bytes", "packets", "flows"],
                                [[x["t"], x.get("key", ""), x["bytes"], x["packets"], x["flows"]] for x in res["points"]])
        return JSONResponse(_drop_none_keys(res))

    traffic_doc = dict(response_model=models.TrafficOut, dependencies=auth, tags=["rollups"],
                       responses={**models.ERRORS, 200: _CSV})

    @app.get("/traffic", summary="Bytes, packets and flows over time from the rollups", **traffic_doc)
    def traffic(request: Request, period: PeriodName = "1h", agent: Optional[str] = Query(None, pattern=AGENT, description="an agent id"),
                if_name: Optional[str] = Query(None, pattern=IF_NAME, description="an interface name"),
                by: Literal["none", "proto", "direction"] = "none",
                end: Optional[str] = Query(None, max_length=40, description=END_HELP)):
        return traffic_answer(request, period, agent, if_name, by, end, False)

    @app.get("/traffic.csv", summary="/traffic as CSV", **traffic_doc)
    def traffic_csv(request: Request, period: PeriodName = "1h", agent: Optional[str] = Query(None, pattern=AGENT, description="an agent id"),
                    if_name: Optional[str] = Query(None, pattern=IF_NAME, description="an interface name"),
                    by: Literal["none", "proto", "direction"] = "none",
                    end: Optional[str] = Query(None, max_length=40, description=END_HELP)):
        return traffic_answer(request, period, agent, if_name, by, end, True)

    @app.get("/top/{dimension}", response_model=models.TopOut, dependencies=auth, tags=["rollups"],
             responses={**models.ERRORS, 200: _CSV}, summary="Top keys of a dimension by bytes over a period")
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
        until = _parse_end(end, clock())
        res = period_cached(("top", dimension, period, limit, agent, end), p.ttl,
                            lambda: queries.top(database, dimension, p, clock(), limit, agent, until))
        if as_csv:
            return csv_response(["key", "bytes", "packets", "flows"],
                                [[r["key"], r["bytes"], r["packets"], r["flows"]] for r in res["rows"]])
        return res

    @app.get("/range", response_model=models.RangeOut, dependencies=auth, tags=["rollups"], responses=models.ERRORS,
             summary="Where stored flows are: earliest and latest time, from the rollups")
    def data_range():
        return period_cached(("range",), RANGE_TTL, lambda: queries.data_range(database))

    # -- events ---------------------------------------------------------------------------------------

    @app.get("/events", response_model=models.EventsOut, dependencies=auth, tags=["events"],
             responses=models.ERRORS, summary="Stored IDEA events, newest first")
    def events(since: str = Query("1h", pattern=DURATION, description="how far back: 30m, 1h, 7d, ..."),
               category: Optional[str] = Query(None, max_length=100, description="an IDEA category"),
               source: Optional[str] = Query(None, max_length=64, description="a source address"),
               limit: int = Query(100, ge=1, le=config.events_limit),
               end: Optional[str] = Query(None, max_length=40, description=END_HELP)):
        seconds = _parse_since("since", since)
        now = clock()
        until = _parse_end(end, now)
        if source:
            try:
                source = parse_address(source)
            except GrammarError as exc:
                raise ApiError(400, "source: %s" % exc) from None
        return {"events": queries.events(database, seconds, category, source, limit, now, until)}

    def greylist_rows(since):
        seconds = _parse_since("since", since)
        return queries.greylist(database, seconds, clock())

    @app.get("/greylist", response_model=models.GreylistOut, dependencies=auth, tags=["events"],
             responses={**models.ERRORS, 200: _CSV}, summary="Source addresses of stored events (JSON)")
    def greylist(request: Request,
                 since: str = Query("7d", pattern=DURATION, description="how far back: 1d, 7d, 30d, ...")):
        if wants_csv(request):
            return greylist_csv(since)
        return {"since": since, "rows": greylist_rows(since)}

    @app.get("/greylist.csv", dependencies=auth, tags=["events"], response_class=Response,
             responses={**models.ERRORS, 200: _CSV}, summary="Source addresses of stored events (CSV, for firewalls)")
    def greylist_csv(since: str = Query("7d", pattern=DURATION, description="how far back: 1d, 7d, 30d, ...")):
        from myason.store.query import GREYLIST_FIELDS, greylist_table
        return csv_response(GREYLIST_FIELDS, greylist_table(greylist_rows(since)))

    # -- health and service ---------------------------------------------------------------------------

    @app.get("/stats", response_model=models.StatsOut, dependencies=auth, tags=["health"],
             responses=models.ERRORS, summary="Ingest and storage health")
    def stats():
        return period_cached(("stats",), STATS_TTL, lambda: queries.stats(database, clock()))

    @app.get("/metrics", dependencies=auth, tags=["health"], response_class=Response,
             responses={**models.ERRORS, 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
             summary="Prometheus metrics of the API")
    def metrics():
        body, ctype = telemetry.render()
        return Response(body, media_type=ctype)

    bad_only = {400: models.ERRORS[400]}

    @app.get("/healthz", response_model=models.HealthOut, tags=["health"], responses=bad_only,
             summary="Liveness (no auth)")
    def healthz():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, tags=["page"], responses=bad_only,
             summary="The web page (no auth; token in #token=)")
    def index():
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse("<!doctype html><title>myason</title><p>myason API: see /openapi.json</p>")

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    # The last added is the outermost: the headers go on every answer, the Host check's 400 too.
    app.add_middleware(TrustedHost, names=trusted_host_names(config.trusted_hosts, config.auth, config.bind[0]))
    app.add_middleware(SecurityHeaders, docs=config.docs)
    return app


def _drop_none_keys(res):
    # Points carry `key` only when the series are split (by=proto|direction).
    return {**res, "points": [{k: v for k, v in p.items() if v is not None} for p in res["points"]]}


__all__ = ["create_app", "ApiError", "PERIODS"]
