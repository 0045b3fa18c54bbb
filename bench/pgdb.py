"""A PostgreSQL database for a benchmark, on a given server or on one started by scripts/services.sh."""
import contextlib
import os
import uuid


@contextlib.contextmanager
def bench_database(prefix, dsn=None, db=None, keep=False):
    """Yield (DSN of the database, created).

    dsn: a server to use (default: start one with scripts/services.sh, stopped on exit); db: an
    existing database to measure (never dropped); otherwise a new database `prefix_<hex>` is
    created, and dropped on exit unless `keep`.
    """
    import psycopg
    servers = None
    if dsn:
        admin = dsn
    else:
        from tests.support.services import start_services
        servers = start_services(["pg"], watch_pid=os.getpid())
        admin = servers.pg_dsn
    name = db or "%s_%s" % (prefix, uuid.uuid4().hex[:8])
    try:
        if not db:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("CREATE DATABASE %s" % name)
        yield psycopg.conninfo.make_conninfo(admin, dbname=name), not db
    finally:
        if not db and not keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
        elif not db:
            print("kept database %s (--db %s)" % (name, name))
        if servers is not None:
            from tests.support.services import stop_services
            stop_services(servers)
