"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<exact body>" with a secret read from a 0600 file.

The timestamp is signed with the body and sent beside it, so a receiver that refuses timestamps
older than a few minutes cannot be fed a recorded request again later; the idempotency key
(rule and IDEA event ID) lets it drop the duplicates that at-least-once delivery may bring.
docs/notifier.md has the receiver's side.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import stat

from myason.errors import ConfigError

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
        # O_NONBLOCK: a FIFO put in place of the file must not hang the start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(key, "cannot open %s: %s" % (path, exc.strerror or exc)) from None
    try:
        # fstat on the descriptor read, so the mode checked is that of the file read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(key, "%s is not a regular file" % path)
        if st.st_mode & 0o077:
            raise ConfigError(key, "%s has mode %04o: group or others may read the secret; fix with: chmod 600 %s"
                              % (path, stat.S_IMODE(st.st_mode), path))
        data = os.read(fd, _MAX_SECRET + 1)
    except OSError as exc:
        raise ConfigError(key, "cannot read %s: %s" % (path, exc.strerror or exc)) from None
    finally:
        os.close(fd)
    secret = data.strip()
    if len(data) > _MAX_SECRET or len(secret) < min_len:
        # Never echo the content: it is the secret, or most of it.
        raise ConfigError(key, "%s must hold a secret of %d to %d bytes" % (path, min_len, _MAX_SECRET))
    return secret
