"""docs/reference.md in step with the code: reject reasons, validation limits, SQLite schema, metric names.

Each test reads the document, reads the same facts from the code (the source itself, the
constants, a database migrated by the project's own writer, a real API app's /metrics), and
compares. A change on one side only fails here. tests/integration/test_docs_reference_live.py
does the same for a running collector's metrics, a replaying agent's and the PostgreSQL schema.
"""
import ast
import dataclasses
import re
import sqlite3
from pathlib import Path

import pytest

from myason import wire
from myason.collector import validate
from myason.collector.config import CollectorConfig
from myason.schema import END_REASONS, FIELDS, FLOAT_FIELDS, INT_FIELDS
from tests.support.docs import doc, exposed_families, metric_rows, parse_schema, section, tables, ticked


# -- the document's facts ---------------------------------------------------------------------------

def documented_reject_reasons():
    """Every reason in the first column of the tables headed `reason` in section 3."""
    text = section(doc(), "## 3. Reject reasons")
    return {ticked(r[0]) for header, rows in tables(text) if header[0] == "reason" for r in rows}


def number(text):
    """The first number of a cell (digits, optional decimals)."""
    m = re.search(r"(\d+(?:\.\d+)?)", text)
    assert m, "no number in %r" % text
    return float(m.group(1))


# -- reject reasons --------------------------------------------------------------------------------

