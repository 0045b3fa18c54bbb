"""Turn one received datagram into stored rows: decrypt, decode, validate, reject replays, count gaps.

Replay protection works like IPsec anti-replay, per agent: the highest sequence number accepted
plus a bitmap of the last `window` numbers. A number already seen, or below the window, is a
replay. Fernet's ttl bounds how old a replayed token can be.

Agent restarts. A restarted agent counts from 0 again, and the wire format has no boot id, so
the processor tells a restart from a replay by the authenticated `sent` time. The agent stamps
datagrams in sequence order, so a datagram whose sequence goes back while its `sent` time is
later than every datagram accepted from that agent so far comes from a new run: a new window
starts (a "restart"). A replay can never do that, because its `sent` time is one that was
already accepted. The previous run's window is kept for its late datagrams. Each window owns a
fixed domain of (sent, seq) pairs, and the domains of the live windows never overlap, so no
datagram can be accepted twice. With `boundary` the old run's newest accepted sent time and
`trigger`/`trigger_seq` the sent time and sequence of the datagram that revealed the restart:

- sent >= trigger: the new window, fully (and only there can a further restart be detected);
- boundary < sent < trigger and seq <= trigger_seq: the new window, but only to fill a free
  slot below its top (the new run's first datagrams, reordered);
- sent <= boundary, or boundary < sent < trigger and seq > trigger_seq: the old window (the old
  run's last datagrams, late), within the old window's own domain;
- anything else (two runs back): rejected as a replay.

Collector restarts. snapshot() gives each agent's top sequence number and newest sent time; the
collector saves it after every spooled batch and restore()s it at start, with every number up to
the top marked seen. So datagrams lost in a crash (received but not yet spooled) or sent while no
collector ran are counted as gaps by the next datagram, and a replay across the restart is
still a replay.

Gaps: when the top jumps by k > 1, k - 1 datagrams are counted missing; a late datagram that
fills a slot counted missing takes one back. Slots below the first sequence number seen in a
window (before the collector started listening) were never counted and are never taken back.
"""
import logging
import threading
import time
from collections import deque
from itertools import repeat
from dataclasses import dataclass, replace

from myason import wire
from myason.collector.validate import DEFAULT_LIMITS, ValidationError, validate_rows
from myason.errors import WireError
from myason.logs import RateLimiter

log = logging.getLogger("myason.collector.datagram")

_NEG_INF = float("-inf")
NEW, LATE, SEEN, OLD = "new", "late", "seen", "old"


@dataclass
class AgentStats:
    """Accepted traffic and sequence bookkeeping of one agent."""

    datagrams: int = 0
    flows: int = 0
    gaps: int = 0
    replays: int = 0
    restarts: int = 0
    last_seen: float = 0.0
    last_seq: int = -1


class _Window:
    """Anti-replay window of one agent run: top, bitmap (bit i = seq top - i seen), max sent."""

    __slots__ = ("top", "bits", "first", "max_sent", "lo", "trigger", "trigger_seq")

    def __init__(self, seq, sent, lo=_NEG_INF, trigger=_NEG_INF):
        self.top = seq
        self.bits = 1
        self.first = seq          # lowest sequence number whose loss was ever counted
        self.max_sent = sent
        # Domain: sent > lo, and either sent >= trigger or seq <= trigger_seq.
        self.lo = lo
        self.trigger = trigger
        self.trigger_seq = seq

    def owns(self, seq, sent):
        """True if (seq, sent) falls in this window's domain."""
        return sent > self.lo and (sent >= self.trigger or seq <= self.trigger_seq)

    def classify(self, seq, size):
        """NEW (above top), LATE (free slot in the window), SEEN, or OLD (below the window)."""
        if seq > self.top:
            return NEW
        d = self.top - seq
        if d >= size:
            return OLD
        return SEEN if self.bits >> d & 1 else LATE

    def accept(self, seq, sent, kind, size):
        """Record seq (NEW or LATE); return the change in the missing-datagram count."""
        if sent > self.max_sent:
            self.max_sent = sent
        if kind == NEW:
            shift = seq - self.top
            self.bits = 1 if shift >= size else ((self.bits << shift) | 1) & ((1 << size) - 1)
            self.top = seq
            return shift - 1
        self.bits |= 1 << (self.top - seq)
        return -1 if seq >= self.first else 0


