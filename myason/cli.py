"""Command line: parse arguments, load and validate config, hand over to the app; owns exit codes.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage, 141 (128 + SIGPIPE,
as a shell reports other tools killed by a closed pipe) when stdout was closed before everything
was written, e.g. by `| head`: the command stops there, quietly.
"""
import argparse
import logging
import math
import os
import platform
import select
import sys
import time

from myason import __version__
from myason.errors import CaptureError, ConfigError, KeyFileError
from myason.redact import redact_text

log = logging.getLogger("myason")

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_PIPE = 0, 1, 2, 141


def _versions():
    parts = ["myason %s" % __version__]
    for mod in ("scapy", "cryptography"):
        try:
            m = __import__(mod)
            parts.append("%s %s" % (mod, getattr(m, "__version__", getattr(m, "VERSION", "?"))))
        except ImportError:
            parts.append("%s missing" % mod)
    parts.append("Python %s" % platform.python_version())
    return ", ".join(parts)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_versions())
        parser.exit()


def build_parser():
    """The argparse tree of every subcommand."""
    p = argparse.ArgumentParser(prog="myason", description="Network flow monitoring.")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    a = sub.add_parser("agent", help="meter flows on interfaces or from capture files and export them")
    a.add_argument("-ac", "--agent-conf", metavar="FILE", help="agent YAML config (default: built-in defaults)")
    a.add_argument("-lc", "--logger-conf", metavar="FILE", help="logging YAML (dictConfig)")
    a.add_argument("--read", nargs="+", metavar="PCAP", help="replay capture files instead of capturing live")
    a.add_argument("--output", metavar="FILE", help="also write every exported flow to FILE (.csv, .jsonl, - = stdout)")
    a.add_argument("--no-export", action="store_true", help="do not send to collectors")
    a.add_argument("--check-config", action="store_true", help="validate and print the effective config")
    a.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    a.add_argument("--no-progress", action="store_true", help="no progress bar during replay")
    a.add_argument("-q", "--quiet", action="store_true", help="no summary at the end")
    a.add_argument("--engine", choices=("fast", "python"),
                   help="fast (numba: replay chunks, live TPACKET_V3 rings with `workers` per "
                        "interface) or python (the reference path, one frame at a time); default: "
                        "the config's engine (fast)")
    a.add_argument("--time-shift", metavar="now|SECONDS",
                   help="replay: add SECONDS (may be negative) to every record's first and last, or with "
                        "'now' put the capture's newest packet at the moment the replay starts (recent "
                        "periods of the web page then show it); aging is unchanged. Default: the "
                        "capture's own times")

    c = sub.add_parser("collector", help="receive, validate and store flows from agents")
    c.add_argument("-cc", "--collector-conf", metavar="FILE", help="collector YAML config")
    c.add_argument("-lc", "--logger-conf", metavar="FILE", help="logging YAML (dictConfig)")
    c.add_argument("--check-config", action="store_true", help="validate and print the effective config")
    c.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    c.add_argument("-q", "--quiet", action="store_true", help="no summary at the end")
    c.add_argument("--summary-json", metavar="FILE", help="also write the summary counters to FILE as JSON at exit")
    c.add_argument("--status", action="store_true",
                   help="ask the collector running with this config (its `metrics` endpoint) how it is: exit 0 "
                        "when every stage runs and everything received is stored, 1 while data is still on "
                        "its way, 3 when it is unreachable or a stage stopped")

    e = sub.add_parser("events", help="list the IDEA events stored by the collector")
    e.add_argument("-cc", "--collector-conf", metavar="FILE", help="collector YAML config (its first SQL writer)")
    e.add_argument("--since", default="1h", metavar="DURATION", help="how far back, e.g. 30m, 1h, 7d (default 1h)")
    e.add_argument("--category", metavar="C", help="only events of this IDEA category, e.g. Recon.Scanning")
    e.add_argument("--source", metavar="ADDR", help="only events with this source address")
    e.add_argument("--json", action="store_true", help="print the full IDEA events, one JSON object a line")

    g = sub.add_parser("greylist", help="export the sources of stored events (for firewalls)")
    g.add_argument("-cc", "--collector-conf", metavar="FILE", help="collector YAML config (its first SQL writer)")
    g.add_argument("--since", metavar="DURATION", help="how far back (default 7d; with --push the config's since)")
    g.add_argument("--format", choices=("csv", "json"), help="output format (default csv)")
    g.add_argument("--push", metavar="FILE", help="push to a firewall instead, as the greylist_push section of FILE "
                   "says: an nftables script or ipset file, applied by its command when it changed "
                   "(docs/greylist.md)")
    g.add_argument("--once", action="store_true", help="with --push: one round, whatever the config's interval")
    g.add_argument("-lc", "--logger-conf", metavar="FILE", help="with --push: logging YAML (dictConfig)")
    g.add_argument("--log-json", action="store_true", help="with --push: log one JSON object per line")

    q = sub.add_parser("api", help="serve the query API and the web page over HTTP")
    q.add_argument("-ac", "--api-conf", metavar="FILE", help="API YAML config (default: built-in defaults)")
    q.add_argument("-cc", "--collector-conf", metavar="FILE", help="collector YAML config (its first SQL writer)")
    q.add_argument("-lc", "--logger-conf", metavar="FILE", help="logging YAML (dictConfig)")
    q.add_argument("--bind", metavar="HOST:PORT", help="listen address (default 127.0.0.1:8080; port 0 = any)")
    q.add_argument("--no-auth", action="store_true", help="no bearer token (refused unless bound to loopback)")
    q.add_argument("--check-config", action="store_true", help="validate and print the effective config")
    q.add_argument("--log-json", action="store_true", help="log one JSON object per line")

    m = sub.add_parser("maintain", help="roll up stored flows and apply retention once (every SQL writer)")
    m.add_argument("-cc", "--collector-conf", metavar="FILE", help="collector YAML config")
    m.add_argument("--now", metavar="ISO", help="act as if it were this UTC time, e.g. 2026-01-02T03:04:05Z")

    i = sub.add_parser("ifconfig", help="list network interfaces")
    i.set_defaults(command="ifconfig")

    k = sub.add_parser("keygen", help="create a new Fernet key")
    k.add_argument("--out", metavar="FILE", help="write the key to FILE (mode 0600, never overwrites); "
                   "missing parent directories are created with mode 0700")
    k.add_argument("--agent", metavar="ID", help="also print the collector keystore line for agent ID")
    return p


