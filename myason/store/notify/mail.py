"""E-mail digests: the SMTP settings, the plain-text digest of one rule's window, sending with smtplib.

Like Mentat's reporter: one mail per rule and window, listing every event of the window (time
UTC, categories, sources -> targets, description, event ID). Its Message-ID is made from the
rule and the window's opening time, so the rare duplicate after a crash mid-send is the same
message to a mail client.
"""
from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from myason.errors import ConfigError
from myason.options import (REQUIRED, check_bool, check_float, check_int, check_optional, check_str,
                            parse_endpoint, parse_options)
from myason.store.notify import signing
from myason.store.notify.rules import utc_text

SPEC = {
    "host": (REQUIRED, check_str(allow_empty=False, expected="an SMTP server's host name or address")),
    "port": (25, check_int(1, 65535)),
    "sender": (REQUIRED, check_str(allow_empty=False, expected="the From address (user@domain)")),
    "starttls": (False, check_bool()),
    "username": (None, check_optional(check_str(allow_empty=False))),
    "password_file": (None, check_optional(check_str(allow_empty=False, expected="a file path (mode 0600)"))),
    "timeout": (30.0, check_float(lo=0, lo_open=True)),
    "backoff_max": (600.0, check_float(lo=0, lo_open=True)),
}


class Mailer:
    """Sends digests through one SMTP server (optionally STARTTLS and AUTH)."""

    def __init__(self, key, options):
        opts = parse_options(key, options, SPEC)
        # The host as the rest of the config spells endpoints (checked the same way).
        parse_endpoint(key + ".host", "[%s]:1" % opts["host"] if ":" in opts["host"] else opts["host"] + ":1")
        if "@" not in opts["sender"]:
            raise ConfigError(key + ".sender", "must be an e-mail address, got %r" % opts["sender"])
        if (opts["username"] is None) != (opts["password_file"] is None):
            raise ConfigError(key + ".username", "give username and password_file together, or neither")
        self.host, self.port, self.sender = opts["host"], opts["port"], opts["sender"]
        self.starttls, self.timeout = opts["starttls"], opts["timeout"]
        self.backoff_max = opts["backoff_max"]
        self.username = opts["username"]
        self.password = (signing.read_secret(key + ".password_file", opts["password_file"], min_len=1).decode()
                         if opts["password_file"] else None)

    def send(self, to, subject, body, message_id):
        """Send one plain-text mail; raises OSError or smtplib.SMTPException when it was not accepted."""
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = message_id
        msg.set_content(body)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password)
            smtp.send_message(msg, self.sender, list(to))

    def message_id(self, rule, opened):
        """The Message-ID of a rule's window (same for every attempt at sending it)."""
        return "<myason-notify.%s.%d@%s>" % (rule, int(opened * 1000), self.sender.rsplit("@", 1)[1])


def compose(rule, lines, opened, now, unlisted=0, folded=0, mail=None):
    """(subject, body) of the digest of one rule's window: `lines` are the events' digest lines."""
    total = len(lines) + unlisted
    subject = "[myason] %s: %d event%s since %s" % (rule, total, "" if total == 1 else "s", utc_text(opened))
    out = ["Rule %s: %d event%s between %s and %s (UTC)." % (rule, total, "" if total == 1 else "s",
                                                              utc_text(opened), utc_text(now))]
    if folded:
        out.append("The rate limit (at most %d mails per %g s for this rule) held this digest back %d time%s: "
                   "the windows in between are folded into this one."
                   % (mail["max_mails"], mail["per"], folded, "" if folded == 1 else "s"))
    out += ["", "time (UTC)  category  sources -> targets  description  [event id]"]
    out += lines
    if unlisted:
        out += ["", "%d more event%s matched but are not listed (digest_max reached)."
                % (unlisted, "" if unlisted == 1 else "s")]
    out += ["", "-- ", "myason notify (docs/notifier.md)"]
    return subject, "\n".join(out) + "\n"
