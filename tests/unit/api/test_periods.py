"""Periods: resolution, window and TTL per period, aligned windows."""
import pytest

from myason.api.periods import PERIODS, RESOLUTIONS, get_period

EXPECTED = {"1h": ("1m", 60), "6h": ("1m", 600), "1d": ("15m", 1800), "1w": ("1h", 4 * 3600),
            "1m": ("1h", 12 * 3600), "3m": ("1d", 2 * 86400), "1y": ("1d", 7 * 86400)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_table_and_window(name):
    p = get_period(name)
    assert (p.resolution, p.window) == EXPECTED[name]
    assert 25 <= p.points <= 60
    assert p.window % RESOLUTIONS[p.resolution] == 0
    assert p.ttl > 0


def test_ttl_grows_with_the_period():
    ttls = [PERIODS[n].ttl for n in ("1h", "6h", "1d", "1w", "1m", "3m", "1y")]
    assert ttls == sorted(ttls)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_windows_are_aligned_and_hold_now(name):
    p = get_period(name)
    now = 1700049623.5
    start, end = p.windows(now)
    assert start % p.window == 0 and end % p.window == 0
    assert start <= now - p.seconds + p.window and end - p.window <= now < end
    assert (end - start) // p.window == p.points


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_windows_until_an_end(name):
    p = get_period(name)
    for end in (1700049623.5, 1700049600.0 // p.window * p.window):
        start, hi = p.windows_until(end)
        # The last window ends at the first boundary at or after `end`: nothing after it is shown.
        assert hi % p.window == 0 and hi - p.window < end <= hi
        assert (hi - start) // p.window == p.points


@pytest.mark.parametrize("bad", ["2h", "", "1H", None, "month"])
def test_unknown_period(bad):
    with pytest.raises(ValueError, match="unknown period"):
        get_period(bad)