def main(argv=None):
    """Entry point of the `myason` console script."""
    args = build_parser().parse_args(argv)
    code = _run(args)
    try:
        # Flushed here rather than at interpreter exit, where a closed pipe could only be
        # reported as an "Exception ignored" traceback.
        sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_closed_code(EXIT_FAIL)
    except (OSError, ValueError):
        pass
    return code


def _stdout_gone():
    """True when stdout is a pipe or socket whose reader has gone."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def _discard_stdout():
    # Whatever is still buffered for stdout, and the interpreter's final flush, go nowhere
    # instead of raising again (the recipe of Python's signal module documentation).
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def _stdout_closed_code(otherwise):
    if not _stdout_gone():
        print("myason: error: broken pipe", file=sys.stderr)
        return otherwise
    _discard_stdout()
    return EXIT_PIPE


def _run(args):
    try:
        if args.command == "agent":
            return _agent(args)
        if args.command == "collector":
            return _collector(args)
        if args.command in ("events", "greylist"):
            return _events(args)
        if args.command == "api":
            return _api(args)
        if args.command == "maintain":
            return _maintain(args)
        if args.command == "ifconfig":
            from myason.agent.ifconfig import format_table, list_interfaces
            print(format_table(list_interfaces()))
            return EXIT_OK
        if args.command == "keygen":
            return _keygen(args)
    except ConfigError as exc:
        print("myason: config error: %s" % redact_text(str(exc)), file=sys.stderr)
        return EXIT_CONFIG
    except KeyFileError as exc:
        print("myason: key error: %s" % redact_text(str(exc)), file=sys.stderr)
        return EXIT_CONFIG
    except CaptureError as exc:
        print("myason: capture error: %s" % exc, file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:
        return _stdout_closed_code(EXIT_FAIL)
    except OSError as exc:
        # Start-up failures outside the config checks (an --output file that cannot be
        # created, a collector name that does not resolve): a message, not a traceback.
        print("myason: error: %s" % redact_text(str(exc)), file=sys.stderr)
        return EXIT_FAIL
    return EXIT_CONFIG


def _keygen(args):
    from myason import keys
    if args.agent is not None:
        from myason.wire import check_agent_id
        try:
            check_agent_id(args.agent)
        except ValueError as exc:
            raise ConfigError("--agent", str(exc)) from None
    key = keys.generate_key()
    if args.out:
        for directory in keys.write_key_file(args.out, key, make_dirs=True):
            print("created %s (mode 0700)" % directory, file=sys.stderr)
        print("wrote a new key to %s (mode 0600)" % args.out, file=sys.stderr)
    else:
        print(key.decode())
    if args.agent is not None:
        from myason.collector.keystore import format_line
        print("add this line to the collector's keystore:", file=sys.stderr)
        print(format_line(args.agent, [key]))
    return EXIT_OK


def _agent(args):
    # Before numpy is first imported: its OpenBLAS would start worker threads at import, and a
    # live agent drops CAP_NET_ADMIN after setup in its own threads only (capset() is per
    # thread), so threads started earlier would keep it. The agent does no linear algebra.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from myason.agent.capture import check_interfaces
    from myason.agent.config import load_agent_config
    from myason.logs import setup_logging
    cfg = load_agent_config(args.agent_conf)
    live = not args.read
    export = not args.no_export
    if args.output and args.output != "-" and not args.output.endswith((".csv", ".jsonl", ".json")):
        raise ConfigError("--output", "use a .csv or .jsonl file name, or - for stdout")
    time_shift = _time_shift(args)
    check_interfaces(cfg, live)
    if args.check_config:
        return _check_agent_config(args, cfg)
    if export:
        _check_export(cfg)
    if live and not cfg.interfaces:
        raise ConfigError("interfaces", "at least one interface is required for live capture (or use --read)")
    handle = setup_logging(args.logger_conf, json_format=args.log_json)
    try:
        from myason.agent.app import AgentApp
        app = AgentApp(cfg, read=args.read, output=args.output, export=export,
                       progress=False if args.no_progress else None, engine=args.engine or cfg.engine,
                       config_path=args.agent_conf, time_shift=time_shift)
        app.install_signals()
        code = app.run()
    finally:
        handle.stop()
    if app.output_closed:
        _discard_stdout()
        code = code or EXIT_PIPE
    # A run that failed before metering anything (no capture socket, a thread that died at
    # once) has only zeros to show: its error, already logged, says it all.
    if not args.quiet and (code != EXIT_FAIL or app.summary.get("frames")):
        print(format_summary(app.summary), file=sys.stderr)
    return code


def _time_shift(args):
    """None, "now" or a finite number of seconds, from --time-shift."""
    text = args.time_shift
    if text is None:
        return None
    if not args.read:
        raise ConfigError("--time-shift", "shifts a replay: use it with --read (live capture has the real time)")
    if text.strip().lower() == "now":
        return "now"
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise ConfigError("--time-shift", "must be 'now' or a number of seconds (may be negative), got %r" % text)
    return seconds


def _check_export(cfg):
    if not cfg.key_file:
        raise ConfigError("key_file", "required to export (or run with --no-export)")
    if not cfg.collectors:
        raise ConfigError("collectors", "at least one host:port is required to export (or run with --no-export)")
    from myason import keys
    keys.load_key_file(cfg.key_file)


def _config_text(cfg):
    """--check-config's YAML of a config, with passwords and tokens masked (myason.redact)."""
    import yaml
    from myason.redact import redact_config
    return yaml.safe_dump(redact_config(cfg.to_dict()), sort_keys=False)


