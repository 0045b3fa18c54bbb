"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<exact body>" with a secret read from a 0600 file.

The timestamp is signed with the body and sent beside it, so a receiver that refuses timestamps
older than a few minutes cannot be fed a recorded request again later; the idempotency key
(rule and IDEA event ID) lets it drop the duplicates that at-least-once delivery may bring.
docs/notifier.md has the receiver's side.
"""
from __future__ import annotations

import hashlib
import hmac

from myason.errors import ConfigError, KeyFileError
from myason.keys import read_private

SIGNATURE_HEADER = "X-Myason-Signature"
TIMESTAMP_HEADER = "X-Myason-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RULE_HEADER = "X-Myason-Rule"
MIN_SECRET = 16
_MAX_SECRET = 4096


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """'sha256=<hex>' of HMAC-SHA256(secret, b'<timestamp>.' + body)."""
    mac = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def idempotency_key(rule: str, event_id: str) -> str:
    """The same for every attempt of one event through one rule: '<rule>:<event ID>'."""
    return "%s:%s" % (rule, event_id)


def headers(secret: bytes, rule: str, event_id: str, body: bytes, timestamp: int) -> dict:
    """The request headers of one attempt (signed at send time, so a retry carries a fresh timestamp)."""
    return {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(secret, timestamp, body),
            IDEMPOTENCY_HEADER: idempotency_key(rule, event_id), RULE_HEADER: rule,
            "User-Agent": "myason-notify"}


def read_secret(key, path, min_len=MIN_SECRET) -> bytes:
    """The secret in file `path` (surrounding whitespace cut); ConfigError(key) when it is missing,
    readable by group or others, not a regular file, or shorter than min_len bytes."""
    if not isinstance(path, str) or not path:
        raise ConfigError(key, "must be the path of a file holding the secret, got %r" % (path,))
    try:
        data = read_private(path, "secret file", limit=_MAX_SECRET + 1)
    except KeyFileError as exc:
        raise ConfigError(key, str(exc)) from None
    secret = data.strip()
    if len(data) > _MAX_SECRET or len(secret) < min_len:
        # Never echo the content: it is the secret, or most of it.
        raise ConfigError(key, "%s must hold a secret of %d to %d bytes" % (path, min_len, _MAX_SECRET))
    return secret
