"""Agent wiring: sources -> packet processors -> exporter, joined by bounded queues.

Live: per interface a sniffer thread (drops and counts when its queue is full: the kernel will
not wait for us anyway) and a processor thread (blocks when the flow queue is full: a flow is
never dropped); one exporter for the agent, which owns the per-agent sequence number.
Replay: one reader thread per run (blocking puts: replay is exact) feeding one processor.
With the fast engine (numba, the replay default) the reader walks and decodes the files into
chunks of per-packet arrays and the processor applies them in one kernel call per chunk; the
"python" engine is the reference path, frame by frame (live capture always uses it).
Shutdown order: stop sources, drain the packet queues, flush the caches, drain the flow
queue, close the sinks.
"""
import logging
import os
import queue
import signal
import sys
import threading
import time
from contextlib import closing

from myason.agent.export import DONE, Exporter, UdpSender
from myason.agent.process import PacketProcessor

log = logging.getLogger("myason.agent")

# How long a sniffer keeps reading what its socket holds after a stop signal.
DRAIN_SECONDS = 2.0


class ProcessorThread(threading.Thread):
    """Runs a PacketProcessor over a packet queue and ticks its timers even when idle."""

    def __init__(self, name, proc, inbox, outbox, tick, clock=None, linktype=1, ifindex=0):
        super().__init__(name=name, daemon=True)
        self.proc, self.inbox, self.outbox = proc, inbox, outbox
        self.tick_every = tick
        self.clock = clock            # None: packet clock (replay)
        self.linktype, self.ifindex = linktype, ifindex
        self.error = None

    def run(self):
        try:
            self._loop()
        except BaseException as exc:  # noqa: B902 - surfaced by the app's exit code
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
            rows = proc.take_rows()
            if rows:
                self.outbox.put(rows)
        proc.flush("shutdown")
        rows = proc.take_rows()
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
        except BaseException as exc:  # noqa: B902
            self.error = exc
        finally:
            if bar is not None:
                bar.close()
            self.outbox.put(DONE)


class SnifferThread(threading.Thread):
    """Reads a live source into its packet queue; a full queue drops the batch and counts it."""

    def __init__(self, source, outbox, stop):
        super().__init__(name="sniffer-%s" % source.ifname, daemon=True)
        self.source, self.outbox, self.stop = source, outbox, stop
        self.dropped_packets = 0
        self.dropped_batches = 0
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                batch = self.source.read_batch(self.stop)
                if not batch:
                    continue
                try:
                    self.outbox.put_nowait(batch)
                except queue.Full:
                    self.dropped_batches += 1
                    self.dropped_packets += len(batch)
            self._drain()
        except BaseException as exc:  # noqa: B902
            self.error = exc
            log.exception("%s failed", self.name)
        finally:
            self.outbox.put(DONE)

    def _drain(self):
        # Frames the kernel already holds at stop were seen on the wire: meter them too, with
        # blocking puts (the processor is still draining). A time bound keeps a busy link from
        # holding shutdown back: frames keep arriving there, and the socket never runs empty.
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            batch = self.source.read_batch(self.stop)
            if not batch:
                return
            self.outbox.put(batch)