def _check_agent_config(args, cfg):
    """--check-config: the effective config on stdout, and on stderr what it was checked for.

    One file serves replay and live capture, with or without export, as the command line
    chooses: what the file is not set up for is reported, not refused. A half-made export setup
    (collectors without a key file, a key file that cannot be used) is still an error.
    """
    from myason.options import format_endpoint
    exporting = False
    if not args.no_export and (cfg.key_file or cfg.collectors):
        _check_export(cfg)
        exporting = True
    needs = []
    if args.read:
        mode = "replay of %s" % ", ".join(args.read)
    elif cfg.interfaces:
        mode = "live capture on %s" % ", ".join(i.name for i in cfg.interfaces)
    else:
        mode = "replay (--read FILE)"
    if not cfg.interfaces:
        needs.append("live capture needs interfaces")
    if args.no_export:
        mode += " without export"
    elif exporting:
        mode += ", exporting to %s as agent %s (each collector's keystore needs a line for %s)" % (
            ", ".join(format_endpoint(h, p) for h, p in cfg.collectors), cfg.agent_id, cfg.agent_id)
    else:
        mode += " without export (run it with --no-export)"
        needs.append("export needs key_file and collectors")
    engine = args.engine or cfg.engine
    if engine == "fast":
        engine += " engine, %s" % ("chunks" if args.read else "%d ring worker%s per interface" % (
            cfg.workers, "" if cfg.workers == 1 else "s"))
    else:
        engine += " engine"
    print(_config_text(cfg), end="")
    print("myason: config checked for %s" % "; ".join([mode, engine] + needs), file=sys.stderr)
    return EXIT_OK


