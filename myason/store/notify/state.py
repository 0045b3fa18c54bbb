"""The notifier's own state in SQLite: pending webhook deliveries, open digest windows and their
events, the mails sent (for the rate limit), the spool batches already taken in, counters.

Everything a restart must resume is here, so a collector killed at any moment loses nothing
it had acknowledged: a batch's deliveries, digest lines and marker go in in one transaction,
and a delivery leaves the table only once its receiver answered 2xx (or it was given up and
counted). The file is 0600 (it holds event bodies) and in WAL mode, so the writer thread and
the dispatcher, each with a connection of its own, never wait long for each other.
"""
from __future__ import annotations

import os
import sqlite3

from myason import fsmode

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, t REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT, webhook TEXT NOT NULL,"
    " rule TEXT NOT NULL, event_id TEXT NOT NULL, body BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " created REAL NOT NULL, next_try REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '',"
    " UNIQUE (webhook, rule, event_id))",
    "CREATE INDEX IF NOT EXISTS deliveries_next ON deliveries (next_try)",
    "CREATE TABLE IF NOT EXISTS digest (rule TEXT NOT NULL, event_id TEXT NOT NULL, detect TEXT NOT NULL,"
    " line TEXT NOT NULL, PRIMARY KEY (rule, event_id))",
    # One open window per rule: opened with its first event, due when it should be mailed (moved
    # on by the rate limit or a failed send), `unlisted` events past digest_max, `folded` windows
    # the rate limit merged into it.
    "CREATE TABLE IF NOT EXISTS windows (rule TEXT PRIMARY KEY, opened REAL NOT NULL, due REAL NOT NULL,"
    " unlisted INTEGER NOT NULL DEFAULT 0, folded INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS sent (rule TEXT NOT NULL, t REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class State:
    """One connection to the state file; each thread opens its own State."""

    def __init__(self, path, busy_timeout=30.0):
        self.path = path
        if not os.path.exists(path):
            # Created 0600 before SQLite writes a byte; its -wal and -shm get the same mode.
            os.close(fsmode.open_fd(path, os.O_WRONLY))
        for suffix in ("", "-wal", "-shm"):
            fsmode.ensure_mode(path + suffix, fsmode.PRIVATE_FILE)
        self.conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            with self.transaction() as c:
                for statement in _SCHEMA:
                    c.execute(statement)
        except sqlite3.Error:
            self.conn.close()
            raise

    def transaction(self):
        """A context manager: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""
        return _Transaction(self.conn)

    def close(self):
        """Close the connection."""
        self.conn.close()

    # --- intake (the writer thread) ---

    def has_batch(self, batch_id):
        """True when this spool batch was taken in already (a retry after a crash)."""
        return self.conn.execute("SELECT 1 FROM batches WHERE id = ?", (batch_id,)).fetchone() is not None

    def accept(self, batch_id, deliveries, digests, now, outbox_max, digest_max):
        """Take one batch in, in one transaction; returns {counter: n} of what had to be dropped.

        deliveries: (webhook, rule, event_id, body); digests: (rule, window seconds, event_id,
        detect time text, line). Past outbox_max pending deliveries the oldest are dropped;
        past digest_max events in a rule's window the new ones are counted (`unlisted`), not listed.
        """
        dropped = {}
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM batches WHERE id = ?", (batch_id,)).fetchone():
                return None
            for webhook, rule, event_id, body in deliveries:
                c.execute("INSERT OR IGNORE INTO deliveries (webhook, rule, event_id, body, created, next_try)"
                          " VALUES (?, ?, ?, ?, ?, ?)", (webhook, rule, event_id, body, now, now))
            excess = c.execute("SELECT count(*) FROM deliveries").fetchone()[0] - outbox_max
            if excess > 0:
                c.execute("DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries ORDER BY id LIMIT ?)",
                          (excess,))
                dropped["webhook_dropped_outbox_full"] = excess
            for rule, window, event_id, detect, line in digests:
                c.execute("INSERT OR IGNORE INTO windows (rule, opened, due) VALUES (?, ?, ?)",
                          (rule, now, now + window))
                listed = c.execute("SELECT count(*) FROM digest WHERE rule = ?", (rule,)).fetchone()[0]
                if listed >= digest_max:
                    c.execute("UPDATE windows SET unlisted = unlisted + 1 WHERE rule = ?", (rule,))
                    dropped["mail_unlisted"] = dropped.get("mail_unlisted", 0) + 1
                else:
                    c.execute("INSERT OR IGNORE INTO digest VALUES (?, ?, ?, ?)", (rule, event_id, detect, line))
            c.execute("INSERT INTO batches VALUES (?, ?)", (batch_id, now))
            _add_counters(c, dropped)
        return dropped

    def forget_batches(self, before):
        """Drop the markers of batches taken in before `before` (they cannot come back by then)."""
        with self.transaction() as c:
            c.execute("DELETE FROM batches WHERE t < ?", (before,))

    # --- webhooks (the dispatcher) ---

    def due_deliveries(self, now, limit=100):
        """[(id, webhook, rule, event_id, body, attempts, created)] whose time has come, oldest first."""
        return self.conn.execute("SELECT id, webhook, rule, event_id, body, attempts, created FROM deliveries"
                                 " WHERE next_try <= ? ORDER BY id LIMIT ?", (now, limit)).fetchall()

    def next_delivery(self):
        """The earliest next_try of any pending delivery, or None."""
        return self.conn.execute("SELECT min(next_try) FROM deliveries").fetchone()[0]

    def delivered(self, delivery_id):
        """A 2xx answer: the delivery is done."""
        with self.transaction() as c:
            c.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
            _add_counters(c, {"webhook_delivered": 1})

    def retry(self, delivery_id, attempts, next_try, error, counted=True):
        """A failed attempt (counted), or one put off while its receiver is down: try again at next_try."""
        with self.transaction() as c:
            c.execute("UPDATE deliveries SET attempts = ?, next_try = ?, last_error = ? WHERE id = ?",
                      (attempts, next_try, error[:500], delivery_id))
            _add_counters(c, {"webhook_failed_attempts": int(counted)})

    def give_up(self, delivery_id, counter):
        """A delivery that can never succeed (refused with 4xx, or past give_up_after): removed, counted."""
        with self.transaction() as c:
            c.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
            _add_counters(c, {counter: 1})

    def pending(self):
        """Pending deliveries."""
        return self.conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]

    # --- digests (the dispatcher) ---

    def due_windows(self, now):
        """[(rule, opened, due, unlisted, folded, attempts)] of the windows due by now."""
        return self.conn.execute("SELECT rule, opened, due, unlisted, folded, attempts FROM windows WHERE due <= ?"
                                 " ORDER BY due", (now,)).fetchall()

    def next_window(self):
        """The earliest due time of any open window, or None."""
        return self.conn.execute("SELECT min(due) FROM windows").fetchone()[0]

    def window_lines(self, rule):
        """[(event_id, line)] of a rule's open window, by detect time."""
        return self.conn.execute("SELECT event_id, line FROM digest WHERE rule = ? ORDER BY detect, event_id",
                                 (rule,)).fetchall()

    def sent_since(self, rule, since):
        """Times of the mails sent for a rule since `since`, oldest first."""
        return [r[0] for r in self.conn.execute("SELECT t FROM sent WHERE rule = ? AND t > ? ORDER BY t",
                                                (rule, since))]

    def mailed(self, rule, event_ids, now, keep_since, window):
        """A digest went out: its events and window are done, the send is recorded for the rate limit."""
        with self.transaction() as c:
            c.executemany("DELETE FROM digest WHERE rule = ? AND event_id = ?", [(rule, e) for e in event_ids])
            c.execute("DELETE FROM windows WHERE rule = ?", (rule,))
            # Events that joined while the mail was being sent open the next window.
            if c.execute("SELECT 1 FROM digest WHERE rule = ? LIMIT 1", (rule,)).fetchone():
                c.execute("INSERT INTO windows (rule, opened, due) VALUES (?, ?, ?)", (rule, now, now + window))
            c.execute("INSERT INTO sent VALUES (?, ?)", (rule, now))
            c.execute("DELETE FROM sent WHERE t <= ?", (keep_since,))
            _add_counters(c, {"mail_sent": 1, "mail_events": len(event_ids)})

    def drop_window(self, rule, unlisted):
        """A window whose rule sends no mail any more (config changed): dropped; returns the events counted."""
        with self.transaction() as c:
            n = c.execute("SELECT count(*) FROM digest WHERE rule = ?", (rule,)).fetchone()[0] + unlisted
            c.execute("DELETE FROM digest WHERE rule = ?", (rule,))
            c.execute("DELETE FROM windows WHERE rule = ?", (rule,))
            _add_counters(c, {"mail_dropped_unknown_rule": n})
        return n

    def postpone(self, rule, due, counter, folded=0, attempts=0):
        """The window cannot be mailed now (rate limit, failed send): due again at `due`, counted."""
        with self.transaction() as c:
            c.execute("UPDATE windows SET due = ?, folded = folded + ?, attempts = attempts + ? WHERE rule = ?",
                      (due, folded, attempts, rule))
            _add_counters(c, {counter: 1})

    def counters(self):
        """{name: value} of every counter kept in the file."""
        return dict(self.conn.execute("SELECT name, value FROM counters"))


def _add_counters(c, counts):
    for name, n in counts.items():
        if n:
            c.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
                      (name, n, n))


class _Transaction:
    __slots__ = ("conn",)

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, exc, tb):
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
