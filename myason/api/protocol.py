"""uvicorn's HTTP/1.1 protocol with the two bounds it lacks: a header-read timeout and a hard
connection cap, so that slow or idle clients cannot hold the server (issue 12, item 5).

uvicorn times out only idle keep-alive connections, after a response; a client that connects
and sends nothing, or its headers a byte at a time, was kept for ever, each holding a file
descriptor. Here every connection must deliver a complete request head within
`header_timeout` seconds of connecting (or of its first byte after a keep-alive pause), else it
gets 408 and is closed. `limit_concurrency` (uvicorn) answers 503 only once a request was read;
a connection beyond `max_connections` is answered 503 and closed at once, so the descriptors in
use stay bounded whatever clients do. The header size is bounded by h11's
max_incomplete_event_size (`max_header_bytes`), the request line included.
"""
from __future__ import annotations

import logging
import resource
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("myason.api")
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_WARN_EVERY = 10.0      # seconds between two warnings about refused connections (a flood would fill the log)
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def guarded_protocol(max_connections: int, header_timeout: float):
    """An H11Protocol subclass bounded by `max_connections` and `header_timeout` (for uvicorn.Config(http=...))."""

    warned = [0.0]

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._head_timer = None
            if len(self.connections) > max_connections:
                if time.monotonic() - warned[0] >= _WARN_EVERY:
                    warned[0] = time.monotonic()
                    log.warning("api: %d connections open, refusing more (max_connections)", max_connections)
                transport.write(_BUSY)
                transport.close()
                return
            self._arm_head_timer()

        def data_received(self, data):
            if self.transport.is_closing():     # refused above, or timed out: nothing more is read
                return
            # Bytes after a keep-alive pause start a new request head: it gets its own deadline.
            if self._head_timer is None and self.conn.their_state is h11.IDLE:
                self._arm_head_timer()
            super().data_received(data)

        def connection_lost(self, exc):
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _arm_head_timer(self):
            self._head_timer = self.loop.call_later(header_timeout, self._head_timeout, self.cycle)

        def _head_timeout(self, cycle_at_arm):
            self._head_timer = None
            # A new cycle means a complete request head arrived in time; IDLE means none is started.
            if self.cycle is cycle_at_arm and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(_TIMEOUT)
                self.transport.close()

    return GuardedH11Protocol


def raise_open_files_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `needed` (up to the hard limit); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
