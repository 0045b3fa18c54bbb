-- The PostgreSQL schema's logical twin: addresses as text, times as REAL Unix seconds (UTC).
-- STRICT makes SQLite refuse a value of the wrong type instead of storing it as is.
CREATE TABLE flows (
    src_ip      TEXT    NOT NULL,
    dst_ip      TEXT    NOT NULL,
    src_port    INTEGER NOT NULL,
    dst_port    INTEGER NOT NULL,
    proto       INTEGER NOT NULL,
    tos         INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    "first"     REAL    NOT NULL,
    "last"      REAL    NOT NULL,
    tcp_flags   INTEGER NOT NULL,
    agent       TEXT    NOT NULL,
    if_name     TEXT    NOT NULL,
    in_if       INTEGER NOT NULL,
    out_if      INTEGER NOT NULL,
    ip_version  INTEGER NOT NULL,
    vlan        INTEGER NOT NULL,
    next_hop    TEXT,                   -- NULL: directly connected or unknown (the agent's "")
    src_mask    INTEGER NOT NULL,
    dst_mask    INTEGER NOT NULL,
    src_as      INTEGER NOT NULL,
    dst_as      INTEGER NOT NULL,
    end_reason  TEXT    NOT NULL,
    received    REAL    NOT NULL,
    exporter    TEXT    NOT NULL
) STRICT;

CREATE INDEX flows_first_idx ON flows ("first");
CREATE INDEX flows_src_ip_idx ON flows (src_ip);
CREATE INDEX flows_dst_ip_idx ON flows (dst_ip);
CREATE INDEX flows_agent_first_idx ON flows (agent, "first");

CREATE TABLE batches (
    batch_id    TEXT    PRIMARY KEY,
    rows        INTEGER NOT NULL,
    stored_at   REAL    NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX batches_stored_at_idx ON batches (stored_at);
