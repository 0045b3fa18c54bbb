"""Read-only access to the flow store (PostgreSQL or SQLite), parameterised SQL only.

PostgreSQL: a small pool of autocommit connections opened read-only with a statement timeout.
SQLite: one read-only connection (URI mode=ro) per call, which is cheap and keeps threads apart;
WAL mode lets it read while the collector writes. `Dialect` hides the few SQL differences
(placeholders, time and address types) from the query builders.
"""
from __future__ import annotations

import ipaddress
import os
import queue
import sqlite3
import threading
import time
import urllib.parse


class DatabaseError(Exception):
    """The database cannot answer now (down, locked, timed out): HTTP 503, not the user's fault."""


class MissingTable(Exception):
    """A table the query needs does not exist yet (no migration applied): an empty answer."""


class Dialect:
    """SQL fragments that differ between the backends."""

    def __init__(self, kind):
        self.kind = kind
        self.p = "%s" if kind == "postgresql" else "?"

    def epoch(self, col: str) -> str:
        """Expression giving Unix seconds (float) of a time column."""
        return 'extract(epoch FROM %s)::float8' % col if self.kind == "postgresql" else col

    def time_param(self) -> str:
        """Placeholder for a Unix-seconds parameter compared with a time column."""
        return "to_timestamp(%s)" if self.kind == "postgresql" else "?"

    def ip_text(self, col: str) -> str:
        """Expression giving an address column as text."""
        return "host(%s)" % col if self.kind == "postgresql" else col

    def ip_param(self) -> str:
        """Placeholder for an address compared with an address column."""
        return "%s::inet" if self.kind == "postgresql" else "?"

    def in_net(self, col: str) -> str:
        """Condition: address column inside the network given as the next parameter."""
        return "%s <<= %%s::inet" % col if self.kind == "postgresql" else "in_net(%s, ?)" % col

    def window(self, col: str, window: int) -> str:
        """Expression giving the start (Unix seconds) of the `window`-second window of a time column."""
        if self.kind == "postgresql":
            return "(floor(extract(epoch FROM %s) / %d) * %d)::float8" % (col, window, window)
        return "(CAST(%s / %d AS INTEGER) * %d)" % (col, window, window)


def _in_net(addr, net):
    # SQLite stores addresses as text: membership is checked in Python (fine at SQLite's scale).
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(net)
    except (ValueError, TypeError):
        return False


class Database:
    """Common interface: fetch(sql, params) -> (columns, rows)."""

    kind = ""

    def __init__(self):
        self.dialect = Dialect(self.kind)

    def fetch(self, sql, params=()):
        """Run one SELECT; (column names, list of row tuples)."""
        raise NotImplementedError

    def writer_config(self) -> dict:
        """The writer-style config myason.store.query takes ({type, path} or {type, dsn})."""
        raise NotImplementedError

    def size(self):
        """Bytes the database takes, or None."""
        return None

    def close(self):
        """Release connections."""


class SqliteDatabase(Database):
    """A SQLite file, opened read-only for each call."""

    kind = "sqlite"

    def __init__(self, path, timeout=30.0):
        super().__init__()
        self.path = path
        self.timeout = timeout

    def _connect(self):
        uri = "file:%s?mode=ro" % urllib.parse.quote(os.path.abspath(self.path))
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=min(self.timeout, 5.0), check_same_thread=False)
        except sqlite3.Error as exc:
            raise DatabaseError("cannot open %s: %s" % (self.path, exc)) from None
        conn.create_function("in_net", 2, _in_net, deterministic=True)
        deadline = time.monotonic() + self.timeout
        # A non-zero return interrupts the statement: the query timeout.
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10000)
        return conn

    def fetch(self, sql, params=()):
        """Run one SELECT on a fresh read-only connection."""
        conn = self._connect()
        try:
            cur = conn.execute(sql, tuple(params))
            cols = [d[0] for d in cur.description or ()]
            return cols, cur.fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise MissingTable(str(exc)) from None
            if "interrupted" in str(exc):
                raise DatabaseError("query timed out after %.0f s" % self.timeout) from None
            raise DatabaseError("sqlite: %s" % exc) from None
        except sqlite3.Error as exc:
            raise DatabaseError("sqlite: %s" % exc) from None
        finally:
            conn.close()

    def writer_config(self):
        """{type: sqlite, path}."""
        return {"type": "sqlite", "path": self.path}

    def size(self):
        """Bytes of the database file and its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total


class PostgresDatabase(Database):
    """PostgreSQL through a small pool of read-only autocommit connections."""

    kind = "postgresql"

    def __init__(self, dsn, pool_size=4, timeout=30.0):
        super().__init__()
        import psycopg
        self._psycopg = psycopg
        self.dsn = dsn
        self.timeout = timeout
        self._idle = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)

    def _connect(self):
        psycopg = self._psycopg
        try:
            return psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(min(self.timeout, 10))),
                                   application_name="myason-api",
                                   options="-c default_transaction_read_only=on -c statement_timeout=%d"
                                   % int(self.timeout * 1000))
        except psycopg.Error as exc:
            raise DatabaseError("postgresql: cannot connect: %s" % _short(exc)) from None

    def fetch(self, sql, params=()):
        """Run one SELECT on a pooled connection (waits for a free one up to the query timeout)."""
        psycopg = self._psycopg
        if not self._slots.acquire(timeout=self.timeout):
            raise DatabaseError("postgresql: every connection is busy")
        conn = None
        try:
            for attempt in (1, 2):
                conn = None
                if attempt == 1:
                    try:
                        conn = self._idle.get_nowait()
                    except queue.Empty:
                        pass
                pooled = conn is not None
                if conn is None:
                    conn = self._connect()
                try:
                    cur = conn.execute(sql, tuple(params))
                    cols = [d.name for d in cur.description or ()]
                    return cols, cur.fetchall()
                except psycopg.errors.UndefinedTable as exc:
                    raise MissingTable(_short(exc)) from None
                except psycopg.errors.QueryCanceled:
                    raise DatabaseError("query timed out after %.0f s" % self.timeout) from None
                except psycopg.Error as exc:
                    if not (conn.closed or conn.broken):
                        raise DatabaseError("postgresql: %s" % _short(exc)) from None
                    conn.close()
                    conn = None
                    # A pooled connection may have died with a server restart: one fresh try.
                    if not pooled or attempt == 2:
                        raise DatabaseError("postgresql: %s" % _short(exc)) from None
        finally:
            if conn is not None and not conn.closed:
                self._idle.put(conn)
            self._slots.release()

    def writer_config(self):
        """{type: postgresql, dsn}."""
        return {"type": "postgresql", "dsn": self.dsn}

    def size(self):
        """pg_database_size of the current database."""
        try:
            return self.fetch("SELECT pg_database_size(current_database())")[1][0][0]
        except (DatabaseError, MissingTable):
            return None

    def close(self):
        """Close every idle connection."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def open_database(spec: dict, pool_size=4, timeout=30.0) -> Database:
    """A Database for {type: sqlite, path} or {type: postgresql, dsn}."""
    if spec["type"] == "sqlite":
        return SqliteDatabase(spec["path"], timeout)
    return PostgresDatabase(spec["dsn"], pool_size, timeout)


def _short(exc):
    return " ".join(str(exc).split())[:300]