def _calls(path, func):
    """First arguments of every call of `func` (a name or an attribute name) in a module's source."""
    tree = ast.parse(Path(path).read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name == func:
                out.append(node.args[0])
    return out


def _constants(args):
    return {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}


def code_reject_reasons():
    """Every reason the collector can count, read from the code that counts them."""
    import myason.collector.listener as listener
    import myason.collector.datagram as datagram
    reasons = set(wire.REASONS) | _constants(_calls(wire.__file__, "WireError"))
    # datagram.py: explicit _reject("...") reasons, and the replay counter it keeps itself.
    reasons |= _constants(_calls(datagram.__file__, "_reject"))
    tree = ast.parse(Path(datagram.__file__).read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "rejects" and isinstance(node.slice, ast.Constant)):
            reasons.add(node.slice.value)
    # validate.py: "invalid_" + every explicit reason, and + every field name for the per-field checks
    # (ValidationError(name, ...) inside the loop over FIELDS).
    args = _calls(validate.__file__, "ValidationError")
    reasons |= {"invalid_" + r for r in _constants(args)}
    assert any(isinstance(a, ast.Name) for a in args), "validate.py no longer names a field per check"
    reasons |= {"invalid_" + f for f in FIELDS}
    # The listener's oversized count (a counter of its own, and also a wire reason).
    assert "self.oversized += 1" in Path(listener.__file__).read_text()
    reasons.add("oversized")
    return reasons


def test_every_reject_reason_the_code_counts_is_documented_and_no_other():
    documented, code = documented_reject_reasons(), code_reject_reasons()
    assert documented - code == set(), "documented but never counted"
    assert code - documented == set(), "counted but not documented in docs/reference.md section 3"


def test_wire_reasons_list_is_what_the_decoder_raises():
    # REASONS is what docs/protocol.md and the doc rely on; a raise outside it would be a surprise.
    assert _constants(_calls(wire.__file__, "WireError")) == set(wire.REASONS)


# -- validation limits -----------------------------------------------------------------------------

def validation_rows():
    text = section(doc(), "### Validation")
    rows = {}
    for header, body in tables(text):
        if header[0] == "reason":
            rows.update({ticked(r[0]): r for r in body})
    return rows


def test_integer_ranges_match_the_validator():
    rows = validation_rows()
    for field, (lo, hi) in validate._INT_RANGES.items():
        row = rows["invalid_" + field]
        assert ticked(row[1]) == field
        m = re.search(r"(\d+) to (\d+)", row[3])
        assert m, row
        assert (int(m.group(1)), int(m.group(2))) == (lo, hi), "invalid_%s: doc %s, code %s" % (
            field, m.group(0), (lo, hi))


def test_field_types_match_the_record():
    rows = validation_rows()
    for field in FIELDS:
        kind = rows["invalid_" + field][2]
        want = "integer" if field in INT_FIELDS else "number" if field in FLOAT_FIELDS else "string"
        assert kind.startswith(want), (field, kind)


def test_other_validation_limits_match_the_code():
    rows = validation_rows()
    limits = validate.DEFAULT_LIMITS
    assert "at most %d characters" % validate.MAX_IF_NAME in rows["invalid_if_name"][3]
    # The cross-field table has three columns: reason, check, accepted.
    assert "%d s" % limits.max_duration in rows["invalid_duration"][-1]
    assert "not before %d" % validate.MIN_TIME in rows["invalid_first"][3]
    assert "+ %d s" % limits.clock_skew in rows["invalid_last"][3]
    assert "`first` ≤ `last`" in rows["invalid_first_after_last"][-1]
    sent = rows["invalid_sent"][-1]
    assert "`token_ttl` − %d s" % limits.clock_skew in sent and "+ %d s" % limits.clock_skew in sent
    assert re.findall(r"`(\w+)`", rows["invalid_end_reason"][3]) == list(END_REASONS)
    assert "up to" not in rows["invalid_packets"][3]
    assert str(validate.MAX_COUNTER) in rows["invalid_packets"][3]
    assert "`packets` ≤ `bytes` ≤ `packets` × 2^32" in rows["invalid_bytes"][3]


def constant_value(name):
    """The value in the code of a name of the Limits table."""
    if name.startswith("CollectorConfig."):
        field = {f.name: f for f in dataclasses.fields(CollectorConfig)}[name.split(".", 1)[1]]
        return field.default
    module, _, attr = name.partition(".")
    obj = {"validate": validate, "wire": wire}[module]
    if attr.startswith("Limits."):
        return getattr(validate.Limits(), attr.split(".", 1)[1])
    return getattr(obj, attr)


def test_limits_table_matches_the_constants():
    (header, rows), = [t for t in tables(section(doc(), "### Limits and where they are set"))]
    assert header[:2] == ["constant", "value"]
    names = [ticked(r[0]) for r in rows]
    for name, row in zip(names, rows):
        assert number(row[1]) == pytest.approx(constant_value(name)), (name, row[1])
    # The ones every reject above depends on must be in the table.
    for must in ("CollectorConfig.token_ttl", "CollectorConfig.clock_skew", "validate.Limits.clock_skew",
                 "validate.Limits.max_duration", "validate.MIN_TIME", "validate.MAX_IF_NAME", "validate.MAX_COUNTER",
                 "validate.U32", "wire.CLOCK_SKEW", "wire.MAX_PLAIN", "wire.MAX_UDP_PAYLOAD", "wire.MAX_AGENT_ID",
                 "CollectorConfig.max_datagram", "CollectorConfig.seq_window"):
        assert must in names, must


def test_the_clock_skew_setting_reaches_every_check_it_documents():
    # The processor is built with the config's clock_skew, and decoding uses the same value.
    import myason.collector.processor as processor
    from myason.collector.datagram import DatagramProcessor
    assert "clock_skew=cfg.clock_skew" in Path(processor.__file__).read_text()
    proc = DatagramProcessor(None, limits=validate.Limits(clock_skew=7.0))
    assert proc.limits.clock_skew == 7.0 and proc.ttl == 5.0
    (_, rows), = tables(section(doc(), "### Limits and where they are set"))
    row = next(r for r in rows if ticked(r[0]) == "CollectorConfig.clock_skew")
    assert "`future`" in row[3] and "`invalid_sent`" in row[3] and "`invalid_last`" in row[3]


# -- SQLite schema ---------------------------------------------------------------------------------

def sqlite_schema(path):
    """The schema read back from a SQLite file, in parse_schema's layout (SQLite's own tables left out)."""
    conn = sqlite3.connect(str(path))
    try:
        out = {}
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite_%'")]
        for name in names:
            info = conn.execute('PRAGMA table_info("%s")' % name).fetchall()
            columns = [(r[1], r[2] + (" NOT NULL" if r[3] else "") + (" DEFAULT %s" % r[4] if r[4] is not None else ""))
                       for r in info]
            pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
            indexes = {}
            for _, iname, unique, origin, _partial in conn.execute('PRAGMA index_list("%s")' % name):
                if origin == "pk":
                    continue
                cols = [r[2] for r in conn.execute('PRAGMA index_info("%s")' % iname)]
                indexes[iname] = (bool(unique), "btree", cols)
            out[name] = {"columns": columns, "pk": pk, "indexes": indexes, "partitioned": None}
        return out
    finally:
        conn.close()


def test_sqlite_schema_is_what_the_migrations_build(tmp_path):
    from myason.store.sqlite import SqliteWriter
    path = tmp_path / "flows.db"
    writer = SqliteWriter(path=str(path))
    writer.open()           # the project's own migrations, as a collector applies them
    writer.close()
    built = sqlite_schema(path)
    documented = parse_schema(section(doc(), "### SQLite"))
    assert sorted(documented) == sorted(built), "tables differ"
    for table in built:
        assert documented[table] == built[table], table


# -- metric names and types (the live test checks what is exposed) --------------------------------

def test_collector_metric_types_follow_gauges():
    from myason.collector.app import GAUGES
    rows = metric_rows("### Collector metrics")
    for name, row in rows.items():
        gauge = not name.endswith("_total")
        short = name[len("myason_"):-len("_total") if not gauge else None]
        assert row[1] == ("gauge" if gauge else "counter"), name
        assert (short in GAUGES) == gauge, "%s: GAUGES says %s" % (name, short in GAUGES)
    assert {"myason_" + g for g in GAUGES} <= set(rows)


def test_agent_metric_types_follow_gauges():
    from myason.agent.app import GAUGES
    rows = metric_rows("### Agent metrics")
    for name, row in rows.items():
        short = re.sub(r"_total$", "", name[len("myason_agent_"):])
        assert row[1] == ("gauge" if short in GAUGES else "counter"), name
        assert name.endswith("_total") == (short not in GAUGES), name


def test_api_metrics_are_documented_exactly(tmp_path):
    from fastapi.testclient import TestClient

    from myason.api.app import create_app
    from myason.api.config import ApiConfig
    from myason.store.sqlite import SqliteWriter
    path = str(tmp_path / "flows.db")
    writer = SqliteWriter(path=path)
    writer.open()
    writer.close()
    app = create_app(ApiConfig(database={"type": "sqlite", "path": path}, token="t0ken"))
    with TestClient(app) as client:
        auth = {"Authorization": "Bearer t0ken"}
        assert client.get("/stats", headers=auth).status_code == 200
        assert client.get("/metrics", headers=auth).status_code == 200
        text = client.get("/metrics", headers=auth).text
    exposed = exposed_families(text)
    documented = {name: row[1] for name, row in metric_rows("### API metrics").items()}
    assert documented == exposed


# -- readiness ---------------------------------------------------------------------------------------

def test_status_exit_codes_match_the_command():
    from myason import cli
    from myason.collector import status
    (header, rows), = [t for t in tables(section(doc(), "### `myason collector -cc FILE --status`"))]
    assert header[0] == "exit code"
    codes = {int(r[0]): r[1] for r in rows}
    assert set(codes) == {status.DRAINED, status.IN_FLIGHT, status.UNHEALTHY, cli.EXIT_CONFIG}
    assert codes[status.DRAINED].startswith("healthy and drained")
    assert codes[status.IN_FLIGHT].startswith("healthy, with data still in flight")
    assert codes[status.UNHEALTHY].startswith("unhealthy")
    assert codes[cli.EXIT_CONFIG].startswith("configuration error")
    assert status.exit_code(None) == status.UNHEALTHY
    assert status.exit_code({"ready": True, "healthy": True, "drained": False}) == status.IN_FLIGHT
