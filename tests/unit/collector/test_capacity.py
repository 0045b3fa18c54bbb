"""Capacity planning: sustained rate per writer, spool growth, and a warning long before the cap."""
import logging

from myason.collector.capacity import CapacityPlanner


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def feed(p, clock, name, samples, every=10.0):
    for spool_bytes, rows in samples:
        p.observe(name, spool_bytes, rows)
        clock.t += every


def test_a_steadily_growing_spool_warns_with_its_rate_and_time_to_full(caplog):
    clock = Clock()
    p = CapacityPlanner(max_bytes=1_000_000_000, clock=clock)
    # 600 s: the spool grows 1 MB/s while the writer stores 50,000 flows/s.
    feed(p, clock, "postgresql", [(i * 10_000_000, i * 500_000) for i in range(61)])
    with caplog.at_level(logging.WARNING, logger="myason.collector"):
        f = p.figures("postgresql")
    assert f["rows_per_second"] == 50000.0
    assert abs(f["spool_growth_bytes_per_second"] - 1e6) < 1
    assert f["spool_seconds_to_full"] == 400.0 and f["spool_growing"] == 1
    assert "grows steadily" in caplog.text and "postgresql" in caplog.text
    # Said once, not at every scrape.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="myason.collector"):
        p.figures("postgresql")
    assert "grows steadily" not in caplog.text


def test_a_burst_that_drains_and_a_far_cap_do_not_warn():
    clock = Clock()
    p = CapacityPlanner(max_bytes=1_000_000_000, clock=clock)
    # Up for a minute (a database restart), then back to empty.
    burst = [(min(i, 6) * 20_000_000 if i < 12 else 0, i * 1000) for i in range(61)]
    feed(p, clock, "sqlite", burst)
    assert p.figures("sqlite")["spool_growing"] == 0
    # Growing, but slowly: the cap is days away.
    feed(p, clock, "jsonl", [(i * 1000, i) for i in range(61)])
    f = p.figures("jsonl")
    assert f["spool_growth_bytes_per_second"] > 0 and f["spool_seconds_to_full"] > 3600
    assert f["spool_growing"] == 0


def test_too_short_a_window_says_nothing_yet():
    clock = Clock()
    p = CapacityPlanner(max_bytes=10_000_000, clock=clock)
    feed(p, clock, "pg", [(i * 1_000_000, 0) for i in range(5)])
    f = p.figures("pg")
    assert f["spool_growth_bytes_per_second"] > 0 and f["spool_growing"] == 0
    assert p.figures("none") == {"rows_per_second": 0.0, "spool_growth_bytes_per_second": 0.0,
                                 "spool_seconds_to_full": -1.0, "spool_growing": 0}