def _collector(args):
    if args.status:
        return _collector_status(args)
    from myason.enrich import report_setup_notes
    from myason.logs import setup_logging
    # Logging first: validating the config builds the enrichment steps, which log (e.g. "geoip
    # enrichment off"), and those lines must come out in the chosen format too. Only the
    # collector enriches, so only it reports them (once: see myason.enrich.base).
    handle = setup_logging(args.logger_conf, json_format=args.log_json)
    report_setup_notes()
    try:
        cfg = _collector_config(args)
        if args.check_config:
            print(_config_text(cfg), end="")
            return EXIT_OK
        from myason.collector.app import CollectorApp
        app = CollectorApp(cfg, config_path=args.collector_conf)
        app.install_signals()
        code = app.run()
    finally:
        handle.stop()
    if not args.quiet:
        print(format_summary(app.summary, "collector"), file=sys.stderr)
    if args.summary_json:
        write_summary_json(args.summary_json, app.summary)
    return code


def _collector_status(args):
    from myason.collector import status
    from myason.collector.config import load_collector_config
    url = status.status_url(load_collector_config(args.collector_conf))
    answer = status.fetch(url)
    print("\n".join(status.report(url, answer)))
    return status.exit_code(answer)


def _maintain(args):
    from myason.collector.config import load_collector_config
    from myason.store.base import WriterError, writer_class
    from myason.store.events import parse_time
    from myason.store.query import SQL_WRITERS
    from myason.store.rollup import format_summary
    cfg = load_collector_config(args.collector_conf)
    now = None
    if args.now:
        try:
            now = parse_time(args.now)
        except ValueError:
            raise ConfigError("--now", "not an ISO time: %r" % (args.now,)) from None
    specs = [(i, dict(w)) for i, w in enumerate(cfg.writers) if w.get("type") in SQL_WRITERS]
    if not specs:
        raise ConfigError("writers", "no sqlite or postgresql writer configured: nothing to maintain")
    code = EXIT_OK
    for i, spec in specs:
        kind = spec.pop("type")
        spec.pop("name", None)
        writer = writer_class(kind)(**spec)
        # The work is done once by maintain() below, which reports it, rather than at open.
        writer.maintain_interval, raw_days, writer.retention_days = 0, writer.retention_days, 0
        if now is not None:
            writer.clock = lambda: now
        try:
            writer.open()
            writer.retention_days = raw_days
            done = writer.maintain(now)
        except _database_errors() + (WriterError, OSError) as exc:
            print("myason: writers[%d] %s: %s" % (i, kind, redact_text(" ".join(str(exc).split()))[:300]),
                  file=sys.stderr)
            code = EXIT_FAIL
        else:
            # Outside the writer's error handling: a closed stdout is not a database failure.
            print("writers[%d] %s: %s" % (i, kind, format_summary(done)))
        finally:
            writer.close()
    return code


