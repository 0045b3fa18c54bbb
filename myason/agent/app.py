"""Agent wiring: sources -> packet processors -> exporter, joined by bounded queues.

Live: per interface and worker a sniffer thread and a processor thread (blocks when the flow
queue is full: a flow is never dropped); one exporter for the agent, which owns the per-agent
sequence number. With the fast engine (numba, the default) each interface has `workers`
TPACKET_V3 ring sockets in a PACKET_FANOUT group (agent/ring.py): a sniffer decodes whole ring
blocks into chunks of per-packet arrays and waits for room in its queue (the ring is the
buffer, the kernel counts its drops), the processor applies a chunk in one kernel call. The
"python" engine is the reference path, frame by frame from one LiveSource per interface (its
sniffer drops and counts when its queue is full: the kernel will not wait for us anyway).
Replay: one reader thread per run (blocking puts: replay is exact) feeding one processor; with
the fast engine the reader walks and decodes the files into chunks the same way.
Shutdown order: stop sources, drain the packet queues, flush the caches, drain the flow
queue, close the sinks. SIGHUP reloads the configuration and key file in place (see reload.py
and docs/operations.md): caches, queues and the sequence number carry on.
"""
import dataclasses
import logging
import os
import queue
import signal
import sys
import threading
import time
from contextlib import closing

from myason.agent import reload as reloading
from myason.agent.export import DONE, Exporter, UdpSender
from myason.agent.lanes import Lane, SnifferThread, Worker, members
from myason.agent.process import PacketProcessor

log = logging.getLogger("myason.agent")

# Agent metrics that go up and down; everything else is a counter.
GAUGES = ("flows_cached", "packet_queue_depth", "flow_queue_depth", "interfaces", "workers")
# Chunks queued between a ring sniffer and its processor: each holds up to MAX_BLOCKS_PER_READ
# ring blocks of frames, and the ring itself is the buffer.
RING_QUEUE = 4


