"""Running the API under uvicorn: bind, announce the address, stop cleanly on SIGTERM.

The token is a secret: it is printed only when it was generated for this run and stdout is a
terminal. Otherwise the address is printed without it (it would land in the journal or a log
file) with where the token is: the configured token_file, or the 0600 file a generated token
is written to (removed at exit).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile

from myason.api.app import create_app
from myason.api.config import ApiConfig, token_is_generated
from myason.api.db import open_database
from myason.api.protocol import ConnectionGuard, raise_open_files_limit
from myason.options import format_endpoint
from myason.errors import ConfigError

log = logging.getLogger("myason.api")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError("cannot listen on %s: %s" % (format_endpoint(host, port), exc.strerror or exc)) from None
    sock.set_inheritable(True)
    return sock


def page_url(host: str, port: int, token) -> str:
    """The page's address, with the token in the fragment (browsers never send the fragment)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    return "http://%s/%s" % (format_endpoint(shown, port), "#token=%s" % token if token else "")


def token_dir() -> str:
    """Where a generated token's file goes: systemd's RuntimeDirectory, the user's runtime dir, else the temp dir."""
    for var in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        d = (os.environ.get(var) or "").split(":")[0]
        if d and os.path.isdir(d):
            return d
    return tempfile.gettempdir()


def write_token_file(token: str) -> str:
    """A new file with mode 0600 holding `token`; returns its path."""
    d = token_dir()
    try:
        fd, path = tempfile.mkstemp(prefix="myason-api-", suffix=".token", dir=d)    # mode 0600
    except OSError as exc:
        raise ConfigError("token_file", "cannot write the generated token in %s (%s): set token or token_file"
                          % (d, exc.strerror or exc)) from None
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return path


def announcement(cfg: ApiConfig, db_type, host, port, token, terminal, generated_file=None) -> str:
    """The start line: the page's address, with the token only when it was generated and goes to a terminal."""
    where = "myason api: serving %s on %s: " % (db_type, format_endpoint(host, port))
    if not cfg.auth:
        return where + page_url(host, port, None) + " (no auth)"
    if generated_file and terminal:
        return where + page_url(host, port, token) + " (token also in %s)" % generated_file
    if generated_file:
        return where + page_url(host, port, None) + " (token in %s, mode 0600)" % generated_file
    if cfg.token_file:
        return where + page_url(host, port, None) + " (token in %s)" % cfg.token_file
    return where + page_url(host, port, None) + " (token from the configuration)"


def serve(cfg: ApiConfig, database_spec: dict, token, announce=print, terminal=None) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code (0 after a clean stop).

    `terminal`: whether `announce` writes to a terminal (default: stdout is a tty).
    """
    import uvicorn
    from myason.api.config import token_file_mode_ok
    if cfg.auth and cfg.token_file and not token_file_mode_ok(cfg.token_file):
        log.warning("api: %s can be read by group or others: chmod 600 it", cfg.token_file)
    if terminal is None:
        terminal = sys.stdout.isatty()
    generated_file = write_token_file(token) if token_is_generated(cfg) and token else None
    # Every connection is a descriptor: room for max_connections, the pool and the rest.
    soft = raise_open_files_limit(cfg.max_connections + cfg.pool_size + 64)
    if soft < cfg.max_connections + cfg.pool_size + 16:
        log.warning("api: the open files limit (%d) is below max_connections (%d): raise LimitNOFILE",
                    soft, cfg.max_connections)
    database = open_database(database_spec, cfg.pool_size, cfg.query_timeout)
    app = create_app(cfg, database, token)
    sock = bind_socket(*cfg.bind)
    host, port = sock.getsockname()[:2]
    # The connection cap is the protocol's (connections past it are refused before any byte is
    # read); uvicorn's limit_concurrency, one above it, then bounds only the requests in flight.
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5, server_header=False,
        http=ConnectionGuard(cfg.max_connections, cfg.header_timeout), limit_concurrency=cfg.max_connections + 1,
        timeout_keep_alive=cfg.keepalive_timeout, h11_max_incomplete_event_size=cfg.max_header_bytes))
    # uvicorn re-raises the signal it caught once it has shut down, to the handler it found at
    # start: this handler turns that into a normal return (exit 0). A signal that comes before
    # uvicorn has installed its own (just after the address is printed) asks it to stop at once,
    # instead of being lost.
    previous = {sig: signal.signal(sig, lambda s, f: setattr(server, "should_exit", True))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        announce(announcement(cfg, database_spec["type"], host, port, token, terminal, generated_file))
        log.info("api: listening on %s (%s database)", format_endpoint(host, port), database_spec["type"])
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        # lifespan="off" (above): the app's lifespan does not run, so the search workers are
        # stopped here (a running search finishes, up to 5 s) before the database goes.
        app.state.searches.close()
        database.close()
        if generated_file:
            with contextlib.suppress(OSError):
                os.unlink(generated_file)
    log.info("api: stopped")
    return 0
