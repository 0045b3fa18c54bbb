"""Real PostgreSQL, InfluxDB 1.x and VictoriaMetrics servers for tests, via scripts/services.sh."""
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Type, Union

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "services.sh"
DB = "myason"
# services.sh exit status meaning "cannot install packages / not root": a skip, not a failure.
EXIT_CANNOT_INSTALL = 3
# The first start on a fresh machine runs apt-get; later starts take a second or two.
START_TIMEOUT = 900.0
STOP_TIMEOUT = 120.0

_ENV_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


class ServicesUnavailable(Exception):
    """The servers cannot be had here (not root, or apt-get could not install them)."""


@dataclass(frozen=True)
class Servers:
    """Where the servers of one `services.sh start` listen; None for a server not started."""

    dir: Path
    pg_dsn: Optional[str] = None
    pg_port: Optional[int] = None
    pg_data: Optional[Path] = None
    influx_url: Optional[str] = None
    vm_url: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def parse_env(text: str) -> Dict[str, str]:
    """KEY=VALUE lines of services.sh output as a dict; any other line is ignored."""
    env = {}
    for line in text.splitlines():
        m = _ENV_LINE.match(line.strip())
        if m:
            env[m.group(1)] = m.group(2)
    return env


def servers_from_env(env: Dict[str, str]) -> Servers:
    """Build a Servers from parsed MYASON_* variables (ValueError without MYASON_SERVICES_DIR)."""
    if "MYASON_SERVICES_DIR" not in env:
        raise ValueError("no MYASON_SERVICES_DIR in services.sh output")
    port = env.get("MYASON_PG_PORT")
    data = env.get("MYASON_PG_DATA")
    return Servers(
        dir=Path(env["MYASON_SERVICES_DIR"]),
        pg_dsn=env.get("MYASON_PG_DSN"),
        pg_port=int(port) if port and port.isdigit() else None,
        pg_data=Path(data) if data else None,
        influx_url=env.get("MYASON_INFLUX_URL"),
        vm_url=env.get("MYASON_VM_URL"),
        env=dict(env),
    )


def _run(args: List[str], timeout: float, extra_env=None) -> Tuple[int, str, str]:
    env = dict(os.environ, **(extra_env or {}))
    proc = subprocess.Popen(["bash", str(SCRIPT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        # SIGTERM lets the script's trap stop whatever it had already started; SIGKILL would not.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    return proc.returncode, out, err


def start_services(which: Iterable[str] = (), timeout: float = START_TIMEOUT,
                   watch_pid: Optional[int] = None) -> Servers:
    """Run `services.sh start [which...]` and return where the servers listen.

    Raises ServicesUnavailable when not root or packages cannot be installed, RuntimeError
    (with the script's output) when a server fails. With watch_pid the servers are stopped by a
    watchdog once that process is gone, even if nobody calls stop_services.
    """
    if os.geteuid() != 0:
        raise ServicesUnavailable("the database servers need root (apt-get, runuser postgres)")
    extra = {"MYASON_SERVICES_WATCH_PID": str(watch_pid)} if watch_pid else None
    rc, out, err = _run(["start", *which], timeout, extra)
    if rc == EXIT_CANNOT_INSTALL:
        raise ServicesUnavailable("scripts/services.sh cannot install the servers:\n" + (err + out)[-3000:])
    if rc != 0:
        raise RuntimeError("scripts/services.sh start failed (exit %d):\n%s%s" % (rc, out, err[-5000:]))
    return servers_from_env(parse_env(out))


def stop_services(servers: Servers, timeout: float = STOP_TIMEOUT) -> None:
    """Stop what start_services started and remove its directory (RuntimeError on failure)."""
    rc, out, err = _run(["stop", str(servers.dir)], timeout)
    if rc != 0:
        raise RuntimeError("scripts/services.sh stop failed (exit %d):\n%s%s" % (rc, out, err))


def pg_stop(servers: Servers, timeout: float = STOP_TIMEOUT) -> None:
    """Take PostgreSQL away (fast shutdown: open connections break, new ones are refused)."""
    rc, out, err = _run(["pg-stop", str(servers.dir)], timeout)
    if rc != 0:
        raise RuntimeError("scripts/services.sh pg-stop failed (exit %d):\n%s%s" % (rc, out, err))


def pg_start(servers: Servers, timeout: float = STOP_TIMEOUT) -> None:
    """Bring PostgreSQL back on the same port and data dir; returns once it accepts connections."""
    rc, out, err = _run(["pg-start", str(servers.dir)], timeout)
    if rc != 0:
        raise RuntimeError("scripts/services.sh pg-start failed (exit %d):\n%s%s" % (rc, out, err))


def _http(method: str, url: str, body: Optional[bytes] = None, timeout: float = 10.0) -> bytes:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:2000]
        raise RuntimeError("%s %s: HTTP %d: %s" % (method, url, e.code, detail)) from e


def influx_query(url: str, q: str, db: str = DB, epoch: Optional[str] = "ns",
                 timeout: float = 10.0) -> dict:
    """Run an InfluxQL query with GET /query?db=...&q=... and return the parsed JSON answer.

    Times come back as integers in `epoch` units (None: RFC 3339 strings, InfluxDB's default).
    """
    params = {"db": db, "q": q}
    if epoch:
        params["epoch"] = epoch
    qs = urllib.parse.urlencode(params)
    return json.loads(_http("GET", "%s/query?%s" % (url, qs), timeout=timeout))


def influx_write(url: str, lines: Union[str, Iterable[str]], db: str = DB,
                 precision: str = "ns", timeout: float = 10.0) -> None:
    """POST line protocol to InfluxDB's /write (RuntimeError when it is refused)."""
    body = lines if isinstance(lines, str) else "\n".join(lines)
    qs = urllib.parse.urlencode({"db": db, "precision": precision})
    _http("POST", "%s/write?%s" % (url, qs), body.encode(), timeout=timeout)


def influx_rows(answer: dict) -> List[dict]:
    """Flatten an InfluxDB /query answer into one dict per row (with 'measurement' and tags)."""
    rows = []
    for result in answer.get("results", []) if isinstance(answer, dict) else []:
        for series in result.get("series", []) or []:
            cols = series.get("columns", [])
            for values in series.get("values", []) or []:
                row = {"measurement": series.get("name")}
                row.update(series.get("tags") or {})
                row.update(zip(cols, values))
                rows.append(row)
    return rows


def vm_flush(url: str, timeout: float = 10.0) -> None:
    """Ask VictoriaMetrics to flush ingested rows; new series may still take ~1 s to show up."""
    _http("GET", url + "/internal/force_flush", timeout=timeout)


def vm_export(url: str, match: Union[str, Iterable[str]], flush: bool = True,
              timeout: float = 10.0) -> List[dict]:
    """Series matching the selector(s) from /api/v1/export: dicts with metric, values, timestamps (ms)."""
    if flush:
        vm_flush(url, timeout)
    matches = [match] if isinstance(match, str) else list(match)
    qs = urllib.parse.urlencode([("match[]", m) for m in matches])
    body = _http("GET", "%s/api/v1/export?%s" % (url, qs), timeout=timeout)
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
               ignore: Tuple[Type[BaseException], ...] = ()):
    """Call predicate until it returns something truthy and return that; TimeoutError at the deadline.

    Exceptions of the types in `ignore` count as "not yet" (the last one is chained).
    """
    deadline = time.monotonic() + timeout
    last, last_exc = None, None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except ignore as e:
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError("condition not met within %.1f s (last result %r)" % (timeout, last)) from last_exc
        time.sleep(interval)
