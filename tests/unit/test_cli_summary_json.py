"""`myason collector --summary-json FILE`: the summary counters as machine-readable JSON."""
import json

from myason import cli


def test_collector_accepts_summary_json_option():
    args = cli.build_parser().parse_args(["collector", "--summary-json", "out.json"])
    assert args.summary_json == "out.json"
    assert cli.build_parser().parse_args(["collector"]).summary_json is None


def test_write_summary_json_round_trips_nested_counters(tmp_path):
    summary = {"datagrams": 12, "rejects": {"bad_token": 3, "replay": 1},
               "agents": {"a1": {"gaps": 2, "flows": 40}}, "writers": {"sqlite": {"latency_seconds": 0.25}}}
    path = tmp_path / "summary.json"
    cli.write_summary_json(str(path), summary)
    assert json.loads(path.read_text()) == summary
    assert not (tmp_path / "summary.json.tmp").exists()


def test_write_summary_json_replaces_an_old_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("stale, not json")
    cli.write_summary_json(str(path), {"datagrams": 1})
    assert json.loads(path.read_text()) == {"datagrams": 1}
