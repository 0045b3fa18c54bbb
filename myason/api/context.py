"""What every route shares: the app's Context, errors as {"error": ...}, parameter patterns and parsers."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

from myason.api.grammar import GrammarError, parse_time, resolve_time
from myason.errors import ConfigError

LAST_TIME = 253402300800.0      # 10000-01-01: the databases' and ISO 8601's four-digit years
END_HELP = ("end the period here instead of now: ISO 8601 (2024-05-01T12:00:00Z, no zone = UTC), Unix seconds,"
            " or a duration ago (2h)")
PeriodName = Literal["1h", "6h", "1d", "1w", "1m", "3m", "1y"]
DURATION = r"^[0-9]{1,6}[smhdw]$"
AGENT = r"^[A-Za-z0-9._:-]{1,64}$"
IF_NAME = r"^[!-.0-~]{1,15}$"     # printable ASCII but '/', as Linux interface names go
CSV_DOC = {"content": {"text/csv": {"schema": {"type": "string"}}}}


class ApiError(Exception):
    """An answer other than 200: HTTP status and the message of {"error": ...}."""

    def __init__(self, status, message):
        self.status = status
        super().__init__(message)


@dataclasses.dataclass
class Context:
    """One app's database, config, caches and clock, handed to every router."""

    config: Any
    database: Any
    clock: Callable[[], float]
    memo: Any           # myason.api.cache.Memo of flow search results
    periods: Any        # Memo of period answers (traffic, top, range, stats)
    searches: Any       # myason.api.searches.Searches: query ids, their states and results
    telemetry: Any

    def period_cached(self, key, ttl, fn):
        return self.periods.get_or_run(key, ttl, fn)[0]


def parse_since(key, text):
    """Seconds of a `since` duration; 400 for a bad one."""
    from myason.store.query import parse_duration
    try:
        return parse_duration(key, text)
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None


def parse_end(text, now):
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
