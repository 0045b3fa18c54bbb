"""The collector's summary at exit: a readable table on stderr; --summary-json stays machine-readable."""
import re

from myason import cli

SUMMARY = {
    "datagrams": 1234, "bytes": 5678901, "oversized": 2, "queue_dropped": 3, "kernel_drops": 4,
    "flows_spooled": 48000, "events_spooled": 5,
    "rejects": {"unknown_agent": 7, "bad_token": 3},
    "agents": {
        "edge-01": {"datagrams": 1000, "flows": 40000, "gaps": 2, "replays": 1, "restarts": 0,
                    "last_seen": 1700000000.25},
        "lab-7": {"datagrams": 227, "flows": 8000, "gaps": 0, "replays": 0, "restarts": 1,
                  "last_seen": 1700000123.9},
    },
    "spool_dropped": 0,
    "writers": {"sqlite": {"batches": 10, "rows": 48000, "events": 5, "errors": 0, "failed_batches": 0,
                           "latency_seconds": 0.005623191000040606, "connected": 1}},
    "spool": {"sqlite": {"waiting": 0, "bytes": 0, "errors": 0}},
    "queue_depth": 0, "processors_alive": 0,
}


def text():
    return cli.format_summary(SUMMARY, "collector")


def test_no_raw_python_values():
    out = text()
    assert "{" not in out and "}" not in out and "'" not in out
    assert "1700000000" not in out


def test_one_row_per_agent_with_last_seen_in_iso_utc():
    lines = text().splitlines()
    header = next(line for line in lines if "last seen" in line)
    assert header.split()[:6] == ["agent", "datagrams", "flows", "gaps", "replays", "restarts"]
    row = next(line for line in lines if line.split()[:1] == ["edge-01"])
    assert row.split() == ["edge-01", "1000", "40000", "2", "1", "0", "2023-11-14T22:13:20Z"]
    row = next(line for line in lines if line.split()[:1] == ["lab-7"])
    assert row.split()[-1] == "2023-11-14T22:15:23Z"
    # Columns line up: every value ends where its header does.
    assert len({len(line.rstrip()) for line in (header, row)}) == 1


def test_rejects_by_reason_drops_and_writers_follow_the_agents():
    out = text()
    agents_at = out.index("edge-01")
    assert re.search(r"rejects\s+unknown_agent 7, bad_token 3", out)
    assert re.search(r"drops\s+.*kernel_drops 4.*queue_dropped 3.*oversized 2", out)
    writer = next(line for line in out.splitlines() if line.split()[:1] == ["sqlite"] and "48000" in line)
    assert writer.split()[:6] == ["sqlite", "10", "48000", "5", "0", "0"]
    assert agents_at < out.index("rejects") < out.index("drops") < out.index("48000", agents_at + 200)


def test_totals_and_unknown_counters_are_not_lost():
    out = cli.format_summary(dict(SUMMARY, brand_new_counter=17), "collector")
    assert "1234 datagrams" in out and "48000 flows" in out
    assert "brand_new_counter 17" in out


def test_no_agents_and_no_rejects_say_so():
    out = cli.format_summary({"datagrams": 0, "rejects": {}, "agents": {}, "writers": {}}, "collector")
    assert re.search(r"agents\s+none", out) and re.search(r"rejects\s+none", out)


def test_agent_summary_is_unchanged():
    out = cli.format_summary({"flows_exported": 3, "rejects": {"non_ip": 2}}, "agent")
    assert out.splitlines() == ["myason agent summary:", "  flows_exported           3",
                                "  rejects                  non_ip=2"]
