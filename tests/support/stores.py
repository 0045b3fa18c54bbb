"""Reading and resetting the stores on the session's servers: SQL on PostgreSQL, the collector's flows
read back in FIELDS order, and an InfluxDB writer on the session's InfluxDB 1.x."""
from myason.store.base import writer_class

# The collector's flows table, back in FIELDS order and in the agent's types ("" for no next hop).
PG_COLUMNS = ("host(src_ip), host(dst_ip), src_port, dst_port, proto, tos, packets, bytes, "
              "extract(epoch from first)::float8, extract(epoch from last)::float8, tcp_flags, agent, if_name, "
              "in_if, out_if, ip_version, vlan, coalesce(host(next_hop), ''), src_mask, dst_mask, src_as, dst_as, "
              "end_reason")


def pg_query(dsn, sql, params=None):
    """Run one statement in autocommit; its rows, or None for a statement that returns none."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


def pg_reset(dsn):
    """Drop the collector's tables so each test starts from an empty database."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS flows CASCADE")
        conn.execute("DROP TABLE IF EXISTS batches, schema_migrations CASCADE")


def pg_rows(dsn):
    """Every stored flow as a FIELDS-ordered tuple ([] while the server or table is not there)."""
    import psycopg
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            return [tuple(r) for r in conn.execute("SELECT %s FROM flows" % PG_COLUMNS).fetchall()]
    except psycopg.Error:
        return []


def v1_writer(servers, db, tmp_path, **kw):
    """The influxdb writer (api v1) on the session's InfluxDB, database `db`, state under tmp_path."""
    return writer_class("influxdb")(url=servers.influx_url, api="v1", database=db, instance="itest",
                                    state_file=str(tmp_path / "influx.state"), **kw)
