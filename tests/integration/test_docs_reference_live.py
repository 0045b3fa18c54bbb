"""docs/reference.md against running code: a real collector's /metrics, /status and --summary-json,
a real agent's metrics endpoint after a replay, and the PostgreSQL schema the migrations build.

Every metric family exposed must be documented with its type, and every documented one exposed
(labelled families by their family name: the traffic below makes each of them appear).
"""
import json
import re
import socket
import urllib.error
import urllib.request
import uuid

from tests.support.collector import free_tcp_port, sqlite_rows
from tests.support.docs import ROOT, doc, exposed_families, metric_rows, parse_schema, section, tables, ticked
from tests.support.services import wait_until
from tests.support.streams import ROWS_PER_DATAGRAM, Stream, collector


def get(port, path):
    """(HTTP status, body text) of a GET on 127.0.0.1:port."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def doc_table(heading, *header):
    """{first-column code name: row cells} of the table with exactly these header cells under `heading`."""
    (_, rows), = [t for t in tables(section(doc(), heading)) if tuple(t[0]) == header]
    return {ticked(r[0]): r for r in rows}


def quoted(cell):
    """The "names" quoted in a cell (the nested keys of a summary entry)."""
    return set(re.findall(r'"(\w+)"', cell))


def test_collector_metrics_status_and_summary_are_documented_exactly(tmp_path):
    db = tmp_path / "flows.db"
    c = collector(tmp_path, [{"type": "sqlite", "path": str(db)}, {"type": "jsonl", "dir": str(tmp_path / "jsonl")}],
                  source_rate=0.01, source_burst=20)
    stream = Stream(c)
    with c:
        port = c.metrics_port
        wait_until(lambda: get(port, "/healthz")[0] == 200, timeout=10, ignore=(OSError,))
        stream.send(10)
        # One datagram of each kind of trouble that has a family of its own: a reject.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"not a myason datagram", ("127.0.0.1", c.port))
        # And a source over its rate: 20 pass (its burst) and are rejected, the 21st is limited.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            for _ in range(21):
                s.sendto(b"not a myason datagram", ("127.0.0.1", c.port))
        wait_until(lambda: len(sqlite_rows(db)) == 10 * ROWS_PER_DATAGRAM, timeout=30)
        wait_until(lambda: 'myason_rejects_total{key="bad_magic"} 21.0' in get(port, "/metrics")[1], timeout=10)
        wait_until(lambda: 'myason_rate_limited_by_network_total{key="127.0.0.0/24"} 1.0' in get(port, "/metrics")[1],
                   timeout=10)
        status = json.loads(wait_until(lambda: (lambda r: json.loads(r[1])["drained"] and r[1])(get(port, "/status")),
                                       timeout=30))
        code, metrics = get(port, "/metrics")
        assert code == 200
        assert get(port, "/")[1].startswith("# HELP")
        assert get(port, "/healthz")[0] == 200
        assert c.stop() == 0, c.log()

    exposed = exposed_families(metrics)
    documented = {name: row[1] for name, row in metric_rows("### Collector metrics").items()}
    assert set(exposed) - set(documented) == set(), "exposed but not documented"
    assert set(documented) - set(exposed) == set(), "documented but not exposed"
    assert documented == exposed, "types differ"

    # /status: its keys, stage names and states.
    keys = doc_table("## 5. Is the collector", "key", "type", "meaning")
    assert set(status) == set(keys)
    states = doc_table("## 5. Is the collector", "stage", "states")
    assert set(status["stages"]) == {"listener", "processor-0", "writer-sqlite", "writer-jsonl", "maintenance-sqlite"}
    for stage, state in status["stages"].items():
        row = states["processor-N" if stage.startswith("processor-") else "writer-NAME"
                     if stage.startswith("writer-") else "maintenance-NAME" if stage.startswith("maintenance-")
                     else stage]
        assert "`%s`" % state in row[1], (stage, state)
    assert set(status["spool_batches"]) == {"sqlite", "jsonl"}

    # --summary-json: every key, and the keys of each nested object.
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = doc_table("## 2. Summary at exit", "key", "type", "unit", "meaning")
    assert set(summary) == set(rows)
    for key, nested in (("agents", summary["agents"]), ("writers", summary["writers"]), ("spool", summary["spool"]),
                        ("maintenance", summary["maintenance"]), ("capacity", summary["capacity"])):
        assert nested, key
        for inner in nested.values():
            assert set(inner) == quoted(rows[key][3]), key
    assert summary["rejects"] == {"bad_magic": 21} and summary["rate_limited_by_network"] == {"127.0.0.0/24": 1}
    assert summary["processors_alive"] == 0


def test_agent_metrics_and_summary_are_documented_exactly(tmp_path):
    from myason.agent.app import AgentApp
    from myason.agent.config import load_agent_config
    app = AgentApp(load_agent_config(None), read=[str(ROOT / "data" / "demo.pcap")], export=False,
                   progress=False, engine="python")
    assert app.run() == 0
    # The agent's own endpoint over the finished run's counters (a replay ends before a scrape could).
    port = free_tcp_port()
    server = app.serve_metrics("127.0.0.1:%d" % port)
    try:
        code, text = get(port, "/metrics")
    finally:
        server.shutdown()
    assert code == 200
    exposed = exposed_families(text)
    documented = {name: row[1] for name, row in metric_rows("### Agent metrics").items()}
    assert documented == exposed

    # The agent's summary (stderr): every key is in the table, directly or as capture_<counter>.
    names = set()
    for row in doc_table("## 2. Summary at exit", "key", "meaning").values():
        names |= set(re.findall(r"`(\w+)`", row[0]))
    for key in app.summary:
        assert key in names or key.startswith("capture_"), key


def pg_schema(dsn):
    """The schema of a PostgreSQL database in parse_schema's layout (partitions left out)."""
    import psycopg
    out = {}
    with psycopg.connect(dsn) as conn:
        for oid, name, kind in conn.execute(
                "SELECT c.oid, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition").fetchall():
            columns = [(att, _pg_type(typ, notnull, default)) for att, typ, notnull, default in conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)"
                " FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
                " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", (oid,))]
            pk = [r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY k(n, i)"
                " JOIN pg_attribute a ON a.attnum = k.n"
                " WHERE c.conrelid = %s AND c.contype = 'p' AND a.attrelid = %s ORDER BY k.i", (oid, oid))]
            indexes = {}
            for iname, unique, primary, definition in conn.execute(
                    "SELECT ic.relname, i.indisunique, i.indisprimary, pg_get_indexdef(i.indexrelid)"
                    " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = %s", (oid,)):
                if primary:
                    continue
                m = re.search(r"USING (\w+) \((.*)\)$", definition)
                indexes[iname] = (unique, m.group(1), [c.strip().strip('"') for c in m.group(2).split(",")])
            part = None
            if kind == "p":
                part = conn.execute("SELECT pg_get_partkeydef(%s)", (oid,)).fetchone()[0]
            out[name] = {"columns": columns, "pk": pk, "indexes": indexes, "partitioned": part}
    return out


