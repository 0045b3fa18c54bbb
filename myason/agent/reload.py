"""Agent reload (SIGHUP): which keys changed, which apply live, which need a restart.

Everything here is pure: plan_reload() compares two validated configurations (and the key lists
read from the key file) and says what the running agent must do. The app carries the plan out,
opening everything that can fail before it changes anything, so a reload is all or nothing.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from myason.errors import CaptureError, ConfigError, KeyFileError

log = logging.getLogger("myason.agent")

# Keys the running threads pick up in place.
EXPORT_KEYS = ("key_file", "collectors", "max_datagram", "export_interval")
CACHE_KEYS = ("cache_limit", "cache_active_timeout", "cache_inactive_timeout", "cache_fin_timeout", "tick")
OTHER_LIVE_KEYS = ("stats_interval", "asn_database", "metrics")
# Keys that change what a capture socket sees: the affected sockets are reopened.
CAPTURE_KEYS = ("interfaces", "promiscuous", "snaplen", "exclude_export_traffic", "ring_block_size",
                "ring_frame_size", "ring_blocks", "ring_block_timeout")
# Keys fixed for the life of the process: sizes of queues already built, the identity that
# names the sequence-number stream the collectors follow, the engine and its workers (a flow
# cache per worker).
RESTART_KEYS = ("agent_id", "packet_queue", "flow_queue", "engine", "workers")


@dataclass(frozen=True)
class CapturePlan:
    """Per-interface capture changes: new lanes, lanes to retire, sockets to reopen."""

    added: tuple = ()        # InterfaceConfig of interfaces to start capturing on
    removed: tuple = ()      # names of interfaces to stop (their cached flows are flushed)
    reopened: tuple = ()     # InterfaceConfig of kept interfaces whose socket must be reopened

    def __bool__(self):
        return bool(self.added or self.removed or self.reopened)


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does: the configuration to run with and the parts to touch."""

    cfg: object                                   # the new AgentConfig, restart-only keys kept old
    changed: tuple = ()                           # every key whose value differs (sorted)
    restart: tuple = ()                           # changed keys ignored until a restart
    keys_changed: bool = False                    # the key file's keys differ
    export: bool = False                          # new Batcher (key, max_datagram) and/or sender
    sender: bool = False                          # collectors changed: a new UdpSender
    cache: bool = False                           # cache timers/limit/tick to set in the processors
    capture: CapturePlan = field(default_factory=CapturePlan)

    @property
    def noop(self):
        """True when nothing needs doing."""
        return not (self.changed or self.keys_changed)


def capture_params(cfg, iface):
    """What a capture socket on `iface` depends on; a difference means reopening it."""
    exclude = cfg.collectors if cfg.exclude_export_traffic else ()
    return (iface.bpf_filter, cfg.promiscuous, cfg.snaplen, tuple(exclude), cfg.ring_block_size,
            cfg.ring_frame_size, cfg.ring_blocks, cfg.ring_block_timeout)


def changed_keys(old, new):
    """Names of the fields whose values differ, sorted."""
    return tuple(sorted(f.name for f in dataclasses.fields(old)
                        if getattr(old, f.name) != getattr(new, f.name)))


def plan_capture(old, new):
    """Interfaces to add, remove and reopen between two configurations (live capture)."""
    old_ifs = {i.name: i for i in old.interfaces}
    new_ifs = {i.name: i for i in new.interfaces}
    added = tuple(i for i in new.interfaces if i.name not in old_ifs)
    removed = tuple(n for n in old_ifs if n not in new_ifs)
    reopened = tuple(i for i in new.interfaces if i.name in old_ifs
                     and capture_params(old, old_ifs[i.name]) != capture_params(new, i))
    return CapturePlan(added, removed, reopened)


