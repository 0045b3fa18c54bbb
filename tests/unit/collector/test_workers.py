"""Processor processes: the counters of a child that died go on in its replacement's."""
from myason.collector.workers import add_snapshots


def test_a_replacement_child_adds_to_the_dead_childs_counters():
    dead = {"rows": 100, "events": 2, "batches": 5, "spool_dropped": 3, "blocked_seconds": 1.5, "commit_errors": 1,
            "blocked": 1, "stalled": 1, "uncommitted": 7, "rejects": {"replay": 2, "bad_token": 1},
            "agents": {"a": {"datagrams": 10, "flows": 100, "gaps": 1, "replays": 2, "restarts": 0,
                             "last_seen": 50.0, "last_seq": 9}}}
    new = {"rows": 20, "events": 0, "batches": 1, "spool_dropped": 0, "blocked_seconds": 0.0, "commit_errors": 0,
           "blocked": 0, "stalled": 0, "uncommitted": 2, "rejects": {"replay": 1},
           "agents": {"a": {"datagrams": 2, "flows": 20, "gaps": 4, "replays": 0, "restarts": 0,
                            "last_seen": 60.0, "last_seq": 15},
                      "b": {"datagrams": 1, "flows": 5, "gaps": 0, "replays": 0, "restarts": 0,
                            "last_seen": 61.0, "last_seq": 0}}}
    got = add_snapshots(dead, new)
    assert (got["rows"], got["events"], got["batches"], got["spool_dropped"], got["commit_errors"]) == (120, 2, 6, 3, 1)
    assert got["blocked_seconds"] == 1.5
    # What describes the present comes from the living child only.
    assert (got["blocked"], got["stalled"], got["uncommitted"]) == (0, 0, 2)
    assert got["rejects"] == {"replay": 3, "bad_token": 1}
    assert got["agents"]["a"] == {"datagrams": 12, "flows": 120, "gaps": 5, "replays": 2, "restarts": 0,
                                  "last_seen": 60.0, "last_seq": 15}
    assert got["agents"]["b"]["flows"] == 5
    # Twice in a row (a second death): still adds up.
    assert add_snapshots(got, new)["rows"] == 140