class _Sequence:
    """Per-agent replay and gap state: the current run's window and the previous run's."""

    __slots__ = ("cur", "prev")

    def __init__(self):
        self.cur = None
        self.prev = None

    def check(self, seq, sent, size):
        """(window, kind) to accept into, ("init"|"restart", None), or (None, None) for a replay."""
        cur = self.cur
        if cur is None:
            return "init", None
        if sent >= cur.trigger:
            kind = cur.classify(seq, size)
            if kind == NEW or (kind == LATE and sent <= cur.max_sent):
                return cur, kind
            # Sequence went back (or repeated) while time went forward: a new run.
            if sent > cur.max_sent:
                return "restart", None
            return None, None
        if sent > cur.lo and seq <= cur.trigger_seq:
            kind = cur.classify(seq, size)
            return (cur, kind) if kind == LATE else (None, None)
        # Here sent <= cur.lo (the old run's newest sent), or seq > cur.trigger_seq.
        prev = self.prev
        if prev is not None and prev.owns(seq, sent):
            kind = prev.classify(seq, size)
            if kind == NEW or kind == LATE:
                return prev, kind
        return None, None

    def commit(self, seq, sent, verdict, kind, size):
        """Apply a check() verdict; return (gap change, restarted)."""
        if verdict == "init":
            self.cur = _Window(seq, sent)
            return 0, False
        if verdict == "restart":
            # The old window's domain shrinks to what the new one does not own; the run
            # before it is forgotten, and its datagrams are rejected from now on.
            self.prev = self.cur
            self.cur = _Window(seq, sent, lo=self.cur.max_sent, trigger=sent)
            return 0, True
        return verdict.accept(seq, sent, kind, size), False


