"""Tests for the agents (probes) detectors record per window and write as `_Myason.Agents`."""
import sys

import pytest

from myason.detect import build_detectors
from myason.detect.base import MAX_AGENTS, Window, as_row
from myason.detect.scan import HorizontalScanDetector
from myason.schema import FIELDS, INDEX
from tests.support.flows import DONE, T0, check_idea, flow

pytest.importorskip("idea.valid")
ATTACKER = "203.0.113.66"


def _scan(agents, n=60, src=ATTACKER):
    """A horizontal scan of n hosts on tcp/22, the i-th probe metered by agents[i % len(agents)]."""
    return [flow(src, "10.0.0.%d" % i, 61000, 22, 6, 1, 44, T0 + i, agent=agents[i % len(agents)])
            for i in range(1, n + 1)]


def _one_event(rows, options=None):
    det = HorizontalScanDetector(options)
    det.feed_rows(rows)
    (ev,) = det.flush()
    return check_idea(ev)


def test_window_keeps_one_agent_bare_then_a_set():
    win = Window(T0)
    assert win.agents is None and win.agent_list() == []
    win.count(flow(ATTACKER, "10.0.0.1", agent=""))       # unknown: nothing recorded
    assert win.agents is None
    for _ in range(3):
        win.count(flow(ATTACKER, "10.0.0.1", agent="edge-1"))
    assert win.agents == "edge-1" and win.agent_list() == ["edge-1"]
    win.count(flow(ATTACKER, "10.0.0.2", agent="edge-2"))
    win.count(flow(ATTACKER, "10.0.0.3", agent="edge-1"))
    assert win.agents == {"edge-1", "edge-2"} and win.agent_list() == ["edge-1", "edge-2"]
    assert not win.agents_capped and win.flows == 6


def test_window_caps_the_agents_and_flags_the_overflow():
    win = Window(T0)
    names = ["p%02d" % i for i in range(MAX_AGENTS + 5)]
    for name in names:
        win.count(flow(ATTACKER, "10.0.0.1", agent=name))
        win.count(flow(ATTACKER, "10.0.0.1", agent=name))
    assert win.agent_list() == names[:MAX_AGENTS] and win.agents_capped
    assert win.flows == 2 * len(names)


def test_a_window_of_one_agent_costs_no_set():
    one, none = Window(T0), Window(T0)
    for _ in range(10):
        one.count(flow(ATTACKER, "10.0.0.1", agent="edge-1"))
    assert sys.getsizeof(one.agents) < sys.getsizeof({"edge-1"})
    assert type(one.agents) is str and none.agents is None


def test_event_names_one_agent():
    ev = _one_event(_scan(["edge-1"]))
    assert ev["_Myason"] == {"Agents": ["edge-1"]}


def test_event_names_several_agents_sorted_once():
    ev = _one_event(_scan(["edge-2", "edge-1", "edge-2", "core-9"]))
    assert ev["_Myason"] == {"Agents": ["core-9", "edge-1", "edge-2"]}


def test_event_past_the_cap_says_so():
    names = ["p%02d" % i for i in range(40)]
    ev = _one_event(_scan(names, n=80))
    assert ev["_Myason"]["Agents"] == sorted(names[1:MAX_AGENTS + 1])   # the first to arrive
    assert ev["_Myason"]["AgentsCapped"] is True


def test_event_without_a_known_agent_has_no_extension():
    ev = _one_event(_scan([""]))
    assert "_Myason" not in ev


def test_dict_rows_give_their_agent():
    assert as_row({"src_ip": ATTACKER, "agent": "edge-7"})[INDEX["agent"]] == "edge-7"
    assert as_row({"src_ip": ATTACKER})[INDEX["agent"]] == ""
    rows = [dict(zip(FIELDS, flow(ATTACKER, "10.0.0.%d" % i, 61000, 22, 6, 1, 44, T0 + i, agent="edge-7")))
            for i in range(1, 61)]
    assert _one_event(rows)["_Myason"] == {"Agents": ["edge-7"]}


def _attacks(agent):
    """One attack per built-in detector; the agent `agent` meters every flow of it."""
    rows = [flow("203.0.113.1", "10.0.1.%d" % i, 61000, 3389, 6, 1, 44, T0 + i, agent=agent)
            for i in range(1, 61)]                                          # horizontal scan
    rows += [flow("203.0.113.2", "10.0.0.7", 62000, p, 6, 1, 44, T0 + p, agent=agent)
             for p in range(1, 61)]                                         # vertical scan
    rows += [flow("203.0.113.3", "10.0.0.22", 40000 + i, 22, 6, 14, None, T0 + 5 * i, 2, DONE, agent=agent)
             for i in range(25)]                                            # brute force
    rows += [flow("203.0.113.4", "10.0.0.80", 1024 + i, 80, 6, 1, 60, T0 + i / 100, agent=agent)
             for i in range(2500)]                                          # SYN flood
    rows += [flow("10.0.0.9", "192.0.2.77", 50000, 8443, 6, 9, None, T0, 1, DONE, agent=agent)]
    return rows


@pytest.mark.parametrize("batch", [True, False])
def test_every_detector_names_the_agents_of_its_flows(batch):
    config = {"detectors": {"blocklist": {"lists": [{"name": "cc", "cidrs": ["192.0.2.0/24"]}]}}}
    dets = build_detectors(config)
    # Two probes see the same attacks (a tap on each side of a link): each flow twice.
    rows = sorted(_attacks("edge-1") + _attacks("edge-2"), key=lambda r: r[INDEX["first"]])
    if batch:
        dets.feed_rows(rows)            # the collector's path (dos: its inlined loop)
    else:
        for det in dets.detectors:
            for row in rows:
                det.feed(row)
    events = dets.flush()
    by_detector = {}
    for ev in events:
        check_idea(ev)
        by_detector.setdefault(ev["Description"].split(" ")[0], []).append(ev["_Myason"])
    assert sorted(by_detector) == ["Horizontal", "Login", "SYN", "Traffic", "Vertical"]
    for name, exts in by_detector.items():
        assert exts == [{"Agents": ["edge-1", "edge-2"]}], name
