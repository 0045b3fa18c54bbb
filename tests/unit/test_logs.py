"""Tests for myason.logs: queue-backed setup, JSON lines, rate limiting."""
import json
import logging
import logging.handlers
import re
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from myason import logs
from myason.errors import ConfigError
from myason.logs import JsonFormatter, RateLimiter, setup_logging

REPO = Path(__file__).resolve().parents[2]

SLOW_HANDLER_MODULE = '''
import logging, threading

class SlowHandler(logging.Handler):
    gate = threading.Event()
    seen = []

    def emit(self, record):
        self.gate.wait(5)
        self.seen.append((record.getMessage(), threading.current_thread().name))
'''


@pytest.fixture(autouse=True)
def restore_logging():
    """Put the root and myason loggers back as they were, so other tests see pytest's handlers."""
    saved = {}
    for name in ("", "myason"):
        lg = logging.getLogger(name or None)
        saved[name] = (lg, list(lg.handlers), lg.level, lg.propagate, lg.disabled)
    yield
    if logs._active is not None:
        logs._active.stop()
    for lg, handlers, level, propagate, disabled in saved.values():
        for h in list(lg.handlers):
            lg.removeHandler(h)
            if h not in handlers:
                h.close()
        for h in handlers:
            lg.addHandler(h)
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


def file_config(tmp_path, fmt="%(threadName)s|%(name)s|%(message)s", root_file=None, handler_level=None):
    """Write a dictConfig YAML sending myason.* to tmp_path/out.log (and root to root_file)."""
    out = tmp_path / "out.log"
    handlers = {"out": {"class": "logging.FileHandler", "filename": str(out), "formatter": "f"}}
    if handler_level:
        handlers["out"]["level"] = handler_level
    cfg = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"f": {"format": fmt}},
        "handlers": handlers,
        "loggers": {"myason": {"level": "INFO", "handlers": ["out"], "propagate": False}},
    }
    if root_file:
        handlers["root"] = {"class": "logging.FileHandler", "filename": str(root_file), "formatter": "f"}
        cfg["root"] = {"level": "WARNING", "handlers": ["root"]}
    path = tmp_path / "logging.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path), out


def test_records_from_many_threads_arrive_through_the_listener(tmp_path):
    path, out = file_config(tmp_path)
    handle = setup_logging(path)
    log = logging.getLogger("myason.test")
    assert all(isinstance(h, logging.handlers.QueueHandler) for h in logging.getLogger("myason").handlers)
    assert any(t.name == logs.MESSENGER_THREAD for t in threading.enumerate())

    def worker(n):
        for i in range(50):
            log.info("w%d m%d", n, i)

    threads = [threading.Thread(target=worker, args=(n,), name="worker-%d" % n) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handle.stop()
    lines = out.read_text().splitlines()
    assert len(lines) == 200
    for n in range(4):
        mine = [line for line in lines if line.startswith("worker-%d|" % n)]
        assert mine == ["worker-%d|myason.test|w%d m%d" % (n, n, i) for i in range(50)]
    assert not any(t.name == logs.MESSENGER_THREAD and t.is_alive() for t in threading.enumerate())


def test_emitting_does_not_wait_for_a_slow_handler(tmp_path, monkeypatch):
    (tmp_path / "slow_handler_mod.py").write_text(SLOW_HANDLER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"slow": {"()": "slow_handler_mod.SlowHandler"}},
           "loggers": {"myason": {"level": "INFO", "handlers": ["slow"], "propagate": False}}}
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(cfg))
    handle = setup_logging(str(path))
    slow = sys.modules["slow_handler_mod"].SlowHandler
    start = time.monotonic()
    logging.getLogger("myason.x").warning("quick")
    assert time.monotonic() - start < 1.0
    assert slow.seen == []
    slow.gate.set()
    handle.stop()
    assert slow.seen == [("quick", logs.MESSENGER_THREAD)]


def test_routing_keeps_each_loggers_handlers(tmp_path):
    root_file = tmp_path / "root.log"
    path, out = file_config(tmp_path, fmt="%(name)s:%(message)s", root_file=root_file)
    with setup_logging(path):
        logging.getLogger("myason.a").info("mine")
        logging.getLogger("somelib").warning("theirs")
        logging.getLogger("somelib").info("too quiet")
    assert out.read_text().splitlines() == ["myason.a:mine"]
    assert root_file.read_text().splitlines() == ["somelib:theirs"]


def test_handler_level_respected_and_level_override(tmp_path):
    path, out = file_config(tmp_path, fmt="%(levelname)s %(message)s", handler_level="WARNING")
    with setup_logging(path, level="debug"):
        assert logging.getLogger("myason").level == logging.DEBUG
        logging.getLogger("myason.a").info("no")
        logging.getLogger("myason.a").error("yes")
    assert out.read_text().splitlines() == ["ERROR yes"]


def test_unconfigured_root_handlers_are_left_alone(tmp_path):
    path, _ = file_config(tmp_path)
    before = list(logging.getLogger().handlers)
    with setup_logging(path):
        assert logging.getLogger().handlers == before


def test_stop_is_idempotent_and_restores_direct_handlers(tmp_path):
    path, out = file_config(tmp_path, fmt="%(message)s")
    handle = setup_logging(path)
    handle.stop()
    handle.stop()
    assert not handle.running
    logging.getLogger("myason.a").info("after stop")
    assert out.read_text().splitlines() == ["after stop"]


def test_second_setup_stops_the_first(tmp_path):
    path, _ = file_config(tmp_path)
    first = setup_logging(path)
    second = setup_logging(path)
    assert not first.running and second.running
    second.stop()


