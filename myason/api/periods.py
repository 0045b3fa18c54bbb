"""Periods of the traffic and top views: which rollup table, how wide a point, how long to cache."""
from __future__ import annotations

import math
from dataclasses import dataclass

MINUTE, HOUR, DAY = 60, 3600, 86400
RESOLUTIONS = {"1m": MINUTE, "15m": 15 * MINUTE, "1h": HOUR, "1d": DAY}


@dataclass(frozen=True)
class Period:
    """A period name, its length, the rollup resolution read, the width of one point, the cache TTL."""

    name: str
    seconds: int
    resolution: str
    window: int
    ttl: float

    @property
    def points(self) -> int:
        """Number of windows covering the period."""
        return math.ceil(self.seconds / self.window)

    def windows(self, now: float) -> tuple:
        """(start, end) Unix seconds: `points` whole windows, aligned to the epoch, the last holding `now`."""
        end = (math.floor(now / self.window) + 1) * self.window
        return end - self.points * self.window, end

    def windows_until(self, end: float) -> tuple:
        """(start, end) Unix seconds: `points` whole windows, the last ending at the first boundary at or after `end`.

        For a period that ends at a given time (the end of stored data, say): unlike windows(),
        a window that would only start at `end` is not part of it.
        """
        hi = math.ceil(end / self.window) * self.window
        return hi - self.points * self.window, hi


# Windows are whole multiples of the resolution and give 25-60 points; the TTL is about one
# rollup bucket of the resolution read (less for the fine ones, which people watch live).
PERIODS = {
    "1h": Period("1h", HOUR, "1m", MINUTE, 30.0),
    "6h": Period("6h", 6 * HOUR, "1m", 10 * MINUTE, 60.0),
    "1d": Period("1d", DAY, "15m", 30 * MINUTE, 300.0),
    "1w": Period("1w", 7 * DAY, "1h", 4 * HOUR, 900.0),
    "1m": Period("1m", 30 * DAY, "1h", 12 * HOUR, 1800.0),
    "3m": Period("3m", 90 * DAY, "1d", 2 * DAY, 3600.0),
    "1y": Period("1y", 365 * DAY, "1d", 7 * DAY, 3600.0),
}


def get_period(name: str) -> Period:
    """The Period called `name`; ValueError naming the known ones otherwise."""
    try:
        return PERIODS[name]
    except (KeyError, TypeError):
        raise ValueError("unknown period %r (known: %s)" % (name, ", ".join(PERIODS))) from None
