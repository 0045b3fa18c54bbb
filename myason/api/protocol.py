"""The two bounds uvicorn lacks, by composition: a header-read timeout and a hard connection cap,
so that slow or idle clients cannot hold the server (issue 12, item 5).

uvicorn times out only idle keep-alive connections, after a response; a client that connects
and sends nothing, or its headers a byte at a time, was kept for ever, each holding a file
descriptor. Here every connection must deliver a complete request head within
`header_timeout` seconds of connecting (or of its first byte after a keep-alive pause), else it
gets 408 and is closed. `limit_concurrency` (uvicorn) answers 503 only once a request was read;
a connection beyond `max_connections` is answered 503 and closed at once, so the descriptors in
use stay bounded whatever clients do. The header size is bounded by uvicorn's public
`h11_max_incomplete_event_size` (`max_header_bytes`), the request line included.

How (house rule: wrap third-party classes, do not subclass them): `ConnectionGuard` is what
`uvicorn.Config(http=...)` gets. uvicorn calls it once per connection with the keyword
arguments it gives any `http=` class, and it answers a `GuardedConnection`: an asyncio.Protocol
of ours that owns the real uvicorn protocol (`H11Protocol`, built with those same arguments)
and forwards it every protocol callback. The guard sees only what any protocol sees:

- the connections: its own counter, shared by the connections of one server;
- the request heads, in the bytes received: a head starts with the first byte of a request and
  is complete at the first CRLF CRLF after it;
- the responses, in the bytes written: the inner protocol is handed a thin transport proxy
  (`_ObservedTransport`) that notes every write before passing it on. A head is answered once a
  final status line is written after it (interim 1xx lines, such as 100 Continue, do not
  count); the next request starts with the first byte received after that, and its deadline
  runs from the later of that byte and the server's last write, so that the rest of a response
  still being written does not count against it. A 101 (WebSocket) ends the guarding.

Why this holds with bodies and pipelining: the bytes received between a complete head and the
start of its answer (a body, or requests pipelined behind it) are never searched for a head
end, so a body cannot end a head early, and a pipelined request the inner protocol already
holds is not timed while it waits its turn (it is served after the response before it, and
uvicorn's own keep-alive timeout still closes a connection whose pipelined head stays
incomplete and silent). The last three of those bytes do seed the next search, so a head whose
CRLF CRLF straddles the start of the previous answer is still seen complete. The deadline does
not run while the inner protocol has paused reading (the client cannot be blamed for bytes that
are not read). The residue: a request whose answer comes before its body was read (early
401/405) has the rest of its body searched as the next head; such a body is either timed as a
head (408) or, holding a CRLF CRLF, lets the connection go untimed, as a body sent slowly always
did: `max_connections` bounds both.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("myason.api")
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_WARN_EVERY = 10.0      # seconds between two warnings about refused connections (a flood would fill the log)
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_HEAD_END = b"\r\n\r\n"

# The phases of a guarded connection.
_HEAD = "head"          # a request head is expected (timed once its first byte came, or from connect)
_ANSWER = "answer"      # a head is complete: waiting for the final status line of its answer
_OFF = "off"            # refused, or upgraded (WebSocket): nothing more to guard


class ConnectionGuard:
    """What uvicorn.Config(http=...) gets: a protocol factory bounding every connection of one server
    by `max_connections` (a counter shared by them) and `header_timeout`.

    `inner` is the uvicorn protocol class wrapped; uvicorn calls the guard with the keyword
    arguments it passes its protocol classes (config, server_state, app_state, _loop), and they
    are passed on to `inner` untouched."""

    def __init__(self, max_connections: int, header_timeout: float, inner=H11Protocol):
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.inner = inner
        self.open = 0           # connections made and not yet lost, refused ones included
        self._warned = 0.0

    def __call__(self, **uvicorn_args) -> GuardedConnection:
        return GuardedConnection(self, self.inner(**uvicorn_args))

    def refusing(self):
        if time.monotonic() - self._warned >= _WARN_EVERY:
            self._warned = time.monotonic()
            log.warning("api: %d connections open, refusing more (max_connections)", self.max_connections)


class GuardedConnection(asyncio.Protocol):
    """One connection: forwards every callback to the uvicorn protocol it owns, and applies the bounds."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol):
        self.guard = guard
        self.inner = inner
        self.transport = None           # the real one; the inner protocol gets `proxy`
        self.proxy = None               # the _ObservedTransport, once the inner protocol has the connection
        self.counted = False
        self.phase = _HEAD
        self.tail = b""                 # the last bytes (at most 3) received since the last head end
        self.timer = None
        self.since = 0.0                # when the current head's clock started
        self.last_write = 0.0

    # -- the protocol callbacks, forwarded ---------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.guard.open += 1
        self.counted = True
        if self.guard.open > self.guard.max_connections:
            self.guard.refusing()
            self.phase = _OFF
            transport.write(_BUSY)
            transport.close()
            return                      # the inner protocol never saw this connection
        self.proxy = _ObservedTransport(transport, self)
        self.inner.connection_made(self.proxy)
        self._arm()                     # the first head is timed from the connection

    def data_received(self, data):
        if self.transport.is_closing():     # refused, or timed out: nothing more is read
            return
        if self.phase == _HEAD:
            if self.timer is None:          # its first byte after a keep-alive pause
                self._arm()
            seen = self.tail + data
            end = seen.find(_HEAD_END)
            if end >= 0:
                self.phase = _ANSWER
                self._disarm()
                self.tail = seen[end + len(_HEAD_END):][-3:]
            else:
                self.tail = seen[-3:]
        elif self.phase == _ANSWER:
            self.tail = (self.tail + data)[-3:]
        self.inner.data_received(data)

    def eof_received(self):
        return None if self.proxy is None else self.inner.eof_received()

    def connection_lost(self, exc):
        self._disarm()
        if self.counted:
            self.counted = False
            self.guard.open -= 1
        if self.proxy is not None:      # a refused connection never reached the inner protocol
            self.inner.connection_lost(exc)

    def pause_writing(self):
        if self.proxy is not None:
            self.inner.pause_writing()

    def resume_writing(self):
        if self.proxy is not None:
            self.inner.resume_writing()

    # -- what the transport proxy reports -----------------------------------------------------------

    def written(self, data):
        if not data:
            return
        self.last_write = time.monotonic()
        if self.phase != _ANSWER:
            return
        if data[:5] == b"HTTP/" and data[8:10] == b" 1":       # an interim or a 101 status line
            if data[9:12] == b"101":
                self.upgraded()
                return
            end = data.find(_HEAD_END)
            if end < 0 or end + len(_HEAD_END) == len(data):
                return                  # 100 Continue and the like: the answer is still to come
        self.phase = _HEAD              # the answer started: the next byte received starts a request

    def upgraded(self):
        """The connection left HTTP (101, or the inner protocol handed the transport to another)."""
        self.phase = _OFF
        self._disarm()

    # -- the head timer -------------------------------------------------------------------------------

    def _arm(self):
        """Starts the current head's clock: header_timeout from now."""
        self.since = time.monotonic()
        self._schedule(self.guard.header_timeout)

    def _schedule(self, delay):
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(delay, self._expired)

    def _disarm(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self):
        self.timer = None
        if self.phase != _HEAD or self.transport.is_closing():
            return
        if self.proxy.reading_paused:           # the inner protocol is not reading: not the client's time
            self._arm()
            return
        left = max(self.since, self.last_write) + self.guard.header_timeout - time.monotonic()
        if left > 0.001:                        # the server wrote since: the deadline runs from its last write
            self._schedule(left)
            return
        self.transport.write(_TIMEOUT)
        self.transport.close()


class _ObservedTransport:
    """The transport the inner protocol gets: the real one, with its writes and reading pauses noted
    (for the guard's view of the responses) and its protocol switch (WebSocket upgrade) made in the
    guard, which stays the real transport's protocol. Everything else is the real transport's."""

    def __init__(self, transport, guarded: GuardedConnection):
        self._transport = transport
        self._guarded = guarded
        self.reading_paused = False

    def write(self, data):
        self._guarded.written(data)
        self._transport.write(data)

    def writelines(self, list_of_data):
        data = b"".join(list_of_data)
        self._guarded.written(data)
        self._transport.write(data)

    def pause_reading(self):
        self.reading_paused = True
        self._transport.pause_reading()

    def resume_reading(self):
        self.reading_paused = False
        self._transport.resume_reading()

    def set_protocol(self, protocol):
        self._guarded.upgraded()
        self._guarded.inner = protocol

    def get_protocol(self):
        return self._guarded.inner

    def __getattr__(self, name):
        return getattr(self._transport, name)


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
