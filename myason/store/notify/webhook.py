"""Webhook endpoints: their options, one signed POST per attempt (http.client), the backoff schedule.

A POST is never redirected (a 3xx is a failed attempt: the signature and the idempotency key
were meant for this URL). 2xx delivers; 408, 425, 429 and 5xx, timeouts and connection errors
are retried with exponential backoff; any other 4xx means the receiver refuses this body for
good, so the delivery is given up and counted instead of retried forever.
"""
from __future__ import annotations

import http.client
import ssl
import urllib.parse

from myason.errors import ConfigError
from myason.options import REQUIRED, check_float, check_optional, check_str, parse_options
from myason.store.notify import signing

RETRYABLE_4XX = frozenset((408, 425, 429))


def check_url(key, value):
    """An http:// or https:// URL with a host and no user:password part (the secret signs instead)."""
    if not isinstance(value, str):
        raise ConfigError(key, "must be an http:// or https:// URL, got %r" % (value,))
    try:
        url = urllib.parse.urlsplit(value)
        if url.port == 0:       # reading .port also rejects a port that is not a number
            raise ValueError("port 0")
    except ValueError as exc:
        raise ConfigError(key, "not a valid URL: %s" % exc) from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(key, "must be an http:// or https:// URL with a host, got %r" % value)
    if url.username or url.password:
        raise ConfigError(key, "must not carry user:password (requests are signed with secret_file)")
    if url.fragment or any(c.isspace() for c in value):
        raise ConfigError(key, "must not have a #fragment or spaces, got %r" % value)
    return value


SPEC = {
    "url": (REQUIRED, check_url),
    "secret_file": (REQUIRED, check_str(allow_empty=False, expected="the path of a file (mode 0600)")),
    "timeout": (10.0, check_float(lo=0, lo_open=True)),
    "backoff_min": (1.0, check_float(lo=0, lo_open=True)),
    "backoff_max": (600.0, check_float(lo=0, lo_open=True)),
    "give_up_after": (86400.0, check_float(lo=0, lo_open=True)),
    "ca_file": (None, check_optional(check_str(allow_empty=False, expected="a file of CA certificates"))),
}


class Webhook:
    """One configured endpoint: where, how it is signed, how long to wait and retry."""

    def __init__(self, key, options):
        opts = parse_options(key, options, SPEC)
        if opts["backoff_max"] < opts["backoff_min"]:
            raise ConfigError(key + ".backoff_max", "must be at least backoff_min (%s)" % opts["backoff_min"])
        self.name = key.rsplit(".", 1)[-1]
        self.url = opts["url"]
        self.secret = signing.read_secret(key + ".secret_file", opts["secret_file"])
        self.timeout = opts["timeout"]
        self.backoff_min, self.backoff_max = opts["backoff_min"], opts["backoff_max"]
        self.give_up_after = opts["give_up_after"]
        self._ssl = None
        if urllib.parse.urlsplit(self.url).scheme == "https":
            try:
                self._ssl = ssl.create_default_context(cafile=opts["ca_file"])
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(key + ".ca_file", "cannot load %s: %s" % (opts["ca_file"], exc)) from None

    def backoff(self, attempts):
        """Seconds to wait after the attempts-th failed attempt: backoff_min doubling up to backoff_max."""
        return min(self.backoff_min * 2.0 ** min(max(attempts - 1, 0), 60), self.backoff_max)

    def post(self, rule, event_id, body, now):
        """One attempt; returns (outcome, detail): outcome 'ok', 'retry' or 'refused'."""
        url = urllib.parse.urlsplit(self.url)
        target = (url.path or "/") + ("?" + url.query if url.query else "")
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=self.timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=self.timeout)
        try:
            conn.request("POST", target, body=body,
                         headers=signing.headers(self.secret, rule, event_id, body, int(now)))
            response = conn.getresponse()
            response.read(65536)
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            return "retry", "%s: %s" % (type(exc).__name__, exc)
        finally:
            conn.close()
        if 200 <= status < 300:
            return "ok", "HTTP %d" % status
        if 400 <= status < 500 and status not in RETRYABLE_4XX:
            return "refused", "HTTP %d" % status
        return "retry", "HTTP %d" % status