def plan_reload(old, new, old_keys=(), new_keys=(), live=True, cache_live=True):
    """Compare running config `old` with freshly loaded `new`; the plan to apply.

    old_keys/new_keys are the key file's raw keys (re-read on every reload, so a rotation in
    place is seen). live: capturing interfaces (replay ignores capture keys). cache_live: the
    cache takes new timers in place (the fast replay engine does not: a restart is needed).
    """
    changed = changed_keys(old, new)
    restart = [k for k in changed if k in RESTART_KEYS]
    if not cache_live:
        restart += [k for k in changed if k in CACHE_KEYS]
    keep = {k: getattr(old, k) for k in restart}
    if not live:
        # Nothing captures: the keys are stored (shown by --check-config) but have no effect.
        keep.update({k: getattr(old, k) for k in changed if k in CAPTURE_KEYS})
    cfg = dataclasses.replace(new, **keep) if keep else new
    keys_changed = list(old_keys) != list(new_keys)
    sender = old.collectors != cfg.collectors
    export = keys_changed or sender or old.max_datagram != cfg.max_datagram
    cache = any(getattr(old, k) != getattr(cfg, k) for k in CACHE_KEYS)
    capture = plan_capture(old, cfg) if live else CapturePlan()
    return ReloadPlan(cfg=cfg, changed=changed, restart=tuple(sorted(restart)),
                      keys_changed=keys_changed, export=export, sender=sender, cache=cache,
                      capture=capture)


def load_new_config(path, export=True, live=True):
    """Read and check the configuration and key file for a reload: (AgentConfig, raw keys).

    Raises ConfigError naming the key at fault, as at start-up (a key file problem is
    reported under `key_file`).
    """
    from myason.agent.config import load_agent_config
    cfg = load_agent_config(path)
    raw = ()
    if export:
        if not cfg.key_file:
            raise ConfigError("key_file", "required to export")
        if not cfg.collectors:
            raise ConfigError("collectors", "at least one host:port is required to export")
        from myason import keys     # here: only an exporting agent loads cryptography
        try:
            raw = tuple(keys.load_keys(cfg.key_file))
        except KeyFileError as exc:
            raise ConfigError("key_file", str(exc)) from None
    if live and not cfg.interfaces:
        raise ConfigError("interfaces", "at least one interface is required for live capture")
    return cfg, raw


def describe(plan):
    """One log line's worth: what the reload changed and what waits for a restart."""
    parts = []
    live = [k for k in plan.changed if k not in plan.restart]
    if live:
        parts.append("applied: %s" % ", ".join(live))
    if plan.keys_changed and "key_file" not in live:
        parts.append("applied: new keys from key_file")
    cap = plan.capture
    if cap:
        parts.append("capture: +%s -%s reopened %s" % (
            ",".join(i.name for i in cap.added) or "none", ",".join(cap.removed) or "none",
            ",".join(i.name for i in cap.reopened) or "none"))
    if not parts and not plan.restart:
        parts.append("no changes")
    return "; ".join(parts)


def set_cache_params(thread, cfg):
    """Give a processor's cache the timers, limit and tick of cfg (runs in that processor's thread)."""
    proc = thread.proc
    cache = proc.cache
    cache.active = cfg.cache_active_timeout
    cache.inactive = cfg.cache_inactive_timeout
    cache.fin = cfg.cache_fin_timeout
    cache.limit = cfg.cache_limit
    # A lower limit takes effect at once, as if the flows beyond it had met a full cache.
    while len(cache) > cache.limit:
        cache._evict_lru()
    thread.tick_every = proc.tick_every = cfg.tick


def batcher_factory(cfg, key):
    """make(next_seq) -> a wire.Batcher for cfg and key that continues the sequence at next_seq."""
    from myason import wire

    def make(next_seq):
        return wire.Batcher(cfg.agent_id, key, cfg.max_datagram, first_seq=next_seq)
    return make