def _database_errors():
    import sqlite3
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def _collector_config(args):
    from myason.collector.config import load_collector_config
    cfg = load_collector_config(args.collector_conf)
    if not cfg.keystore:
        raise ConfigError("keystore", "required: the file of agent ids and their keys")
    from myason.collector.keystore import Keystore
    Keystore.load(cfg.keystore)
    from myason.store.base import writer_class
    for i, w in enumerate(cfg.writers):
        try:
            writer_class(w["type"])
        except KeyError as exc:
            raise ConfigError("writers[%d].type" % i, str(exc)) from None
    return cfg


def _events(args):
    import time

    from myason.collector.config import load_collector_config
    from myason.store import query
    cfg = load_collector_config(args.collector_conf)
    writer = query.first_sql_writer(cfg.writers)
    if args.command == "greylist" and args.push:
        return _greylist_push(args, writer)
    since = time.time() - query.parse_duration("--since", args.since or "7d")
    if args.command == "greylist":
        if args.once:
            raise ConfigError("--once", "goes with --push")
        events = query.fetch_events(writer, since)
        sys.stdout.write(query.format_greylist(query.greylist(events), args.format or "csv"))
        return EXIT_OK
    events = query.fetch_events(writer, since, args.category, args.source)
    if args.json:
        import orjson
        for ev in events:
            sys.stdout.write(orjson.dumps(ev).decode() + "\n")
    else:
        for ev in events:
            print(query.format_event_line(ev))
        print("%d events" % len(events), file=sys.stderr)
    return EXIT_OK


def _greylist_push(args, writer):
    from myason.greylist.config import load_push_config
    from myason.greylist.push import GreylistPusher
    from myason.logs import setup_logging
    if args.format:
        raise ConfigError("--format", "not with --push: the config's format (nftables or ipset) applies")
    cfg = load_push_config(args.push, since=args.since)
    handle = setup_logging(args.logger_conf, json_format=args.log_json)
    try:
        pusher = GreylistPusher(cfg, writer)
        if pusher.loops(args.once):
            pusher.install_signals()
        return pusher.run(once=args.once)
    finally:
        handle.stop()


def _api(args):
    from myason.api.config import is_loopback, load_api_config, resolve_database, resolve_token
    overrides = {"bind": args.bind, "collector_conf": args.collector_conf, "auth": False if args.no_auth else None}
    cfg = load_api_config(args.api_conf, overrides)
    if not cfg.auth and not is_loopback(cfg.bind[0]):
        raise ConfigError("auth", "turning auth off is only allowed on a loopback bind address, not %s" % cfg.bind[0])
    database = resolve_database(cfg)
    token = resolve_token(cfg)
    if args.check_config:
        print(_config_text(cfg), end="")
        return EXIT_OK
    from myason.logs import setup_logging
    handle = setup_logging(args.logger_conf, json_format=args.log_json)
    try:
        from myason.api.server import serve
        return serve(cfg, database, token, announce=lambda line: print(line, flush=True))
    finally:
        handle.stop()


