"""The FastAPI application: bearer-token auth, errors as {"error": ...}, middleware; routes in api/routes/."""
from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from myason import __version__
from myason.api import routes
from myason.api.cache import Memo
from myason.api.config import ApiConfig, resolve_database, resolve_token
from myason.api.context import ApiError, Context
from myason.api.db import Database, DatabaseError, open_database
from myason.api.periods import PERIODS
from myason.api.routes.service import STATIC_DIR
from myason.api.searches import GAUGES as SEARCH_GAUGES, Searches
from myason.api.security import SecurityHeaders, TrustedHost, trusted_host_names
from myason.api.spool import ResultSpool
from myason.api.telemetry import Telemetry
from myason.metrics import StatsCollector

log = logging.getLogger("myason.api")


def _error(status, message, headers=None):
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc):
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
        parts.append("%s: %s" % (where, err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


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
    # Every parameter takes one value: given twice (?agent=a&agent=b), FastAPI would use the last
    # one silently, and the caller may have meant either or both.
    for name in known:
        if len(request.query_params.getlist(name)) > 1:
            raise ApiError(400, "parameter %r given %d times: it takes one value"
                           % (name, len(request.query_params.getlist(name))))


def create_app(config: ApiConfig, database: Optional[Database] = None, token: Optional[str] = None,
               clock=time.time) -> FastAPI:
    """The API over `database` (default: the one `config` names); auth with `token` unless config.auth is off."""
    if database is None:
        spec = resolve_database(config)
        database = open_database(spec, config.pool_size, config.query_timeout)
    if config.auth and token is None:
        token = resolve_token(config)
    # A configured result spool is taken at once (a bad or busy directory stops the start); the
    # default one, a temp dir, when the first search runs.
    spool = ResultSpool(config.result_spool, config.result_spool_bytes, config.result_ttl, clock)
    if config.result_spool:
        spool.open()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        app.state.searches.close()

    # /docs and /redoc load their scripts from a CDN without integrity checks: off unless asked for.
    app = FastAPI(lifespan=lifespan, title="myason API", version=__version__, dependencies=[Depends(known_params_only)],
                  docs_url="/docs" if config.docs else None, redoc_url="/redoc" if config.docs else None,
                  description="Flow search (Docket-style path grammar), traffic, top lists, events and "
                              "store health. Authenticate with `Authorization: Bearer TOKEN`.")
    app.state.db = database
    app.state.token = token if config.auth else None
    app.state.config = config
    app.state.memo = memo = Memo(config.query_cache_size, config.query_cache_bytes)
    app.state.periods = periods = Memo(config.period_cache_size, config.period_cache_bytes)
    cache_on = config.query_cache_size > 0 and config.query_cache_bytes > 0
    app.state.searches = searches = Searches(spool, config.search_workers, config.search_queue, config.known_ids,
                                             config.query_cache_ttl if cache_on else 0.0, memo, clock)
    app.state.telemetry = telemetry = Telemetry(lambda: {"cache": {"query": memo.stats(), "period": periods.stats()}})
    telemetry.registry.register(StatsCollector(searches.metrics, gauges=SEARCH_GAUGES, prefix="myason_api"))
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

    ctx = Context(config, database, clock, memo, periods, searches, telemetry)
    for topic in routes.TOPICS:
        app.include_router(topic.build(ctx, auth))

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    # The last added is the outermost: the headers go on every answer, the Host check's 400 too.
    app.add_middleware(TrustedHost, names=trusted_host_names(config.trusted_hosts, config.auth, config.bind[0]))
    app.add_middleware(SecurityHeaders, docs=config.docs)
    return app


__all__ = ["create_app", "ApiError", "PERIODS", "STATIC_DIR"]