class LiveReload:
    """AgentApp's reload: everything that can fail is opened first, then the plan is committed.

    Expects the app's attributes: cfg, config_path, export, live, lanes, retired, exporter,
    hangup/stop events, _raw_keys, _asn, _metrics, and its _make_source, _lane,
    processor_threads and serve_metrics methods.
    """

    # -- reload --------------------------------------------------------------------------

    def reload(self):
        """Re-read the config and key file and apply them live; False (old config kept) on error."""
        if self.config_path is None:
            log.warning("SIGHUP: the agent was started without -ac FILE, there is nothing to reload")
            return False
        log.info("SIGHUP: reloading %s", self.config_path)
        try:
            new_cfg, raw_keys = load_new_config(self.config_path, self.export, self.live)
            cache_live = all(t.proc.engine == "python" for t in self.processor_threads())
            plan = plan_reload(self.cfg, new_cfg, self._raw_keys, raw_keys, self.live, cache_live)
            opened = self._prepare(plan, raw_keys)
        except ConfigError as exc:
            self.reload_errors += 1
            log.error("reload rejected, the running configuration is kept: %s", exc)
            return False
        if plan.restart:
            log.warning("reload: %s changed but needs a restart to take effect", ", ".join(plan.restart))
        self._commit(plan, raw_keys, opened)
        self.reloads += 1
        log.info("reload done: %s", describe(plan))
        return True

    def _prepare(self, plan, raw_keys):
        """Open everything the plan needs, or close it all again and raise ConfigError."""
        cfg, opened = plan.cfg, {"sources": {}}
        try:
            if self.export and plan.export:
                from myason import keys
                opened["key"] = keys.FernetKeys(raw_keys)
                if plan.sender:
                    try:
                        from myason.agent.export import UdpSender
                        opened["sender"] = UdpSender(cfg.collectors)
                    except OSError as exc:
                        raise ConfigError("collectors", str(exc)) from None
            if cfg.asn_database != self.cfg.asn_database:
                from myason.agent.asn import open_asn
                opened["asn"] = open_asn(cfg.asn_database)
            index = {iface.name: i for i, iface in enumerate(cfg.interfaces)}
            for iface in plan.capture.added + plan.capture.reopened:
                lane = self.lanes.get(iface.name)
                if lane is not None:
                    lane.expect_switch()
                src = self._make_source(iface, cfg)
                opened["sources"][iface.name] = src
                try:
                    src.open()
                except CaptureError as exc:
                    raise ConfigError("interfaces[%d]" % index[iface.name], str(exc)) from None
            if cfg.metrics != self.cfg.metrics and cfg.metrics:
                try:
                    opened["metrics"] = self.serve_metrics(cfg.metrics)
                except OSError as exc:
                    raise ConfigError("metrics", "cannot serve on %s: %s" % (cfg.metrics, exc)) from None
        except BaseException:
            for name, src in opened["sources"].items():
                src.close()
                if name in self.lanes:
                    self.lanes[name].cancel_switch()
            if "sender" in opened:
                opened["sender"].close()
            raise
        return opened

    def _commit(self, plan, raw_keys, opened):
        old, cfg = self.cfg, plan.cfg
        self.cfg, self._raw_keys = cfg, raw_keys
        exporter = self.exporter
        if self.export and plan.export or cfg.export_interval != old.export_interval:
            make = batcher_factory(cfg, opened["key"]) if "key" in opened else None
            exporter.reconfigure(make, opened.get("sender"), cfg.export_interval)
        if plan.cache:
            for t in self.processor_threads():
                t.call_soon(lambda thread: set_cache_params(thread, cfg))
        if "asn" in opened:
            asn = self._asn = opened["asn"]
            for t in self.processor_threads():
                t.call_soon(lambda thread: setattr(thread.proc, "asn", asn))
        self._commit_capture(plan.capture, opened["sources"])
        if cfg.metrics != old.metrics:
            if self._metrics is not None:
                self._metrics.shutdown()
            self._metrics = opened.get("metrics")

    def _commit_capture(self, capture, sources):
        for name in capture.removed:
            lane = self.lanes.pop(name)
            lane.retire()
            self.retired.append(lane)
        start = []
        for iface in capture.reopened:
            lane, src = self.lanes[iface.name], sources[iface.name]
            if lane.can_replace(src):
                lane.replace_source(src)
                lane.iface = iface
                continue
            # The device was recreated under the same name: a new lane, the old one flushes.
            lane.cancel_switch()
            lane.retire()
            self.retired.append(lane)
            start.append((iface, src))
        start += [(iface, sources[iface.name]) for iface in capture.added]
        for iface, src in start:
            lane = self.lanes[iface.name] = self._lane(iface, src)
            for _ in lane.processors:
                self.exporter.add_producer()   # before its thread can send DONE
            for t in lane.threads():
                t.start()