def write_summary_json(path, summary):
    """Write summary counters to path as JSON, atomically (tests and scripts read it at exit)."""
    import json
    tmp = "%s.tmp" % path
    with open(tmp, "w") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)


def format_summary(summary, what="agent"):
    """A short human-readable summary of a run (the collector's as tables)."""
    if what == "collector":
        return format_collector_summary(summary)
    lines = ["myason %s summary:" % what]
    for k, v in summary.items():
        if isinstance(v, dict):
            v = ", ".join("%s=%s" % kv for kv in sorted(v.items())) or "-"
        lines.append("  %-24s %s" % (k, v))
    return "\n".join(lines)


# Collector counters of what was lost before storage, in this order when present.
_DROP_KEYS = ("kernel_drops", "queue_dropped", "oversized", "spool_dropped", "intake_blocked_seconds",
              "listener_waited_seconds", "spool_commit_errors")
_AGENT_COLUMNS = ("datagrams", "flows", "gaps", "replays", "restarts")


def _utc(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


def _cell(value):
    if isinstance(value, float):
        return "%.3f" % value
    return "-" if value is None else str(value)


def _table(first, rows, columns, cell=lambda _col, v: _cell(v)):
    """Lines of a table: one row per name (sorted), numbers right-aligned under their headers."""
    grid = [[first] + [c.replace("_", " ") for c in columns]]
    grid += [[str(name)] + [cell(c, vals.get(c)) for c in columns] for name, vals in sorted(rows.items())]
    widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
    return ["  " + "  ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]).rstrip()
            for r in grid]


def _columns(rows, first=(), last=()):
    seen = list(first)
    for vals in rows.values():
        seen += [k for k in vals if k not in seen and k not in last]
    return seen + list(last)


def format_collector_summary(summary):
    """The collector's counters at exit: totals, a row per agent (last seen in ISO 8601 UTC),
    rejects by reason, drops, a row per writer and spool, then any other counter."""
    s = dict(summary)
    lines = ["myason collector summary:"]

    def line(label, text):
        lines.append("  %-9s %s" % (label, text))

    line("received", "%s datagrams, %s bytes" % (s.pop("datagrams", 0), s.pop("bytes", 0)))
    line("spooled", "%s flows, %s events" % (s.pop("flows_spooled", 0), s.pop("events_spooled", 0)))
    agents = s.pop("agents", None) or {}
    if agents:
        lines.append("")
        # last_seq is bookkeeping for the sequence state, not a figure to read.
        shown = {a: {k: v for k, v in st.items() if k != "last_seq"} for a, st in agents.items()}
        lines += _table("agent", shown, _columns(shown, _AGENT_COLUMNS, ("last_seen",)),
                        lambda col, v: _utc(v) if col == "last_seen" else _cell(v))
        lines.append("")
    else:
        line("agents", "none")
    rejects = s.pop("rejects", None) or {}
    line("rejects", ", ".join("%s %s" % kv for kv in sorted(rejects.items(), key=lambda kv: (-kv[1], kv[0])))
         or "none")
    drops = [(k, s.pop(k)) for k in _DROP_KEYS if k in s]
    if drops:
        line("drops", ", ".join("%s %s" % kv for kv in drops))
    maintenance = s.get("maintenance") or {}
    for rows in maintenance.values():
        rows["last_run"] = _utc(rows.get("last_run"))
    for key, first in (("writers", "writer"), ("spool", "spool"), ("capacity", "spool"), ("maintenance", "maintenance")):
        rows = s.pop(key, None) or {}
        if rows:
            lines.append("")
            lines += _table(first, rows, _columns(rows))
    others = [(k, v) for k, v in s.items() if not isinstance(v, dict)]
    if others:
        lines.append("")
        line("other", ", ".join("%s %s" % (k, _cell(v)) for k, v in others))
    for k, v in s.items():
        if isinstance(v, dict):
            line(k, ", ".join("%s=%s" % (kk, _cell(vv)) for kk, vv in sorted(v.items())) or "-")
    return "\n".join(lines)
