"""Detectors on the enriched flow stream, emitting IDEA events.

Config (the collector's `detect` mapping)::

    node_name: org.example.myason     # IDEA Node.Name
    allowlist: [192.0.2.0/24]          # sources/targets that never raise events
    detectors:                         # per detector: enabled, window, max_keys, thresholds
      scan_horizontal: {threshold: 50}
      blocklist: {lists: [{name: botnet, file: /etc/myason/cc.txt, category: Intrusion.Botnet}]}

Every built-in detector is on unless `enabled: false` (blocklist does nothing without lists).
"""
from __future__ import annotations

import importlib
from operator import itemgetter

from myason.detect.base import DEFAULT_NODE_NAME, DST, LAST, SRC, Detector, as_row
from myason.detect.idea import build_event, check_node_name
from myason.nets import NetSet
from myason.errors import ConfigError

__all__ = ["Detector", "DetectorSet", "build_detectors", "build_event", "detector_class",
           "detector_names", "register"]

# Explicit registry: name -> "module:Class", imported when first used.
_BUILTIN = {
    "scan_horizontal": "myason.detect.scan:HorizontalScanDetector",
    "scan_vertical": "myason.detect.scan:VerticalScanDetector",
    "bruteforce": "myason.detect.bruteforce:BruteForceDetector",
    "dos": "myason.detect.dos:DosDetector",
    "blocklist": "myason.detect.blocklist:BlocklistDetector",
}
_REGISTRY = {}
_TOP_KEYS = {"node_name", "allowlist", "detectors"}


def register(cls):
    """Class decorator: make a detector class available by its `name`."""
    if not cls.name or _REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError("detector name %r missing or taken" % cls.name)
    _REGISTRY[cls.name] = cls
    return cls


def detector_class(name):
    """The detector class called `name`; KeyError lists the known names."""
    if name not in _REGISTRY and name in _BUILTIN:
        module, cls = _BUILTIN[name].split(":")
        _REGISTRY[name] = getattr(importlib.import_module(module), cls)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError("unknown detector %r (known: %s)"
                       % (name, ", ".join(detector_names()))) from None


def detector_names():
    """Names of every known detector."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


class DetectorSet:
    """Several detectors fed the same rows; poll()/flush() gather their events."""

    def __init__(self, detectors=()):
        self.detectors = list(detectors)
        # One allowlist shared by all (build_detectors): checked once per row, not per detector.
        allows = {id(d.allow) for d in self.detectors}
        self._shared = len(allows) == 1
        self.flows = 0
        self.allowlisted = 0

    def feed_rows(self, rows) -> None:
        """Feed every row (list, FIELDS first, or dict) to every detector."""
        dets = self.detectors
        if not dets:
            return
        if not self._shared:
            for row in rows:
                row = as_row(row)
                for det in dets:
                    det.feed(row)
            return
        # Detector by detector over the whole batch: detectors are independent, so the order of
        # feeding between them does not matter, and each one's loop (or C-level pre-filter)
        # runs without a Python call per row per detector.
        if dict in set(map(type, rows)):
            rows = [as_row(r) for r in rows]
        flows = len(rows)
        if not flows:
            return
        mark = max(max(d.watermark for d in dets), max(map(itemgetter(LAST), rows)))
        allow = dets[0].allow
        skipped = 0
        if allow:
            contains = allow.contains
            kept = [r for r in rows if not (contains(r[SRC]) or contains(r[DST]))]
            skipped = flows - len(kept)
            rows = kept
        for det in dets:
            det._feed_rows(rows)
        self.flows += flows
        self.allowlisted += skipped
        for det in dets:
            det.watermark = mark
            det.stats["flows"] += flows
            det.stats["allowlisted"] += skipped

    def poll(self, now) -> list:
        """Events of every window that ended by now."""
        out = []
        for det in self.detectors:
            out.extend(det.poll(now))
        return out

    def flush(self, now=None) -> list:
        """Close every window (shutdown, end of a replay) and return the events."""
        out = []
        for det in self.detectors:
            out.extend(det.flush(now))
        return out

    @property
    def watermark(self) -> float:
        """Newest flow time seen by any detector (the `now` of a replay)."""
        return max((d.watermark for d in self.detectors), default=0.0)

    def stats(self) -> dict:
        """{detector name: counters (flows, allowlisted, windows, evicted, events) + keys}."""
        return {d.name: dict(d.stats, keys=len(d)) for d in self.detectors}


def build_detectors(config: dict | None = None) -> DetectorSet:
    """A DetectorSet of every enabled detector; ConfigError names a bad key."""
    config = dict(config or {})
    for key in config:
        if key not in _TOP_KEYS:
            raise ConfigError("detect." + str(key), "unknown option")
    node_name = check_node_name(config.get("node_name", DEFAULT_NODE_NAME), "detect.node_name")
    allow = NetSet(config.get("allowlist") or (), key="detect.allowlist")
    per = config.get("detectors") or {}
    if not isinstance(per, dict):
        raise ConfigError("detect.detectors", "must be a mapping of detector name to options")
    for name in per:
        if name not in detector_names():
            raise ConfigError("detect.detectors." + str(name), "unknown detector (known: %s)"
                              % ", ".join(detector_names()))
    dets = []
    for name in detector_names():
        det = detector_class(name)(per.get(name) or {}, node_name=node_name, allowlist=allow)
        if det.enabled:
            dets.append(det)
    return DetectorSet(dets)