class DatagramProcessor:
    """Decrypt, decode, validate one datagram; reject replays, count gaps; counters by reason."""

    def __init__(self, keystore, ttl=5.0, window=4096, limits=None, clock=time.time,
                 max_plain=1 << 20, log_clock=time.monotonic):
        """keystore: Keystore; ttl: token ttl in s (overrides limits.ttl); window: replay slots.

        log_clock: the clock of the rate limits on rejection log lines.

        Share one processor between threads (the replay state must be shared); with several
        processes, send each agent's datagrams to the same process.
        """
        if window < 1:
            raise ValueError("window must be >= 1")
        self.keystore = keystore
        self.window = int(window)
        self.limits = replace(limits or DEFAULT_LIMITS, ttl=ttl)
        self.max_plain = max_plain
        self._clock = clock
        self.rejects = {}
        self.agents = {}
        self._seqs = {}
        # (agent, first seq, its sent time) of each window started since the owner last looked:
        # the collector saves them before their rows, so a crash cannot hide their loss.
        self.new_runs = []
        # handle() may run in several threads sharing one processor: the replay state must be
        # shared, or a replay sent to another thread would pass.
        self._lock = threading.Lock()
        self._limiter = RateLimiter(10.0, clock=log_clock)
        # unknown_agent is what an agent whose agent_id is missing from the keystore gets, and
        # that agent runs on unaware: each (agent id, source) gets its own line, one per interval
        # however fast it sends. Both come from the network, so the pairs remembered are bounded
        # and so are the lines in all (a flood of made-up ids).
        self._unknown = RateLimiter(10.0, clock=log_clock, max_keys=1024)
        self._unknown_lines = RateLimiter(10.0, clock=log_clock, burst=10)

    @property
    def ttl(self):
        """Seconds a token may be old (the token check and the `sent` check share it)."""
        return self.limits.ttl

    @ttl.setter
    def ttl(self, value):
        # One value for both checks, also when a reload changes it.
        self.limits = replace(self.limits, ttl=value)

    def snapshot(self):
        """{agent: {"top", "max_sent"}} of each agent's current run, to persist beside the spool."""
        with self._lock:
            return {agent: {"top": st.cur.top, "max_sent": st.cur.max_sent}
                    for agent, st in self._seqs.items() if st.cur is not None}

    def restore(self, state):
        """Continue from a snapshot() taken before a collector restart; returns agents restored.

        Every sequence number up to `top` counts as seen, so a datagram replayed across the restart
        is still a replay, and datagrams lost in the restart (received but never spooled, or sent
        while no collector ran) are counted as gaps by the first datagram above `top`.
        """
        n = 0
        with self._lock:
            for agent, st in state.items():
                try:
                    top, max_sent = int(st["top"]), float(st["max_sent"])
                except (KeyError, TypeError, ValueError):
                    continue
                if top < -1:        # -1: an agent known, nothing of its run accepted yet
                    continue
                w = _Window(top, max_sent)
                w.bits = (1 << self.window) - 1
                w.first = top + 1
                seq = self._seqs[agent] = _Sequence()
                seq.cur = w
                n += 1
        return n

    def handle(self, datagram, addr, received=None):
        """Rows (ROW_FIELDS order: FIELDS + received, exporter=addr); [] when rejected."""
        agent = None
        try:
            # `received` (stamped by the listener) is the reference time, so a backlog inside
            # the collector never turns fresh datagrams into expired ones.
            now = received if received is not None else self._clock()
            agent = wire.peek_agent(datagram)
            keys = self.keystore.keys_for(agent)
            if keys is None:
                return self._reject("unknown_agent", agent, addr)
            if not self.keystore.allowed(agent, addr):
                return self._reject("not_allowed", agent, addr)
            batch = wire.decode_datagram(datagram, lambda _a: keys, ttl=self.ttl, now=now,
                                         max_plain=self.max_plain, skew=self.limits.clock_skew)
            seq, sent = batch.seq, batch.sent
            with self._lock:
                state = self._seqs.get(agent)
                if state is None:
                    state = self._seqs[agent] = _Sequence()
                replayed = state.check(seq, sent, self.window)[0] is None
                if replayed:
                    self._count_replay(agent)
            if replayed:
                return self._log(agent, addr, "replay")
            rows = validate_rows(batch.rows, agent, sent, now, self.limits)
            with self._lock:
                # Checked again: another thread may have taken this sequence number meanwhile.
                verdict, kind = state.check(seq, sent, self.window)
                if verdict is None:
                    self._count_replay(agent)
                else:
                    gaps, restarted = self._commit(agent, state, seq, sent, verdict, kind, rows, now)
            if verdict is None:
                return self._log(agent, addr, "replay")
            if restarted:
                log.info("agent %s restarted (sequence back to %d)", agent, seq)
            # In place: the rows are this datagram's own fresh lists (C-level, no copy).
            deque(map(list.extend, rows, repeat((now, addr))), maxlen=0)
            return rows
        except WireError as exc:
            return self._reject(exc.reason, agent, addr)
        except ValidationError as exc:
            return self._reject("invalid_" + exc.reason, agent, addr)
        except Exception:  # noqa: BLE001 - one bad datagram must never stop the pipeline
            if self._limiter.allow("internal"):
                log.exception("internal error on a datagram from %s", _safe(addr))
            return self._reject("internal", agent, addr, logged=True)

    def _commit(self, agent, state, seq, sent, verdict, kind, rows, now):
        # Called with the lock held.
        gaps, restarted = state.commit(seq, sent, verdict, kind, self.window)
        if verdict == "init" or verdict == "restart":
            self.new_runs.append((agent, seq, sent))
        stats = self._stats(agent)
        stats.datagrams += 1
        stats.flows += len(rows)
        stats.gaps += gaps
        stats.restarts += restarted
        stats.last_seen = now
        stats.last_seq = seq
        return gaps, restarted

    def _stats(self, agent):
        stats = self.agents.get(agent)
        if stats is None:
            stats = self.agents[agent] = AgentStats()
        return stats

    def _count_replay(self, agent):
        # Called with the lock held.
        self._stats(agent).replays += 1
        self.rejects["replay"] = self.rejects.get("replay", 0) + 1

    def _reject(self, reason, agent, addr, logged=False):
        with self._lock:
            self.rejects[reason] = self.rejects.get(reason, 0) + 1
        if not logged:
            self._log(agent, addr, reason)
        return []

    def _log(self, agent, addr, reason):
        """Log one rejection, rate-limited per reason; returns [] for handle() to pass on."""
        if reason == "unknown_agent":
            pair = (agent, addr)
            if self._unknown.allow(pair) and self._unknown_lines.allow(reason):
                log.warning("rejected datagrams from %s: unknown_agent: agent id %r is not in the keystore "
                            "(%d more from it not logged)", _safe(addr), agent, self._unknown.suppressed(pair))
            return []
        # Keyed by reason only: agent ids and addresses come from the network and would grow
        # the limiter's state without bound.
        if self._limiter.allow(reason):
            log.warning("rejected datagram from %s (agent %s): %s (%d similar not logged)",
                        _safe(addr), agent or "?", reason, self._limiter.suppressed(reason))
        return []


def _safe(addr):
    text = str(addr)
    return text if len(text) <= 64 else text[:64] + "..."
