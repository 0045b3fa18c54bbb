"""The detector interface: per-key windows, bounded state, allowlist, one event per key and window.

A detector keeps one window per key (a source, a target, ...). A key's window starts with its
earliest flow (flow time `first`), in whatever order the flows arrive (a late flow moves it
back: window_for), and lasts `window` seconds; it closes when poll(now) is called with
now >= start + window, when a later flow of the same key falls after it, or when the key is
evicted. A closing window yields at most one event, with the window's aggregated counts, if it
crossed the detector's threshold. Windows are kept in the order they opened (an OrderedDict),
which is start order up to the flows' export delay, so poll() only looks at the windows that are
due, and a full table evicts the oldest window first (the one nearest to closing; its event, if
any, is emitted early rather than lost).

Times: flow times and `now` share one clock. A live collector polls with time.time(); a replay
polls with the newest flow time seen (`watermark`) and calls flush() at the end.
"""
from __future__ import annotations

import collections

from myason.detect.idea import build_event, check_node_name
from myason.nets import NetSet
from myason.options import check_bool, check_float, check_int, parse_options
from myason.schema import FIELDS, indexes

# Flow columns detectors read (rows start with FIELDS whatever follows).
SRC, DST, SPORT, DPORT, PROTO, PACKETS, BYTES, FIRST, LAST, FLAGS, AGENT = (
    indexes("src_ip", "dst_ip", "src_port", "dst_port", "proto", "packets", "bytes", "first", "last",
            "tcp_flags", "agent"))
_NCOLS = max(SRC, DST, SPORT, DPORT, PROTO, PACKETS, BYTES, FIRST, LAST, FLAGS, AGENT) + 1
_ROW_DEFAULTS = {"src_ip": "", "dst_ip": "", "first": 0.0, "last": 0.0, "agent": ""}
# Agents (probes) named per window at most: one or two in practice; past it the event says so
# (`AgentsCapped`) instead of the window growing with every probe of a large deployment.
MAX_AGENTS = 16

TCP, UDP, ICMP, ICMP6, SCTP = 6, 17, 1, 58, 132
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMP6: "ipv6-icmp", SCTP: "sctp"}
DEFAULT_NODE_NAME = "org.example.myason"

# Options every detector takes (myason.options spec); a detector's SPEC adds or overrides entries.
COMMON_SPEC = {
    "enabled": (True, check_bool()),
    "window": (300.0, check_float(lo=0, lo_open=True)),
    "max_keys": (100000, check_int(lo=1)),
    "max_distinct": (256, check_int(lo=1)),
    "max_pending_events": (10000, check_int(lo=1)),
}


def proto_name(proto) -> str:
    """IANA keyword of an IP protocol number ('tcp', 'udp', ...), else the number as text."""
    return PROTO_NAMES.get(proto, str(proto))


def as_row(flow):
    """A list with the FIELDS detectors read (up to `agent`) of a dict keyed by field name; a row
    is returned as is."""
    if isinstance(flow, dict):
        return [flow.get(name, _ROW_DEFAULTS.get(name, 0)) for name in FIELDS[:_NCOLS]]
    return flow


