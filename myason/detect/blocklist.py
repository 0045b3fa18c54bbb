"""Traffic to or from addresses on configured CIDR lists -> each list's IDEA category.

Each list: name, `cidrs` inline and/or `file` (one CIDR a line, '#' comments), `category`
(e.g. "Intrusion.Botnet", "Anomaly.Traffic"), optional `report` ("listed": the listed address is
the event Source and its peers the Target, the default; "peer": the local peers are the Source,
e.g. bots calling a C&C) and `source_type`/`target_type` IDEA Type tags. One event per (list,
listed address) per window, with every flow of that window counted.
"""
from __future__ import annotations

from myason.detect.base import DPORT, DST, PROTO, SRC, Detector, proto_name
from myason.detect.idea import check_category
from myason.nets import NetSet, read_cidr_file
from myason.errors import ConfigError
from myason.options import check_int, check_list

_LIST_KEYS = {"name", "cidrs", "file", "category", "report", "source_type", "target_type"}
_MAX_PORTS = 16


class _List:
    __slots__ = ("name", "nets", "category", "report", "source_type", "target_type")

    def __init__(self, index, spec):
        key = "detect.blocklist.lists[%d]" % index
        if not isinstance(spec, dict):
            raise ConfigError(key, "must be a mapping with name, cidrs/file and category")
        for k in spec:
            if k not in _LIST_KEYS:
                raise ConfigError("%s.%s" % (key, k), "unknown option")
        self.name = str(spec.get("name") or "list%d" % index)
        cidrs = list(spec.get("cidrs") or ())
        if spec.get("file"):
            cidrs += read_cidr_file(key + ".file", spec["file"])
        self.nets = NetSet(cidrs, key=key + ".cidrs")
        self.category = check_category(spec.get("category", "Anomaly.Traffic"), key + ".category")
        self.report = spec.get("report", "listed")
        if self.report not in ("listed", "peer"):
            raise ConfigError(key + ".report", "must be 'listed' or 'peer'")
        self.source_type = list(spec.get("source_type") or ())
        self.target_type = list(spec.get("target_type") or ())


class BlocklistDetector(Detector):
    """Any flow touching a listed address; key: (list, listed address)."""

    name = "blocklist"
    SPEC = {"lists": ([], check_list), "threshold": (1, check_int(lo=1))}

    def configure(self, opts):
        """lists: the CIDR lists (see the module docstring); threshold: flows per window."""
        self.lists = [_List(i, spec) for i, spec in enumerate(opts["lists"])]
        self.threshold = opts["threshold"]
        if not self.lists:
            self.enabled = False        # nothing to match: stay out of the per-flow path

    def _feed(self, row, t):
        src, dst = row[SRC], row[DST]
        for index, lst in enumerate(self.lists):
            contains = lst.nets.contains
            if contains(src):
                self._count(index, src, dst, row, t)
            if contains(dst):
                self._count(index, dst, src, row, t)

    def _count(self, index, listed, peer, row, t):
        win = self.window_for((index, listed), t)
        win.count(row)
        win.add(peer, self.max_distinct)
        ports = win.extra_set
        if ports is None:
            ports = win.extra_set = set()
        if len(ports) < _MAX_PORTS:
            ports.add((row[PROTO], row[DPORT]))

    def _event(self, key, win, detect_time):
        if win.flows < self.threshold:
            return None
        index, listed = key
        lst = self.lists[index]
        peers = win.values()
        ports = win.extra_set or set()
        protos = sorted({proto_name(p) for p, _port in ports})
        text = "Traffic between %s (on list %s) and %s%d peer%s" % (
            listed, lst.name, "at least " if win.capped else "", len(peers),
            "" if len(peers) == 1 else "s")
        if lst.report == "listed":
            sources, targets = [listed], peers
        else:
            sources, targets = peers, [listed]
        return self.event(lst.category, win, detect_time, sources, targets, text, proto=protos,
                          source_type=lst.source_type, target_type=lst.target_type,
                          note="list %s" % lst.name)