def _pg_type(typ, notnull, default):
    """A column as the document writes it: `type [NOT NULL] [DEFAULT x]`, serials as such, no casts."""
    typ = typ.replace("timestamp with time zone", "timestamptz")
    if default and default.startswith("nextval("):
        typ, default = {"bigint": "bigserial", "integer": "serial"}[typ], None
    if default:
        default = re.sub(r"::[a-z ]+$", "", default)
    return typ + (" NOT NULL" if notnull else "") + (" DEFAULT %s" % default if default else "")


def test_postgresql_schema_is_what_the_migrations_build(servers):
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from myason.store.postgresql import PostgresWriter
    name = "myason_docref_%s" % uuid.uuid4().hex[:12]
    with psycopg.connect(servers.pg_dsn, autocommit=True) as admin:
        admin.execute('CREATE DATABASE "%s"' % name)
    try:
        params = conninfo_to_dict(servers.pg_dsn)
        params["dbname"] = name
        dsn = make_conninfo(**params)
        writer = PostgresWriter(dsn=dsn)
        writer.open()           # the project's own migrations, as a collector applies them
        writer.close()
        built = pg_schema(dsn)
    finally:
        with psycopg.connect(servers.pg_dsn, autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    documented = parse_schema(section(doc(), "### PostgreSQL"))
    assert sorted(documented) == sorted(built), "tables differ"
    for table in built:
        assert documented[table] == built[table], table
