"""Running the API under uvicorn: bind, announce the address (with the token), stop cleanly on SIGTERM."""
from __future__ import annotations

import logging
import signal
import socket

from myason.api.app import create_app
from myason.api.config import ApiConfig
from myason.api.db import open_database
from myason.config import format_endpoint

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


def serve(cfg: ApiConfig, database_spec: dict, token, announce=print) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code (0 after a clean stop)."""
    import uvicorn
    from myason.api.config import token_file_mode_ok
    if cfg.auth and cfg.token_file and not token_file_mode_ok(cfg.token_file):
        log.warning("api: %s can be read by group or others: chmod 600 it", cfg.token_file)
    database = open_database(database_spec, cfg.pool_size, cfg.query_timeout)
    app = create_app(cfg, database, token)
    sock = bind_socket(*cfg.bind)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=5, server_header=False))
    # uvicorn re-raises the signal it caught once it has shut down, to the handler it found at
    # start: a no-op handler here turns that into a normal return (exit 0).
    previous = {sig: signal.signal(sig, lambda s, f: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        announce("myason api: serving %s on %s: %s" % (database_spec["type"], format_endpoint(host, port),
                                                       page_url(host, port, token)))
        log.info("api: listening on %s (%s database)", format_endpoint(host, port), database_spec["type"])
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        database.close()
    log.info("api: stopped")
    return 0
