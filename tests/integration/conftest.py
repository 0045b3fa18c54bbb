"""Fixtures of the integration tests: a fresh database on the session's PostgreSQL or InfluxDB
(tests/conftest.py starts the servers once per session)."""
import uuid

import pytest

from tests.support.stores import pg_query


@pytest.fixture
def pg(servers):
    """A fresh database on the session's PostgreSQL; yields its DSN."""
    psycopg = pytest.importorskip("psycopg")
    if not servers.pg_dsn:
        pytest.skip("PostgreSQL not started")
    name = "t_%s" % uuid.uuid4().hex[:12]
    pg_query(servers.pg_dsn, "CREATE DATABASE %s" % name)
    yield psycopg.conninfo.make_conninfo(servers.pg_dsn, dbname=name)
    try:
        pg_query(servers.pg_dsn, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    except psycopg.Error:
        pass    # the server may be down after a failed fault test; its dir is removed anyway


@pytest.fixture
def influx_db(servers):
    """A database name of its own on the session's InfluxDB (the writer creates the database)."""
    if not servers.influx_url:
        pytest.skip("InfluxDB not started")
    return "t_%s" % uuid.uuid4().hex[:10]
