"""The dispatcher: a thread beside the notify writer that sends what the state file holds.

Each step sends the webhook deliveries whose time has come (oldest first) and the digests whose
window has closed, then says when the next one is due. A receiver that fails is tried again
after its backoff; its other deliveries wait with it (one probe per backoff, not one request
per pending event), so a receiver that is down costs the other receivers and the mails at most
one request (its timeout) per backoff, and the collector's other writers nothing (they have
spools and threads of their own).

One dispatcher per state file: it holds an exclusive flock on `<state>.lock`, so with
`writers_number > 1` (several writer instances, one file) only one of them sends.
"""
from __future__ import annotations

import fcntl
import logging
import os
import smtplib
import sqlite3
import threading

from myason import fsmode
from myason.logs import RateLimiter
from myason.store.notify.mail import compose
from myason.store.notify.state import State

log = logging.getLogger("myason.store.notify")

MAIL_BACKOFF_MIN = 1.0
HOUSEKEEPING_EVERY = 3600.0


class Dispatcher:
    """Sends due webhooks and digests; step() is the unit of work, run() the thread's loop."""

    def __init__(self, path, webhooks, mailer, rules, clock, poll=1.0, batch_keep=7 * 86400.0):
        self.path = path
        self.webhooks = webhooks            # name -> Webhook
        self.mailer = mailer                # Mailer or None
        self.rules = rules                  # name -> Rule
        self.clock = clock
        self.poll = poll
        self.batch_keep = batch_keep
        self.keep_sent = max([r.mail["per"] for r in rules.values() if r.mail] or [0.0])
        self.stop = threading.Event()
        self.wake = threading.Event()
        self._blocked = {}                  # webhook -> time before which it is not tried again
        self._limiter = RateLimiter(10.0)
        self._next_housekeeping = 0.0
        self._thread = None
        self.error = None

    # --- one step ---

    def step(self, state, now):
        """Send what is due at `now`; returns the time the next thing is due (or None)."""
        self._webhooks(state, now)
        self._digests(state, now)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_EVERY
            state.forget_batches(now - self.batch_keep)
        times = [t for t in (state.next_delivery(), state.next_window()) if t is not None]
        return min(times) if times else None

    def _webhooks(self, state, now):
        for delivery_id, name, rule, event_id, body, attempts, created in state.due_deliveries(now):
            hook = self.webhooks.get(name)
            if hook is None:
                state.give_up(delivery_id, "webhook_dropped_unknown")
                log.warning("notify: delivery of event %s to webhook %r given up: no such webhook in the config now",
                            event_id, name)
                continue
            blocked = self._blocked.get(name, 0.0)
            if blocked > now:
                state.retry(delivery_id, attempts, blocked, "waiting for %s to recover" % name, counted=False)
                continue
            outcome, detail = hook.post(rule, event_id, bytes(body), self.clock())
            if outcome == "ok":
                state.delivered(delivery_id)
                self._blocked.pop(name, None)
                continue
            if outcome == "refused":
                state.give_up(delivery_id, "webhook_refused")
                log.error("notify: webhook %s refused event %s (rule %s) with %s: given up", name, event_id, rule, detail)
                continue
            # The backoff counts from the end of the failed attempt, which may have waited for its timeout.
            ended = max(self.clock(), now)
            if ended - created >= hook.give_up_after:
                state.give_up(delivery_id, "webhook_expired")
                log.error("notify: webhook %s: event %s (rule %s) undelivered after %d attempts over %.0f s (%s): "
                          "given up", name, event_id, rule, attempts + 1, ended - created, detail)
            else:
                delay = hook.backoff(attempts + 1)
                state.retry(delivery_id, attempts + 1, ended + delay, detail)
                self._blocked[name] = ended + delay
                if self._limiter.allow(name):
                    log.warning("notify: webhook %s: %s (attempt %d of event %s; next in %.1f s, %d pending)",
                                name, detail, attempts + 1, event_id, delay, state.pending())

    def _digests(self, state, now):
        for name, opened, _due, unlisted, folded, attempts in state.due_windows(now):
            rule = self.rules.get(name)
            if rule is None or rule.mail is None or self.mailer is None:
                log.warning("notify: digest of %d events for rule %r dropped: the rule sends no mail now",
                            state.drop_window(name, unlisted), name)
                continue
            mail = rule.mail
            recent = state.sent_since(name, now - mail["per"])
            if len(recent) >= mail["max_mails"]:
                # Folded into the next mail: the window stays open and keeps collecting events.
                state.postpone(name, recent[-mail["max_mails"]] + mail["per"], "mail_rate_limited", folded=1)
                continue
            lines = state.window_lines(name)
            subject, body = compose(name, [line for _, line in lines], opened, now, unlisted, folded, mail)
            try:
                self.mailer.send(mail["to"], subject, body, self.mailer.message_id(name, opened))
            except (OSError, smtplib.SMTPException) as exc:
                delay = min(MAIL_BACKOFF_MIN * 2.0 ** min(attempts, 30), self.mailer.backoff_max)
                state.postpone(name, now + delay, "mail_failed_attempts", attempts=1)
                if self._limiter.allow("mail"):
                    log.warning("notify: digest for rule %s not sent: %s (attempt %d; next in %.1f s)",
                                name, exc, attempts + 1, delay)
                continue
            state.mailed(name, [e for e, _ in lines], now, now - self.keep_sent, mail["window"])

    # --- the thread ---

    def start(self):
        """Start the thread unless it runs already."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.stop.clear()
        self._thread = threading.Thread(target=self.run, name="notify-dispatch", daemon=True)
        self._thread.start()

    def close(self, timeout=2.0):
        """Stop the thread; a request in flight finishes on its own (its outcome is in the state)."""
        self.stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self):
        """Hold the lock, then step until stopped; errors of the state file are logged and retried."""
        lock_fd, state = None, None
        try:
            while not self.stop.is_set():
                delay = self.poll
                try:
                    if lock_fd is None:
                        lock_fd = _try_lock(self.path + ".lock")
                    if lock_fd is not None:
                        if state is None:
                            state = State(self.path)
                        nxt = self.step(state, self.clock())
                        if nxt is not None:
                            delay = min(max(nxt - self.clock(), 0.0), self.poll)
                except (sqlite3.Error, OSError) as exc:
                    if self._limiter.allow("state"):
                        log.error("notify: state file %s: %s (retrying)", self.path, exc)
                self.wake.wait(delay)
                self.wake.clear()
        finally:
            if state is not None:
                state.close()
            if lock_fd is not None:
                os.close(lock_fd)


def _try_lock(path):
    """An fd holding an exclusive flock on path, or None when another dispatcher holds it."""
    fd = fsmode.open_fd(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd
