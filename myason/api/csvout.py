"""CSV answers of the API, with spreadsheet formulas neutralised.

Some cells carry text an agent chose (`if_name` accepts any printable characters, agent ids,
event categories): a cell such as `=HYPERLINK(...)` would run as a formula when the file is
opened in a spreadsheet. As OWASP recommends ("CSV injection"), a text cell that starts with
= + - @, a tab or a carriage return gets a leading single quote. Numbers stay numbers: a
negative int or float is data, not a formula, and the cell is written unchanged.
"""
from __future__ import annotations

import csv
import io

from fastapi import Request
from fastapi.responses import Response

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """`value` for a CSV cell: a string starting like a formula gets a leading quote, the rest is unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def wants_csv(request: Request, name: str = "") -> bool:
    """True for a `.csv` path or an Accept header asking for text/csv."""
    return name.endswith(".csv") or "text/csv" in request.headers.get("accept", "")


def csv_text(columns, rows) -> str:
    """rows (sequences) under a header line, every text cell through safe_cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([safe_cell(c) for c in columns])
    for r in rows:
        w.writerow([safe_cell(v) for v in r])
    return buf.getvalue()


def csv_response(columns, rows) -> Response:
    """rows under a header line, as text/csv (formulas neutralised)."""
    return Response(csv_text(columns, rows), media_type="text/csv; charset=utf-8")