def worker_cache_limit(limit, workers):
    """Each worker's share of cache_limit (rounded up)."""
    return max(1, -(-int(limit) // max(1, int(workers))))


class MeterThread(threading.Thread):
    """Runs a PacketProcessor over a packet queue and ticks its timers even when idle."""

    def __init__(self, name, proc, inbox, outbox, tick, clock=None, linktype=1, ifindex=0):
        super().__init__(name=name, daemon=True)
        self.proc, self.inbox, self.outbox = proc, inbox, outbox
        self.tick_every = tick
        self.clock = clock            # None: packet clock (replay)
        self.linktype, self.ifindex = linktype, ifindex
        self.error = None
        self._calls = queue.SimpleQueue()

    def call_soon(self, fn):
        """Run fn(self) in this thread before its next batch (reloads change the cache there)."""
        self._calls.put(fn)

    def run(self):
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the app's exit code
            self.error = exc
            log.exception("%s failed", self.name)
            self.outbox.put(DONE)

    def _loop(self):
        proc, inbox = self.proc, self.inbox
        next_tick = None
        while True:
            try:
                batch = inbox.get(timeout=self.tick_every)
            except queue.Empty:
                batch = ()
            if batch is DONE:
                break
            while not self._calls.empty():
                self._calls.get()(self)
            if batch.__class__ is list:
                if batch:
                    proc.process(batch, self.linktype, self.ifindex)
            elif batch:
                proc.process_chunk(batch)       # a fastdecode.Chunk (replay, fast engine)
            if self.clock is not None:
                now = self.clock()
                if next_tick is None:
                    next_tick = now + self.tick_every
                elif now >= next_tick:
                    proc.tick(now)
                    next_tick = now + self.tick_every
            rows = proc.take_batch()
            if rows:
                self.outbox.put(rows)
        proc.flush("shutdown")
        rows = proc.take_batch()
        if rows:
            self.outbox.put(rows)
        self.outbox.put(DONE)


class ReplayReader(threading.Thread):
    """Reads capture files in order and queues their packets in batches (never drops).

    With fast=True the batches are fastdecode.Chunks (decoded arrays) instead of frame lists.
    """

    def __init__(self, paths, outbox, stop, progress=False, fast=False):
        super().__init__(name="reader", daemon=True)
        self.paths, self.outbox, self.stop = paths, outbox, stop
        self.progress = progress
        self.fast = fast
        self.stats = {}
        self.error = None

    def _batches(self, cap):
        if not self.fast:
            yield from cap.batches()
            return
        from myason.agent import fastdecode
        if cap.format == "pcap":
            walker = fastdecode.PcapWalker(cap)
            try:
                yield from walker.chunks()
            finally:
                walker.close()   # its view of the mapping must go before the file closes
        else:
            for batch in cap.batches(fastdecode.DEFAULT_CHUNK // 2):
                yield fastdecode.chunk_from_batch(batch)

    def run(self):
        from myason.agent.pcapfile import open_capture
        bar = None
        try:
            if self.progress:
                from tqdm import tqdm
                bar = tqdm(unit=" pkt", unit_scale=True, file=sys.stderr, desc="replay")
            for path in self.paths:
                with open_capture(path) as cap, closing(self._batches(cap)) as batches:
                    for batch in batches:
                        self.outbox.put(batch)
                        if bar is not None:
                            bar.update(len(batch) if batch.__class__ is list else batch.n)
                        if self.stop.is_set():
                            break
                    for k, v in cap.stats.items():
                        if isinstance(v, int):
                            self.stats[k] = self.stats.get(k, 0) + v
                if self.stop.is_set():
                    log.info("replay interrupted; flushing")
                    break
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
        finally:
            if bar is not None:
                bar.close()
            self.outbox.put(DONE)


def _iso(t):
    """ISO 8601 UTC with milliseconds, e.g. 2024-01-01T00:30:00.250Z."""
    import datetime
    stamp = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (stamp.microsecond // 1000)


def serve_metrics(endpoint, stats_fn):
    """Start the agent's Prometheus endpoint ('host:port'); returns the HTTP server."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    from myason.options import parse_endpoint
    from myason.metrics import StatsCollector
    host, port = parse_endpoint("metrics", endpoint)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats_fn, GAUGES, prefix="myason_agent"))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


class AgentApp(reloading.LiveReload):
    """The agent: live capture on the configured interfaces, or replay of capture files."""

    def __init__(self, cfg, read=(), output=None, export=True, progress=None, engine="fast",
                 config_path=None, time_shift=None):
        self.cfg = cfg
        # Replay: None (the capture's own times), seconds to add, or "now" (newest packet at start).
        self.time_shift = time_shift
        self.config_path = config_path  # re-read on SIGHUP
        self.read = list(read or ())
        self.live = not self.read
        self.engine = engine          # "fast" (numba; live: rings) or "python" (reference)
        self.ring = False             # live capture on rings (the fast engine could be loaded)
        self.output = output
        self.export = export
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.stop = threading.Event()
        self.hangup = threading.Event()
        self.summary = {}
        self.reloads = 0
        self.reload_errors = 0
        self.lanes = {}               # live: interface name -> Lane
        self.retired = []             # lanes of interfaces a reload removed
        self.procs = []               # replay: the processor threads
        self.readers = []
        self.exporter = None
        self.flow_q = None
        self._raw_keys = ()
        self._routes = self._asn = None
        self._metrics = None
        self._stats_lock = threading.Lock()

    def _sinks(self):
        from myason.agent.output import RecordFile
        batcher = sender = None
        if self.export:
            from myason import keys, wire
            key = keys.load_key_file(self.cfg.key_file)
            self._raw_keys = tuple(keys.load_keys(self.cfg.key_file))
            sender = UdpSender(self.cfg.collectors)
            batcher = wire.Batcher(self.cfg.agent_id, key, self.cfg.max_datagram)
        record_file = RecordFile(self.output) if self.output else None
        return batcher, sender, record_file

    def _optional_lookups(self):
        if self.live:
            from myason.agent.routes import RouteTable
            self._routes = RouteTable.from_system()
        if self.cfg.asn_database:
            from myason.agent.asn import open_asn      # maxminddb only when configured
            self._asn = open_asn(self.cfg.asn_database)

    def install_signals(self):
        """SIGTERM/SIGINT stop the sources (everything cached is still sent); SIGHUP reloads."""
        def stop(signum, _frame):
            log.info("signal %d: stopping (flows are flushed)", signum)
            self.stop.set()

        def hangup(_signum, _frame):
            self.hangup.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)

    # -- threads -------------------------------------------------------------------------

    def _make_source(self, iface, cfg):
        exclude = cfg.collectors if cfg.exclude_export_traffic else ()
        if self.ring:
            from myason.agent.ring import RingCapture
            return RingCapture(iface.name, iface.bpf_filter, cfg.promiscuous, cfg.snaplen, exclude,
                               workers=cfg.workers, block_size=cfg.ring_block_size,
                               frame_size=cfg.ring_frame_size, blocks=cfg.ring_blocks,
                               block_timeout=cfg.ring_block_timeout)
        from myason.agent.capture import LiveSource
        return LiveSource(iface.name, iface.bpf_filter, cfg.promiscuous, cfg.snaplen, exclude=exclude)

    def _lane(self, iface, source):
        cfg = self.cfg
        socks = members(source)
        workers = []
        # cache_limit bounds the interface's flows: each worker gets its share (the fanout
        # hash spreads flows evenly).
        wcfg = dataclasses.replace(cfg, cache_limit=worker_cache_limit(cfg.cache_limit, len(socks)))
        for i, member in enumerate(socks):
            suffix = iface.name if len(socks) == 1 else "%s/%d" % (iface.name, i)
            pkt_q = queue.Queue(RING_QUEUE if self.ring else cfg.packet_queue)
            proc = PacketProcessor(wcfg, cfg.agent_id, {source.ifindex: iface.name}, self._routes, self._asn,
                                   packet_clock=False, engine="fast" if self.ring else "python")
            thread = MeterThread("processor-%s" % suffix, proc, pkt_q, self.flow_q, cfg.tick,
                                     time.time, source.linktype, source.ifindex)
            sniffer = SnifferThread(member, pkt_q, self.stop, lock=self._stats_lock, name="sniffer-%s" % suffix,
                                    consumer=thread)
            workers.append(Worker(member, proc, sniffer, thread))
        return Lane(iface, source, workers)

    def processor_threads(self):
        """Every processor thread, running or finished."""
        return [t for lane in list(self.lanes.values()) + self.retired for t in lane.processors] + self.procs

    def _sniffers(self):
        return [t for lane in list(self.lanes.values()) + self.retired for t in lane.sniffers] + self.readers

    @property
    def output_closed(self):
        """True when --output - lost its reader (`| head`): the run was ended early for it."""
        exporter = self.exporter
        return bool(exporter and exporter.record_file is not None and exporter.record_file.reader_gone)

    def _check_captures(self):
        """The newest packet time of the capture files when --time-shift now needs it, else None."""
        # Each file is opened (header read) before anything starts: one that cannot be read is
        # then a one-line error, rather than the replay of the files before it followed by a
        # failure and a summary.
        from myason.agent.pcapfile import open_capture
        newest = None
        for path in self.read:
            with open_capture(path) as cap:
                if self.time_shift == "now":
                    t = cap.newest_timestamp()
                    if t is not None and (newest is None or t > newest):
                        newest = t
        return newest

    def _replay_shift(self, newest):
        """Seconds --time-shift adds to every record's first and last (microsecond steps)."""
        if self.time_shift is None:
            return 0.0
        if self.time_shift != "now":
            shift = round(float(self.time_shift), 6)
            log.info("time shift %+.6f s: every record's first and last", shift)
            return shift
        if newest is None:
            log.warning("time shift now: the capture has no packet, nothing to shift")
            return 0.0
        start = time.time()
        shift = round(start - newest, 6)
        log.info("time shift %+.6f s: the capture's newest packet (%s) is put at the start of the replay (%s)",
                 shift, _iso(newest), _iso(start))
        return shift

    def _announce(self):
        """The log line that says who this agent is to its collectors, and what it does."""
        if self.live:
            what = "live capture on %s" % ", ".join(i.name for i in self.cfg.interfaces)
        elif self.export:
            what = "replay of %d capture file%s" % (len(self.read), "" if len(self.read) == 1 else "s")
        else:
            return      # replay to a file or stdout: nothing to tell a collector, and stderr stays quiet
        if self.export:
            from myason.options import format_endpoint
            where = ", ".join(format_endpoint(h, p) for h, p in self.cfg.collectors)
            # A collector drops every datagram of an id its keystore does not list, and the agent
            # cannot tell: this line is where a mismatch can be seen from this side.
            log.info("agent %s: %s, exporting to %s (each collector's keystore needs a line for %s)",
                     self.cfg.agent_id, what, where, self.cfg.agent_id)
        else:
            log.info("agent %s: %s, export off", self.cfg.agent_id, what)

    def run(self):
        """Run until the replay ends or a signal arrives; returns the process exit code."""
        self._optional_lookups()        # a bad asn_database is a config error (exit 2): first
        newest = self._check_captures() if not self.live else None
        batcher, sender, record_file = self._sinks()
        self._announce()
        self.flow_q = queue.Queue(self.cfg.flow_queue)
        if self.live:
            self.ring = self._fast_live()
            for iface in self.cfg.interfaces:
                src = self._make_source(iface, self.cfg)
                src.open()
                self.lanes[iface.name] = self._lane(iface, src)
            # Before any capture thread starts, so that none inherits it.
            self._drop_net_admin()
            threads = [t for lane in self.lanes.values() for t in lane.threads()]
        else:
            fast = self._fast_replay()
            # A chunk holds 1e5 packets: a short queue is enough to keep both threads busy.
            pkt_q = queue.Queue(4 if fast else self.cfg.packet_queue)
            proc = PacketProcessor(self.cfg, self.cfg.agent_id, {}, self._routes, self._asn,
                                   engine="fast" if fast else "python", time_shift=self._replay_shift(newest))
            reader = ReplayReader(self.read, pkt_q, self.stop, self.progress, fast=fast)
            self.readers.append(reader)
            self.procs.append(MeterThread("processor", proc, pkt_q, self.flow_q, self.cfg.tick))
            threads = [reader] + self.procs
        exporter = self.exporter = Exporter(self.flow_q, len(self.processor_threads()), batcher, sender,
                                            record_file, self.cfg.export_interval)
        started = time.monotonic()
        cpu0 = os.times()
        for t in threads + [exporter]:
            t.start()
        if self.cfg.metrics:
            self._metrics = self.serve_metrics(self.cfg.metrics)
        next_stats = time.monotonic() + self.cfg.stats_interval if self.cfg.stats_interval else None
        while exporter.is_alive():
            exporter.join(0.2)
            if self.output_closed and not self.stop.is_set():
                # Stop as on SIGTERM: what is cached still goes to the collectors.
                self.stop.set()
            if self.hangup.is_set() and not self.stop.is_set():
                self.hangup.clear()
                if self.reload() and self.cfg.stats_interval:
                    next_stats = time.monotonic() + self.cfg.stats_interval
            if next_stats and self.cfg.stats_interval and time.monotonic() >= next_stats:
                log.info("stats %s", self.stats())
                next_stats += self.cfg.stats_interval
        threads = self._sniffers() + self.processor_threads()
        for t in threads:
            t.join(5)
        for sniffer in self._sniffers():
            for src in getattr(sniffer, "sources", lambda: [])():
                src.close()
        if exporter.sender is not None:
            exporter.sender.close()
        cpu1 = os.times()
        self.summary = self.stats()
        if self._metrics is not None:
            self._metrics.shutdown()
        self.summary["seconds"] = round(time.monotonic() - started, 3)
        self.summary["cpu_seconds"] = round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 3)
        failed = [t for t in threads + [exporter] if getattr(t, "error", None)]
        for t in failed:
            log.error("%s: %s", t.name, t.error)
        return 1 if failed else 0

    def _drop_net_admin(self):
        """Give up CAP_NET_ADMIN once the capture sockets have their buffers (SO_RCVBUFFORCE).

        It was needed for nothing else; sockets a SIGHUP reload opens later get what
        net.core.rmem_max allows (docs/operations.md).
        """
        from myason.agent import caps
        from myason.logs import restart_messenger
        try:
            if not caps.drop(caps.CAP_NET_ADMIN):
                return
            # The log thread started before the drop and still holds it: a new one does not.
            restart_messenger()
            left = caps.holders(caps.CAP_NET_ADMIN)
        except (OSError, AttributeError, ValueError) as exc:
            # AttributeError: a libc without capget/capset (not glibc or musl).
            log.warning("cannot drop CAP_NET_ADMIN after opening the capture sockets: %s", exc)
            return
        if left:
            log.warning("CAP_NET_ADMIN dropped, but threads %s still hold it", left)
        else:
            log.info("capture sockets open: CAP_NET_ADMIN dropped")

    def _fast_replay(self):
        return self._fast("replaying")

    def _fast_live(self):
        fast = self._fast("capturing", live=True)
        if fast:
            cfg = self.cfg
            from myason.agent.ring import ring_bytes
            log.info("live capture on the fast engine: %d worker%s per interface, rings of %d x %d KiB "
                     "(%d MiB per interface)", cfg.workers, "" if cfg.workers == 1 else "s", cfg.ring_blocks,
                     cfg.ring_block_size >> 10,
                     ring_bytes(cfg.ring_block_size, cfg.ring_blocks, cfg.workers) >> 20)
        return fast

    def _fast(self, doing, live=False):
        if self.engine == "python":
            return False
        if self.engine != "fast":
            raise ValueError("engine must be 'fast' or 'python', not %r" % (self.engine,))
        from myason.agent.process import fast_engine_available
        try:
            if fast_engine_available(live):
                return True
            log.warning("the compiled kernels are not available (numba is not installed, or cannot make "
                        "machine code in this process): %s with the python engine", doing)
        except Exception as exc:  # noqa: BLE001 - e.g. numba's JIT under MemoryDenyWriteExecute
            log.warning("the compiled kernels cannot be loaded (%s): %s with the python engine", exc, doing)
        return False

    def serve_metrics(self, endpoint):
        """Start the metrics endpoint on `endpoint` over this app's counters."""
        return serve_metrics(endpoint, self.metrics)

    # -- counters ------------------------------------------------------------------------

    def stats(self):
        """Every counter for the stats log line, the summary and the metrics endpoint."""
        # Scrapes run in the HTTP server's thread: kernel_stats() reads and resets the kernel's
        # counters, so two readers at once could lose a count.
        with self._stats_lock:
            return self._collect_stats()

    def _collect_stats(self):
        exporter = self.exporter
        s = {"flows_exported": exporter.flows if exporter else 0}
        for t in self.processor_threads():
            for k, v in t.proc.stats().items():
                if isinstance(v, dict):
                    d = s.setdefault(k, {})
                    for kk, vv in v.items():
                        d[kk] = d.get(kk, 0) + vv
                else:
                    s[k] = s.get(k, 0) + v
        sniffers = self._sniffers()
        s["queue_dropped_packets"] = sum(getattr(t, "dropped_packets", 0) for t in sniffers)
        overlap = sum(getattr(t, "overlap_duplicates", 0) for t in sniffers)
        if overlap:
            s["reopen_duplicates_skipped"] = overlap
        for sniffer in sniffers:
            for src in getattr(sniffer, "sources", lambda: [])():
                for k, v in src.kernel_stats().items():
                    s[k] = s.get(k, 0) + v
            for k, v in getattr(sniffer, "stats", {}).items():
                if v:
                    s["capture_" + k] = v
        sender = exporter.sender if exporter else None
        if sender is not None:
            s.update(datagrams_sent=sender.datagrams, bytes_sent=sender.bytes, send_errors=sender.errors)
        if self.reloads or self.reload_errors:
            s.update(reloads=self.reloads, reload_errors=self.reload_errors)
        return s

    def metrics(self):
        """The counters served at the metrics endpoint (names below myason_agent_)."""
        s = self.stats()
        frames = bytes_in = 0
        for sniffer in self._sniffers():
            for src in getattr(sniffer, "sources", lambda: [])():
                frames += src.stats["frames"]
                bytes_in += src.stats["bytes"]
        exporter = self.exporter
        return {
            "frames": s.get("frames", 0), "packets": s.get("packets_metered", 0),
            "capture_frames": frames, "capture_bytes": bytes_in,
            "flow_bytes_exported": exporter.flow_bytes if exporter else 0,
            "decode_rejects": s.get("rejects", {}),
            "kernel_packets": s.get("kernel_packets", 0), "kernel_drops": s.get("kernel_drops", 0),
            "kernel_freezes": s.get("kernel_freezes", 0),
            "queue_dropped_packets": s["queue_dropped_packets"],
            "flows_cached": s.get("flows_cached", 0), "flows_created": s.get("flows_created", 0),
            "flows_expired": s.get("exported_by_reason", {}), "flows_exported": s["flows_exported"],
            "datagrams_sent": s.get("datagrams_sent", 0), "bytes_sent": s.get("bytes_sent", 0),
            "send_errors": s.get("send_errors", 0),
            "reloads": self.reloads, "reload_errors": self.reload_errors,
            "interfaces": len(self.lanes),
            "workers": sum(len(lane.workers) for lane in self.lanes.values()),
            "packet_queue_depth": sum(t.inbox.qsize() for t in self.processor_threads() if t.is_alive()),
            "flow_queue_depth": self.flow_q.qsize() if self.flow_q is not None else 0,
        }