class Window:
    """Aggregates of one key's window: times, counts, a capped distinct set, detector extras.

    `start` places the window (see Detector.window_for); `first` and `last` are the earliest
    start and latest end of the flows counted, which the event reports. `agents`: the agents
    (probes) whose flows were counted, None (none known), one id bare, or a set of at most
    MAX_AGENTS ids (then `agents_capped` tells that more took part).
    """

    __slots__ = ("start", "first", "last", "flows", "packets", "bytes", "distinct", "capped",
                 "extra", "extra_set", "agents", "agents_capped")

    def __init__(self, start):
        self.start = start
        self.first = start
        self.last = start
        self.flows = 0
        self.packets = 0
        self.bytes = 0
        # One value kept bare until a second distinct one arrives: most keys (one flow from a
        # one-off source) never need a set, which is the bulk of memory under a million keys.
        self.distinct = None
        self.capped = False
        self.extra = 0
        self.extra_set = None
        # As `distinct`: one agent bare, as nearly every window has (one probe sees the traffic).
        self.agents = None
        self.agents_capped = False

    def count(self, row):
        """Add a flow's packets, bytes, times and agent."""
        self.flows += 1
        self.packets += row[PACKETS]
        self.bytes += row[BYTES]
        first, last = row[FIRST], row[LAST]
        if first < self.first:
            self.first = first
        if last > self.last:
            self.last = last
        agent = row[AGENT]
        if agent != self.agents and agent:
            self.add_agent(agent)

    def add_agent(self, agent):
        """Record the agent of a counted flow ('' is unknown), keeping at most MAX_AGENTS."""
        if agent:
            self.agents = _add(self.agents, agent, MAX_AGENTS, self, "agents_capped")

    def agent_list(self):
        """The agents of the counted flows, sorted."""
        return sorted(_values(self.agents))

    def add(self, value, cap):
        """Add value to the distinct set, keeping at most cap values (then `capped` is set)."""
        self.distinct = _add(self.distinct, value, cap, self)

    def values(self):
        """The distinct values as a set."""
        return _values(self.distinct)

    def n_distinct(self):
        """How many distinct values are kept (a lower bound when capped)."""
        d = self.distinct
        return 0 if d is None else len(d) if type(d) is set else 1


def _add(current, value, cap, win, flag="capped"):
    # `flag`: the window's attribute set when a value is left out (the cap reached).
    if current is None:
        return value
    if type(current) is set:
        if value not in current:
            if len(current) < cap:
                current.add(value)
            else:
                setattr(win, flag, True)
        return current
    if current == value:
        return current
    if cap < 2:
        setattr(win, flag, True)
        return current
    return {current, value}


def _values(current):
    if current is None:
        return set()
    return set(current) if type(current) is set else {current}