class AgentApp:
    """The agent: live capture on the configured interfaces, or replay of capture files."""

    def __init__(self, cfg, read=(), output=None, export=True, progress=None, engine="fast"):
        self.cfg = cfg
        self.read = list(read or ())
        self.engine = engine          # replay engine: "fast" (numba) or "python" (reference)
        self.output = output
        self.export = export
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.stop = threading.Event()
        self.summary = {}

    def _sinks(self):
        from myason.agent.output import RecordFile
        batcher = sender = None
        if self.export:
            from myason import keys, wire
            key = keys.load_key_file(self.cfg.key_file)
            sender = UdpSender(self.cfg.collectors)
            batcher = wire.Batcher(self.cfg.agent_id, key, self.cfg.max_datagram)
        record_file = RecordFile(self.output) if self.output else None
        return batcher, sender, record_file

    def _optional_lookups(self, live):
        from myason.agent.asn import open_asn
        routes = None
        if live:
            from myason.agent.routes import RouteTable
            routes = RouteTable.from_system()
        return routes, open_asn(self.cfg.asn_database)

    def install_signals(self):
        """SIGTERM/SIGINT stop the sources; everything cached is still flushed and sent."""
        def handler(signum, _frame):
            log.info("signal %d: stopping (flows are flushed)", signum)
            self.stop.set()
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self):
        """Run until the replay ends or a signal arrives; returns the process exit code."""
        batcher, sender, record_file = self._sinks()
        flow_q = queue.Queue(self.cfg.flow_queue)
        live = not self.read
        routes, asn = self._optional_lookups(live)
        threads, procs, sniffers, sources = [], [], [], []
        if live:
            from myason.agent.capture import LiveSource
            for ifc in self.cfg.interfaces:
                src = LiveSource(ifc.name, ifc.bpf_filter, self.cfg.promiscuous, self.cfg.snaplen,
                                 exclude=self.cfg.collectors if self.cfg.exclude_export_traffic else ())
                src.open()
                sources.append(src)
                pkt_q = queue.Queue(self.cfg.packet_queue)
                proc = PacketProcessor(self.cfg, self.cfg.agent_id, {src.ifindex: ifc.name}, routes, asn,
                                       packet_clock=False)
                procs.append(proc)
                sniffers.append(SnifferThread(src, pkt_q, self.stop))
                threads.append(ProcessorThread("processor-%s" % ifc.name, proc, pkt_q, flow_q,
                                               self.cfg.tick, time.time, src.linktype, src.ifindex))
            threads = sniffers + threads
        else:
            fast = self._fast_replay()
            # A chunk holds 1e5 packets: a short queue is enough to keep both threads busy.
            pkt_q = queue.Queue(4 if fast else self.cfg.packet_queue)
            proc = PacketProcessor(self.cfg, self.cfg.agent_id, {}, routes, asn,
                                   engine="fast" if fast else "python")
            procs.append(proc)
            reader = ReplayReader(self.read, pkt_q, self.stop, self.progress, fast=fast)
            sniffers.append(reader)
            threads = [reader, ProcessorThread("processor", proc, pkt_q, flow_q, self.cfg.tick)]
        exporter = Exporter(flow_q, len(procs), batcher, sender, record_file, self.cfg.export_interval)
        started = time.monotonic()
        cpu0 = os.times()
        for t in threads + [exporter]:
            t.start()
        next_stats = time.monotonic() + self.cfg.stats_interval if self.cfg.stats_interval else None
        while exporter.is_alive():
            exporter.join(0.2)
            if next_stats and time.monotonic() >= next_stats:
                log.info("stats %s", self._stats(procs, sniffers, sources, exporter, sender))
                next_stats += self.cfg.stats_interval
        for t in threads:
            t.join(5)
        for src in sources:
            src.close()
        if sender is not None:
            sender.close()
        cpu1 = os.times()
        self.summary = self._stats(procs, sniffers, sources, exporter, sender)
        self.summary["seconds"] = round(time.monotonic() - started, 3)
        self.summary["cpu_seconds"] = round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 3)
        failed = [t for t in threads + [exporter] if getattr(t, "error", None)]
        for t in failed:
            log.error("%s: %s", t.name, t.error)
        return 1 if failed else 0

    def _fast_replay(self):
        if self.engine == "python":
            return False
        if self.engine != "fast":
            raise ValueError("engine must be 'fast' or 'python', not %r" % (self.engine,))
        from myason.agent.process import fast_engine_available
        if fast_engine_available():
            return True
        log.warning("numba is not available: replaying with the python engine")
        return False

    @staticmethod
    def _stats(procs, sniffers, sources, exporter, sender):
        s = {"flows_exported": exporter.flows}
        for p in procs:
            for k, v in p.stats().items():
                if isinstance(v, dict):
                    d = s.setdefault(k, {})
                    for kk, vv in v.items():
                        d[kk] = d.get(kk, 0) + vv
                else:
                    s[k] = s.get(k, 0) + v
        s["queue_dropped_packets"] = sum(getattr(t, "dropped_packets", 0) for t in sniffers)
        for src in sources:
            for k, v in src.kernel_stats().items():
                s[k] = s.get(k, 0) + v
        for t in sniffers:
            for k, v in getattr(t, "stats", {}).items():
                if v:
                    s["capture_" + k] = v
        if sender is not None:
            s.update(datagrams_sent=sender.datagrams, bytes_sent=sender.bytes, send_errors=sender.errors)
        return s
