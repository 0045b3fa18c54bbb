"""Response models of the API: they make /openapi.json describe every answer exactly."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: one message."""

    error: str


class QueryOut(BaseModel):
    """A flow search: rows (lists in `columns` order), newest flow first; `bound`: the time bound applied."""

    id: str
    query: str
    bound: str
    columns: list[str]
    rows: list[list[Any]]
    count: int
    truncated: bool
    elapsed: float
    cached: bool


class SearchAcceptedOut(BaseModel):
    """A flow search not done yet (202): fetch `result_url` later, `status_url` tells its state."""

    id: str
    query: str
    state: Literal["queued", "running"]
    status_url: str
    result_url: str


class StateChange(BaseModel):
    """One entry of a search's history."""

    state: Literal["queued", "running", "done", "failed", "expired"]
    at: str


class StatusOut(BaseModel):
    """State of a query id, its history (every run), and the figures of its last run."""

    id: str
    query: str
    bound: str
    state: Literal["queued", "running", "done", "failed", "expired"]
    history: list[StateChange]
    rows: Optional[int]
    truncated: Optional[bool]
    seconds: Optional[float]
    bytes: Optional[int]
    error: Optional[str]
    expires: Optional[str]
    expired_by: Optional[Literal["result_ttl", "result_spool_bytes"]]
    shared: int
    result_url: str


class IdsOut(BaseModel):
    """Known query ids, newest first."""

    ids: list[str]


class UrlEntry(BaseModel):
    """One endpoint of the API."""

    path: str
    methods: list[str]
    summary: str


class UrlsOut(BaseModel):
    """The API's endpoints, as Docket's /urls lists its own."""

    urls: list[UrlEntry]


class TrafficPoint(BaseModel):
    """Totals of one window; `key` is the protocol or direction when the series are split."""

    t: str
    bytes: int
    packets: int
    flows: int
    key: Optional[str] = None


class TrafficOut(BaseModel):
    """A traffic series over a period."""

    period: str
    resolution: str
    window: int
    start: str
    end: str
    points: list[TrafficPoint]


class TopRow(BaseModel):
    """One key of a top list."""

    key: str
    bytes: int
    packets: int
    flows: int


class TopOut(BaseModel):
    """A top list over a period."""

    dimension: str
    period: str
    resolution: str
    start: str
    end: str
    rows: list[TopRow]


class RangeOut(BaseModel):
    """Where stored flows are: start of the earliest and end of the latest rollup bucket (null: none)."""

    first: Optional[str]
    last: Optional[str]


class AgentOut(BaseModel):
    """One agent with flows in the window: its interfaces and the end of its latest rollup bucket."""

    agent: str
    interfaces: list[str]
    last_seen: str


class AgentsOut(BaseModel):
    """The agents with flows in the window, most recently seen first."""

    agents: list[AgentOut]


class EventRow(BaseModel):
    """One stored IDEA event, as stored, plus `id` (its IDEA ID) and `agents`: the agents (probes) whose
    flows made it (its `_Myason.Agents`; [] for an event that does not name them)."""

    model_config = ConfigDict(extra="allow")

    id: str
    agents: list[str]


class EventsOut(BaseModel):
    """IDEA events, newest first; `next`: the cursor of the next page, or null."""

    events: list[EventRow]
    next: Optional[str]


class FlowsLinkOut(BaseModel):
    """The flow search covering an event: clauses for /q/{clauses}, that URL, and the page's deep link."""

    clauses: str
    url: str
    page: str


class EventOut(BaseModel):
    """One stored IDEA event, as stored, and the search for its flows."""

    id: str
    idea: dict[str, Any]
    flows: FlowsLinkOut


class GreylistRow(BaseModel):
    """One source address of stored events."""

    address: str
    categories: list[str]
    first_seen: str
    last_seen: str
    events: int


class GreylistOut(BaseModel):
    """The greylist, busiest address first."""

    since: str
    rows: list[GreylistRow]


class StatsOut(BaseModel):
    """Ingest and storage health (see docs/api.md for the fields of each part)."""

    model_config = ConfigDict(extra="allow")

    time: str
    totals: dict[str, Any]
    collectors: list[dict[str, Any]]
    agents: list[dict[str, Any]]
    rejects_by_reason: dict[str, int]
    database: dict[str, Any]


class HealthOut(BaseModel):
    """Liveness."""

    status: Literal["ok"]


ERRORS = {400: {"model": ErrorOut, "description": "bad input"},
          401: {"model": ErrorOut, "description": "missing or wrong bearer token"},
          503: {"model": ErrorOut, "description": "the database cannot answer now"}}
