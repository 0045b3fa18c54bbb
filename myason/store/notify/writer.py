"""The `notify` writer: IDEA events from its spool -> rules -> webhook deliveries and digest lines
in its state file, which its dispatcher thread sends (docs/notifier.md).

Why a writer: the spool already gives it durability and a retry per batch, its own thread and
spool mean a dead receiver never holds back another store, and the events reach it the moment
they are accepted (no polling of a database). write() only records what is to be sent, in one
SQLite transaction with the batch's id, so a retried batch is taken in once; the sending, with
its backoff, runs beside it and resumes from the file after a restart. Flows are not used.
"""
import logging
import sqlite3
import time

import orjson

from myason.errors import ConfigError
from myason.options import (REQUIRED, check_float, check_int, check_list, check_mapping, check_optional, check_str,
                            parse_options)
from myason.store.base import Writer, WriterError, register
from myason.store.notify.dispatch import Dispatcher
from myason.store.notify.mail import Mailer
from myason.store.notify.rules import check_name, digest_line, parse_rules
from myason.store.notify.state import State
from myason.store.notify.webhook import Webhook

log = logging.getLogger("myason.store.notify")


@register
class NotifyWriter(Writer):
    """Alerts: matches each event against `rules`; sends signed webhooks and e-mail digests.

    Options: state (required): the SQLite file of what waits to be sent; webhooks: {name:
    {url, secret_file, timeout, backoff_min, backoff_max, give_up_after, ca_file}}; mail: the
    SMTP settings {host, port, sender, starttls, username, password_file, timeout, backoff_max};
    rules (required): [{name, category, source, target, nodes, webhooks, mail: {to, window,
    max_mails, per}}]; outbox_max (10000): pending webhook deliveries kept, the oldest dropped
    (and counted) past it; digest_max (1000): events listed per digest, the rest counted;
    poll (1.0): the longest the dispatcher sleeps; batch_keep_days (7).
    """

    name = "notify"
    stores_events = True
    SPEC = {
        "state": (REQUIRED, check_str(allow_empty=False, expected="a file path")),
        "webhooks": ({}, check_mapping),
        "mail": (None, check_optional(check_mapping)),
        "rules": (REQUIRED, check_list),
        "outbox_max": (10000, check_int(lo=1)),
        "digest_max": (1000, check_int(lo=1)),
        "poll": (1.0, check_float(lo=0, lo_open=True)),
        "batch_keep_days": (7, check_int(lo=1)),
    }

    def __init__(self, **options):
        super().__init__(**options)
        opts = parse_options(self.name, options, self.SPEC)
        self.path = opts["state"]
        self.outbox_max, self.digest_max = opts["outbox_max"], opts["digest_max"]
        webhooks = {}
        for hook, hook_options in opts["webhooks"].items():
            check_name("%s.webhooks" % self.name, hook)
            webhooks[hook] = Webhook("%s.webhooks.%s" % (self.name, hook), hook_options)
        mailer = Mailer(self.name + ".mail", opts["mail"]) if opts["mail"] is not None else None
        self.rules = parse_rules(self.name + ".rules", opts["rules"], set(webhooks), mailer is not None)
        unused = set(webhooks) - {h for r in self.rules for h in r.webhooks}
        if unused:
            raise ConfigError("%s.webhooks.%s" % (self.name, sorted(unused)[0]), "no rule sends to it")
        self.clock = time.time
        self.dispatcher = Dispatcher(self.path, webhooks, mailer, {r.name: r for r in self.rules},
                                     lambda: self.clock(), opts["poll"], opts["batch_keep_days"] * 86400.0)
        self.skipped = 0
        self.bad_events = 0
        self._state = None

    def open(self):
        """Open (or create) the state file, and start the dispatcher."""
        if self._state is None:
            try:
                self._state = State(self.path)
            except (sqlite3.Error, OSError) as exc:
                raise WriterError("notify: cannot open %s: %s" % (self.path, exc)) from None
        self.dispatcher.start()

    def write(self, batch_id, rows, events=()):
        """Record the deliveries and digest lines of the batch's events once; True when taken in."""
        if not events:
            return True
        if self._state is None:
            self.open()
        deliveries, digests = [], []
        for event in events:
            try:
                event_id = str(event["ID"])
                matched = [r for r in self.rules if r.matches(event)]
                body = orjson.dumps(event) if matched else b""
                line = digest_line(event) if any(r.mail for r in matched) else ""
            except (KeyError, TypeError, AttributeError, ValueError, orjson.JSONEncodeError) as exc:
                self.bad_events += 1
                log.error("notify: batch %s: an event cannot be matched (%s: %s); it is left out",
                          batch_id, type(exc).__name__, exc)
                continue
            for rule in matched:
                deliveries += [(hook, rule.name, event_id, body) for hook in rule.webhooks]
                if rule.mail:
                    digests.append((rule.name, rule.mail["window"], event_id, str(event.get("DetectTime", "")), line))
        try:
            dropped = self._state.accept(batch_id, deliveries, digests, self.clock(), self.outbox_max, self.digest_max)
        except sqlite3.Error as exc:
            raise WriterError("notify: cannot record batch %s in %s: %s" % (batch_id, self.path, exc)) from None
        if dropped is None:
            self.skipped += 1
            return False
        if dropped.get("webhook_dropped_outbox_full"):
            log.error("notify: outbox full (outbox_max %d): the %d oldest pending webhook deliveries dropped",
                      self.outbox_max, dropped["webhook_dropped_outbox_full"])
        if dropped.get("mail_unlisted"):
            log.warning("notify: %d events counted but not listed in a digest (digest_max %d)",
                        dropped["mail_unlisted"], self.digest_max)
        self.dispatcher.wake.set()
        return True

    def close(self):
        """Stop the dispatcher (what waits stays in the state file) and log the counters."""
        self.dispatcher.close()
        if self._state is not None:
            try:
                counters = self._state.counters()
                log.info("notify: %d deliveries pending; %s", self._state.pending(),
                         ", ".join("%s %d" % kv for kv in sorted(counters.items())) or "nothing sent yet")
            except sqlite3.Error as exc:
                log.warning("notify: cannot read %s: %s", self.path, exc)
            self._state.close()
            self._state = None
