"""Agent -> encrypted UDP -> collector -> storage, end to end with real processes and servers."""
from collections import Counter

import pytest

from tests.support import trafficgen as gen
from tests.support import collector as col
from tests.support.services import influx_query, influx_rows, wait_until
from tests.support.streams import agent_key, agent_records

sqlite_rows = col.sqlite_rows


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e") / "scenario.pcap"
    gen.write_pcap(path, gen.scenario(seed=5))
    return path


def test_agent_to_collector_to_sqlite_exactly_once(tmp_path, scenario):
    db = tmp_path / "flows.db"
    with col.Collector(tmp_path / "c", [{"type": "sqlite", "path": str(db)}]) as c:
        out = tmp_path / "agent.csv"
        col.run_agent(c.agent_conf(), [scenario], output=out)
        rows, expected = agent_records(out)
        wait_until(lambda: len(sqlite_rows(db)) >= len(rows), timeout=30)
        assert c.stop() == 0
    stored = sqlite_rows(db)
    assert Counter(agent_key(r) for r in stored) == expected
    assert {r["agent"] for r in stored} == {col.AGENT_ID}
    assert {r["exporter"] for r in stored} == {"127.0.0.1"}
    assert "rejects" in c.log()


@pytest.mark.root
def test_real_captures_land_in_postgresql_influxdb_and_sqlite(tmp_path, servers):
    """Real captures (or the generated scenario without ../shared) into three stores at once."""
    from tests.support.oracle import SHARED
    real = sorted((SHARED / "pcaps" / "real").glob("zeek__*.pcap"))[:150] or []
    pcaps = real or [tmp_path / "s.pcap"]
    if not real:
        gen.write_pcap(pcaps[0], gen.scenario(seed=6))
    import psycopg
    db = tmp_path / "flows.db"
    writers = [{"type": "postgresql", "dsn": servers.pg_dsn},
               {"type": "influxdb", "url": servers.influx_url, "api": "v1", "database": "myason"},
               {"type": "sqlite", "path": str(db)}]
    with psycopg.connect(servers.pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS flows CASCADE")
        conn.execute("DROP TABLE IF EXISTS batches, schema_migrations CASCADE")
    influx_query(servers.influx_url, "DROP MEASUREMENT flows")
    with col.Collector(tmp_path / "c", writers) as c:
        out = tmp_path / "agent.csv"
        col.run_agent(c.agent_conf(), pcaps, output=out)
        rows, expected = agent_records(out)

        def pg_rows():
            try:
                with psycopg.connect(servers.pg_dsn) as conn:
                    cur = conn.execute("SELECT host(src_ip), host(dst_ip), src_port, dst_port, proto, tos, packets, "
                                       "bytes, tcp_flags, end_reason, extract(epoch from first), "
                                       "extract(epoch from last) FROM flows")
                    return cur.fetchall()
            except psycopg.Error:
                return []
        wait_until(lambda: len(pg_rows()) >= len(rows) and len(sqlite_rows(db)) >= len(rows), timeout=60)
        assert c.stop() == 0
    got_pg = Counter(tuple(str(v) for v in r[:10]) + (round(float(r[10]), 6), round(float(r[11]), 6))
                     for r in pg_rows())
    assert got_pg == expected
    assert Counter(agent_key(r) for r in sqlite_rows(db)) == expected
    res = influx_rows(influx_query(servers.influx_url, "SELECT sum(bytes), sum(packets), sum(flows) FROM flows"))
    assert res and (res[0]["sum"], res[0]["sum_1"], res[0]["sum_2"]) == (
        sum(int(r["bytes"]) for r in rows), sum(int(r["packets"]) for r in rows), len(rows))
