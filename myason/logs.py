"""Logging setup: dictConfig from YAML, handlers served by one queue thread, JSON lines, rate limiting."""
from __future__ import annotations

import atexit
import copy
import datetime
import json
import logging
import logging.config
import logging.handlers
import queue
import threading
import time

from myason.options import read_yaml_mapping
from myason.errors import ConfigError
from myason.redact import redact_text

MESSENGER_THREAD = "messenger"

# LogRecord's own attributes; anything else on a record came from `extra=` and goes into JSON output.
_RECORD_ATTRS = frozenset((
    "name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module", "exc_info",
    "exc_text", "stack_info", "lineno", "funcName", "created", "msecs", "relativeCreated", "thread",
    "threadName", "processName", "process", "taskName", "message", "asctime",
))
_TARGETS_ATTR = "_myason_targets"

_PLAIN = logging.Formatter()
_active = None  # the LogHandle of the last setup_logging call, stopped by the next one


def default_config() -> dict:
    """The built-in dictConfig used when no file is given (the same as conf/logging.yaml)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "console": {"format": "%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler", "formatter": "console", "stream": "ext://sys.stderr",
            },
        },
        "loggers": {"myason": {"level": "INFO", "handlers": ["console"], "propagate": False}},
        "root": {"level": "WARNING", "handlers": ["console"]},
    }


def parse_level(level) -> int:
    """A logging level from a name ('debug', 'INFO') or number; ConfigError('level', ...) otherwise."""
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str):
        value = logging.getLevelName(level.strip().upper())
        if isinstance(value, int):
            return value
    raise ConfigError("level", "must be a logging level such as DEBUG, INFO or WARNING, got %r" % (level,))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339 UTC), level, logger, thread, message, plus extra fields."""

    def format(self, record):
        """Render `record` as a single-line JSON object."""
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        doc = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % int(record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        # default=str: an odd `extra` value must not cost the whole line.
        return json.dumps(doc, default=str)


class _RoutingQueueHandler(logging.handlers.QueueHandler):
    """Queues records for the messenger, tagged with the real handlers of the logger it replaced."""

    def __init__(self, q, targets):
        super().__init__(q)
        self.targets = tuple(targets)

    def prepare(self, record):
        """Copy `record` with its message merged and exception pre-formatted, ready for another thread."""
        record = copy.copy(record)
        # Passwords and tokens never reach a log (a driver's error may quote a DSN or URL).
        record.msg = record.message = redact_text(record.getMessage())
        record.args = None
        if record.exc_info:
            # Format now, in the emitting thread, while the traceback is still accurate; keep it in
            # exc_text (not merged into msg) so the JSON formatter can report it separately.
            record.exc_text = record.exc_text or _PLAIN.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        setattr(record, _TARGETS_ATTR, self.targets)
        return record


class _RoutingListener(logging.handlers.QueueListener):
    """A QueueListener that hands each record only to the handlers its logger had."""

    def start(self):
        """Start the messenger thread."""
        self._thread = threading.Thread(target=self._monitor, name=MESSENGER_THREAD, daemon=True)
        self._thread.start()

    def handle(self, record):
        """Dispatch one record to its target handlers, honouring their levels."""
        for handler in getattr(record, _TARGETS_ATTR, self.handlers):
            if record.levelno >= handler.level:
                try:
                    handler.handle(record)
                except Exception:  # noqa: BLE001 - one broken handler must not kill the messenger
                    handler.handleError(record)


class LogHandle:
    """The running logging setup; stop() drains the queue and puts the real handlers back."""

    def __init__(self, listener, log_queue, routes, handlers):
        self.listener = listener
        self.queue = log_queue
        self.handlers = tuple(handlers)
        self._routes = routes  # [(logger, queue handler, original handlers)]
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def running(self) -> bool:
        """True until stop() is called."""
        return not self._stopped

    def stop(self) -> None:
        """Flush every queued record and stop the messenger thread; safe to call twice."""
        global _active
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        # Put the real handlers back first so records logged during shutdown are written directly
        # rather than queued behind a listener that is about to exit.
        for logger, qhandler, originals in self._routes:
            logger.removeHandler(qhandler)
            for handler in originals:
                logger.addHandler(handler)
        self.listener.stop()
        for handler in self.handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - a broken handler must not break shutdown
                pass
        if _active is self:
            _active = None
        atexit.unregister(self.stop)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _configured_loggers(cfg):
    # Only loggers the file configures: handlers someone else put on root (pytest's capture,
    # an embedding application) are left alone.
    loggers = [logging.getLogger(name) for name in (cfg.get("loggers") or {})]
    if "root" in cfg:
        loggers.append(logging.getLogger())
    return loggers


def setup_logging(config_path=None, level=None, json_format=False) -> LogHandle:
    """Configure logging from a dictConfig YAML (built-in default when None) behind a queue thread.

    `level` overrides the level of the `myason` logger; `json_format` swaps every handler's
    formatter for JsonFormatter. A previous setup is stopped first.
    """
    source = str(config_path) if config_path is not None else "built-in logging configuration"
    cfg = read_yaml_mapping(config_path) if config_path is not None else default_config()
    override = parse_level(level) if level is not None else None
    if _active is not None:
        _active.stop()
    try:
        logging.config.dictConfig(cfg)
    except Exception as exc:  # noqa: BLE001 - dictConfig raises many types for bad input
        raise ConfigError(source, "invalid logging configuration: %s" % exc) from None
    if override is not None:
        logging.getLogger("myason").setLevel(override)
    return _install_queue(_configured_loggers(cfg), json_format)


def _install_queue(loggers, json_format):
    global _active
    # Unbounded so that emitting never blocks a pipeline thread; floods are the RateLimiter's job.
    log_queue = queue.SimpleQueue()
    routes, handlers = [], []
    for logger in loggers:
        originals = list(logger.handlers)
        if not originals:
            continue
        for handler in originals:
            logger.removeHandler(handler)
            if handler not in handlers:
                handlers.append(handler)
        qhandler = _RoutingQueueHandler(log_queue, originals)
        logger.addHandler(qhandler)
        routes.append((logger, qhandler, originals))
    if json_format:
        for handler in handlers:
            handler.setFormatter(JsonFormatter())
    listener = _RoutingListener(log_queue, *handlers)
    listener.start()
    handle = LogHandle(listener, log_queue, routes, handlers)
    _active = handle
    # Without this, records still queued when the interpreter exits would be lost.
    atexit.register(handle.stop)
    return handle


def restart_messenger() -> bool:
    """Replace the messenger thread of the running setup with a new one started by the caller.

    A new thread starts with its creator's privileges: the agent calls this after dropping a
    capability so that no thread keeps it. Records queued meanwhile are written by the new
    thread. False when no setup runs.
    """
    handle = _active
    if handle is None or not handle.running:
        return False
    handle.listener.stop()
    handle.listener.start()
    return True


class RateLimiter:
    """At most `burst` logs per key per interval; suppressed(key) tells how many were skipped before.

    max_keys bounds the state for keys that come from the network (agent ids, addresses): when
    it is full, the key least recently allowed is forgotten to make room.
    """

    def __init__(self, interval=10.0, clock=time.monotonic, burst=1, max_keys=None):
        self.interval = float(interval)
        self.burst = max(1, int(burst))
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [window start, allowed in it, suppressed since the last allowed, suppressed before it]
        self._state = {}

    def allow(self, key) -> bool:
        """True if a message for `key` may be logged now; otherwise count it as suppressed."""
        now = self._clock()
        with self._lock:
            state = self._state.get(key)
            if state is None:
                if self.max_keys is not None and len(self._state) >= self.max_keys:
                    del self._state[next(iter(self._state))]
                self._state[key] = [now, 1, 0, 0]
                return True
            if now - state[0] >= self.interval:
                state[0], state[1] = now, 1
            elif state[1] < self.burst:
                state[1] += 1
            else:
                state[2] += 1
                return False
            state[3], state[2] = state[2], 0
            if self.max_keys is not None:
                # Dicts keep insertion order: re-inserting makes it the last to be forgotten.
                del self._state[key]
                self._state[key] = state
            return True

    def suppressed(self, key) -> int:
        """How many messages for `key` were suppressed before the last allowed one."""
        with self._lock:
            state = self._state.get(key)
            return state[3] if state else 0

    def pending(self, key) -> int:
        """How many messages for `key` have been suppressed since the last allowed one."""
        with self._lock:
            state = self._state.get(key)
            return state[2] if state else 0