class Detector:
    """Base class: subclasses set name and SPEC, and implement _feed(row, t) and _event()."""

    name = ""
    SPEC = {}

    def __init__(self, options=None, node_name=DEFAULT_NODE_NAME, allowlist=None):
        """options: this detector's config; allowlist: a NetSet (or CIDRs) never reported."""
        opts = parse_options("detect.%s" % self.name, options or {}, {**COMMON_SPEC, **self.SPEC})
        self.options = opts
        self.enabled = opts["enabled"]
        self.window = opts["window"]
        self.max_keys = opts["max_keys"]
        self.max_distinct = opts["max_distinct"]
        self.max_pending = opts["max_pending_events"]
        self.node_name = check_node_name(node_name, "detect.node_name")
        if allowlist is None or isinstance(allowlist, NetSet):
            self.allow = allowlist if allowlist is not None else NetSet(())
        else:
            self.allow = NetSet(allowlist, key="detect.allowlist")
        self._windows = collections.OrderedDict()
        self._ready = []
        self.watermark = 0.0
        self.stats = {"flows": 0, "allowlisted": 0, "windows": 0, "evicted": 0, "events": 0,
                      "dropped_events": 0}
        self.configure(opts)

    def configure(self, opts):
        """Subclass hook: read detector-specific options (already type-checked)."""

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, flow) -> None:
        """Account one enriched flow (a row list, FIELDS first, or a dict by field name)."""
        row = as_row(flow)
        self.stats["flows"] += 1
        if row[LAST] > self.watermark:
            self.watermark = row[LAST]
        allow = self.allow
        if allow and (allow.contains(row[SRC]) or allow.contains(row[DST])):
            self.stats["allowlisted"] += 1
            return
        self._feed(row, row[FIRST])

    def feed_rows(self, rows) -> None:
        """feed() every row."""
        for row in rows:
            self.feed(row)

    def _feed(self, row, t):
        """Account one flow that passed the allowlist; t is its start time."""
        raise NotImplementedError

    def _select(self, rows):
        """The rows worth a _feed call (subclasses: a C-level pre-filter; the default keeps all)."""
        return rows

    def _feed_rows(self, rows) -> None:
        """_feed() every row that passed the allowlist, in order (DetectorSet's batch path)."""
        feed = self._feed
        for row in self._select(rows):
            feed(row, row[FIRST])

    def window_for(self, key, t) -> Window:
        """The open window of key for a flow at t; closes an elapsed one, evicts when full."""
        windows = self._windows
        win = windows.get(key)
        if win is not None:
            if t < win.start + self.window:
                if t < win.start and win.last < t + self.window:
                    # A flow exported late (an unanswered probe held for the idle timeout while
                    # later probes, ended by RST, left at once) moves the window back to its own
                    # start: the window follows the flows' times, not their arrival order. Not
                    # when that would leave a counted flow past the window's end, as a long flow
                    # does (started long ago, exported when it ended): it is counted, but moving
                    # the window back for it would close the window at once.
                    win.start = t
                return win
            # Re-inserted below, so the table stays in the order the windows opened.
            del windows[key]
            self._close(key, win, t)
        elif len(windows) >= self.max_keys:
            old_key, old = windows.popitem(last=False)
            self.stats["evicted"] += 1
            self._close(old_key, old, t)
        win = windows[key] = Window(t)
        self.stats["windows"] += 1
        return win

    # -- closing ---------------------------------------------------------------------------

    def _close(self, key, win, detect_time):
        event = self._event(key, win, detect_time)
        if event is not None:
            if len(self._ready) >= self.max_pending:
                # Nobody polls (or a storm of keys): memory stays bounded, the loss is counted.
                self.stats["dropped_events"] += 1
                return
            self.stats["events"] += 1
            self._ready.append(event)

    def _event(self, key, win, detect_time):
        """The event for a closed window, or None when it stayed below the threshold."""
        raise NotImplementedError

    def poll(self, now) -> list:
        """Events of the windows that ended by `now` (plus any from evictions); removes them."""
        windows, span = self._windows, self.window
        due = []
        for key, win in windows.items():
            if win.start + span > now:
                break
            due.append(key)
        for key in due:
            self._close(key, windows.pop(key), now)
        events, self._ready = self._ready, []
        return events

    def flush(self, now=None) -> list:
        """Close every window now (shutdown, end of a replay) and return the events."""
        now = self.watermark if now is None else now
        windows = self._windows
        while windows:
            key, win = windows.popitem(last=False)
            self._close(key, win, now)
        events, self._ready = self._ready, []
        return events

    def __len__(self):
        """Keys currently tracked."""
        return len(self._windows)

    def event(self, category, win, detect_time, sources, targets, description, **extra):
        """build_event() with this detector's node name, the window, its times and counts.

        The times are those of the counted flows, so they do not depend on the flows' arrival
        order: EventTime is the earliest flow start and CeaseTime the latest flow end. The
        window (WinStartTime, WinEndTime) opens with the earliest flow and lasts `window`
        seconds, but ends at the detection when closed earlier (flush, eviction), and holds
        every counted flow's end. Hence WinStartTime <= EventTime <= CeaseTime <= WinEndTime <=
        DetectTime.
        """
        # The detection clock can be behind CeaseTime: a window rolled over or evicted by a flow
        # closes at that flow's start (a flow time, as with the 'flow' clock), which can precede
        # the end of a counted flow that ran long or was exported late, and a wall clock can lag
        # an agent's. Nothing is detected before the activity it reports, so the later of the two.
        detect_time = max(detect_time, win.last)
        end = max(win.last, min(win.first + self.window, detect_time))
        return build_event(category, detect_time, (win.first, end), sources, targets,
                           {"conns": win.flows, "flows": win.flows, "packets": win.packets,
                            "bytes": win.bytes},
                           description, self.node_name, event_time=win.first,
                           cease_time=win.last, agents=win.agent_list(),
                           agents_capped=win.agents_capped, **extra)