def test_exceptions_are_formatted_in_text_output(tmp_path):
    path, out = file_config(tmp_path, fmt="%(message)s")
    with setup_logging(path):
        try:
            raise ValueError("bad thing")
        except ValueError:
            logging.getLogger("myason.a").exception("failed")
    text = out.read_text()
    assert text.startswith("failed\nTraceback") and "ValueError: bad thing" in text


def test_json_format_lines_parse(tmp_path):
    path, out = file_config(tmp_path)
    with setup_logging(path, json_format=True):
        log = logging.getLogger("myason.j")
        log.info("hello %s", "world", extra={"iface": "eth0", "count": 3, "obj": object()})
        try:
            1 / 0  # noqa: B018 - raises, for the traceback
        except ZeroDivisionError:
            log.error("oops", exc_info=True)
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["message"] == "hello world" and first["level"] == "INFO"
    assert first["logger"] == "myason.j" and first["thread"] == "MainThread"
    assert first["iface"] == "eth0" and first["count"] == 3 and first["obj"].startswith("<object")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert not any(k.startswith("_") for k in first)
    assert "ZeroDivisionError" in second["exc"] and second["message"] == "oops"


def test_json_formatter_direct():
    rec = logging.LogRecord("myason.x", logging.WARNING, __file__, 1, "a %d", (5,), None)
    rec.created, rec.msecs = 0.0, 0.0
    doc = json.loads(JsonFormatter().format(rec))
    assert doc == {"time": "1970-01-01T00:00:00.000Z", "level": "WARNING", "logger": "myason.x",
                   "thread": rec.threadName, "message": "a 5"}


def test_default_config_matches_conf_file():
    assert yaml.safe_load((REPO / "conf" / "logging.yaml").read_text()) == logs.default_config()


@pytest.mark.parametrize("source", [None, "conf"])
def test_console_setup_writes_to_stderr(capsys, source):
    path = str(REPO / "conf" / "logging.yaml") if source else None
    with setup_logging(path):
        logging.getLogger("myason.c").info("to stderr")
    err = capsys.readouterr().err
    assert re.search(r"^\S+ \S+ INFO    \[MainThread\] myason\.c: to stderr$", err, re.M)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: [1\n")
    with pytest.raises(ConfigError) as info:
        setup_logging(str(path))
    assert info.value.key == str(path)


@pytest.mark.parametrize("cfg", [
    {"handlers": {}},
    {"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}},
    {"version": 1, "loggers": {"myason": {"handlers": ["missing"]}}},
])
def test_bad_dictconfig_names_the_file(tmp_path, cfg):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as info:
        setup_logging(str(path))
    assert info.value.key == str(path) and "invalid logging configuration" in str(info.value)


def test_bad_level():
    with pytest.raises(ConfigError) as info:
        setup_logging(level="LOUD")
    assert info.value.key == "level"
    assert logs.parse_level("warning") == logging.WARNING and logs.parse_level(5) == 5


def test_rate_limiter_with_injected_clock():
    now = [100.0]
    limiter = RateLimiter(interval=10.0, clock=lambda: now[0])
    assert limiter.allow("a") is True
    assert limiter.suppressed("a") == 0
    for t in (101.0, 105.0, 109.9):
        now[0] = t
        assert limiter.allow("a") is False
    assert limiter.pending("a") == 3
    assert limiter.allow("b") is True  # keys are independent
    now[0] = 110.0
    assert limiter.allow("a") is True
    assert limiter.suppressed("a") == 3 and limiter.pending("a") == 0
    now[0] = 125.0
    assert limiter.allow("a") is True
    assert limiter.suppressed("a") == 0
    assert limiter.suppressed("never") == 0


def test_rate_limiter_burst_allows_that_many_per_interval():
    now = [0.0]
    limiter = RateLimiter(interval=10.0, clock=lambda: now[0], burst=3)
    assert [limiter.allow("k") for _ in range(5)] == [True, True, True, False, False]
    now[0] = 10.0
    assert limiter.allow("k") is True and limiter.suppressed("k") == 2


def test_rate_limiter_max_keys_forgets_the_least_recently_allowed():
    now = [0.0]
    limiter = RateLimiter(interval=10.0, clock=lambda: now[0], max_keys=2)
    assert limiter.allow("a") and limiter.allow("b")
    now[0] = 10.0
    assert limiter.allow("a")              # "a" allowed again: "b" is now the oldest
    assert limiter.allow("c")              # full: "b" is forgotten
    assert len(limiter._state) == 2
    assert limiter.allow("b") is True      # unknown again, so allowed
    assert limiter.allow("c") is False     # still remembered


def test_rate_limiter_is_thread_safe():
    limiter = RateLimiter(interval=1e9)
    results = []

    def worker():
        results.extend(limiter.allow("k") for _ in range(500))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and limiter.pending("k") == 1999


def test_a_failing_handler_does_not_kill_the_messenger(tmp_path, monkeypatch):
    path, out = file_config(tmp_path, fmt="%(message)s")
    handle = setup_logging(path)
    target = next(h for h in handle.handlers if h.name == "out")
    real_filter = target.filter
    monkeypatch.setattr(target, "filter", lambda rec: 1 / 0 if rec.msg == "boom" else real_filter(rec))
    monkeypatch.setattr(logging, "raiseExceptions", False)  # handleError stays quiet
    log = logging.getLogger("myason.f")
    log.info("boom")
    log.info("still here")
    handle.stop()
    assert out.read_text().splitlines() == ["still here"]
