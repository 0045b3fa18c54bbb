-- Issue 5: rollups per resolution (1m, 15m, 1h, 1d), the state their maintenance needs, and the
-- collector health tables; the PostgreSQL migration 004's twin with times as REAL Unix seconds
-- (UTC). Buckets are aligned to the Unix epoch (UTC days for 1d); a flow belongs to the bucket
-- of "first". Retention deletes rows (no partitions in SQLite). See docs/rollups.md.

CREATE TABLE rollup_1m (
    bucket      REAL    NOT NULL,
    agent       TEXT    NOT NULL,
    if_name     TEXT    NOT NULL,
    proto       INTEGER NOT NULL,
    direction   TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    flows       INTEGER NOT NULL,
    PRIMARY KEY (bucket, agent, if_name, proto, direction)
) STRICT, WITHOUT ROWID;
CREATE TABLE rollup_15m (
    bucket      REAL    NOT NULL,
    agent       TEXT    NOT NULL,
    if_name     TEXT    NOT NULL,
    proto       INTEGER NOT NULL,
    direction   TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    flows       INTEGER NOT NULL,
    PRIMARY KEY (bucket, agent, if_name, proto, direction)
) STRICT, WITHOUT ROWID;
CREATE TABLE rollup_1h (
    bucket      REAL    NOT NULL,
    agent       TEXT    NOT NULL,
    if_name     TEXT    NOT NULL,
    proto       INTEGER NOT NULL,
    direction   TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    flows       INTEGER NOT NULL,
    PRIMARY KEY (bucket, agent, if_name, proto, direction)
) STRICT, WITHOUT ROWID;
CREATE TABLE rollup_1d (
    bucket      REAL    NOT NULL,
    agent       TEXT    NOT NULL,
    if_name     TEXT    NOT NULL,
    proto       INTEGER NOT NULL,
    direction   TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    flows       INTEGER NOT NULL,
    PRIMARY KEY (bucket, agent, if_name, proto, direction)
) STRICT, WITHOUT ROWID;

-- agent '*' = all agents together; key is the value as text; rank 1 = most bytes.
CREATE TABLE rollup_top_1m (
    bucket      REAL    NOT NULL,
    agent       TEXT    NOT NULL,
    dimension   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    flows       INTEGER NOT NULL,
    rank        INTEGER NOT NULL,
    PRIMARY KEY (bucket, agent, dimension, key)
) STRICT, WITHOUT ROWID;
CREATE TABLE rollup_top_15m (
    bucket      REAL    NOT NULL,
    agent       TEXT    NOT NULL,
    dimension   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    flows       INTEGER NOT NULL,
    rank        INTEGER NOT NULL,
    PRIMARY KEY (bucket, agent, dimension, key)
) STRICT, WITHOUT ROWID;
CREATE TABLE rollup_top_1h (
    bucket      REAL    NOT NULL,
    agent       TEXT    NOT NULL,
    dimension   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    flows       INTEGER NOT NULL,
    rank        INTEGER NOT NULL,
    PRIMARY KEY (bucket, agent, dimension, key)
) STRICT, WITHOUT ROWID;
CREATE TABLE rollup_top_1d (
    bucket      REAL    NOT NULL,
    agent       TEXT    NOT NULL,
    dimension   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    flows       INTEGER NOT NULL,
    rank        INTEGER NOT NULL,
    PRIMARY KEY (bucket, agent, dimension, key)
) STRICT, WITHOUT ROWID;

-- One row per 1m bucket a stored batch touched, inserted in the batch's own transaction; the
-- maintenance recomputes those buckets and deletes exactly the ids it read.
CREATE TABLE rollup_dirty (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket      REAL    NOT NULL
) STRICT;
-- Coarse buckets (15m, 1h, 1d) whose top-N waits for the bucket to close (see docs/rollups.md).
CREATE TABLE rollup_pending (
    res         TEXT    NOT NULL,
    bucket      REAL    NOT NULL,
    PRIMARY KEY (res, bucket)
) STRICT, WITHOUT ROWID;
-- Small key/value facts of the maintenance (last run, what it did).
CREATE TABLE rollup_state (
    name        TEXT    PRIMARY KEY,
    value       TEXT    NOT NULL,
    updated     REAL    NOT NULL
) STRICT, WITHOUT ROWID;

-- Flows stored before this migration: mark their minutes so the first maintenance rolls them up.
INSERT INTO rollup_dirty (bucket) SELECT DISTINCT CAST("first" AS INTEGER) / 60 * 60 FROM flows;

-- Collector health, written by the collector every health_interval seconds.
CREATE TABLE health_collectors (
    node            TEXT    PRIMARY KEY,
    updated         REAL    NOT NULL,
    started         REAL,
    datagrams       INTEGER NOT NULL DEFAULT 0,
    flows           INTEGER NOT NULL DEFAULT 0,
    rejects         INTEGER NOT NULL DEFAULT 0,
    queue_dropped   INTEGER NOT NULL DEFAULT 0,
    kernel_drops    INTEGER NOT NULL DEFAULT 0,
    spool_files     INTEGER NOT NULL DEFAULT 0,
    spool_bytes     INTEGER NOT NULL DEFAULT 0,
    writer_lag      REAL,                       -- seconds: age of the oldest unstored spool batch
    disk_free       INTEGER                     -- bytes free where the spool lives
) STRICT, WITHOUT ROWID;
CREATE TABLE health_agents (
    node            TEXT    NOT NULL,
    agent           TEXT    NOT NULL,
    updated         REAL    NOT NULL,
    last_datagram   REAL,
    datagrams       INTEGER NOT NULL DEFAULT 0,
    flows           INTEGER NOT NULL DEFAULT 0,
    gaps            INTEGER NOT NULL DEFAULT 0,     -- lost datagrams
    restarts        INTEGER NOT NULL DEFAULT 0,
    rejects         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, agent)
) STRICT, WITHOUT ROWID;
-- One row per metric per interval (cumulative counters); kept 7 days.
CREATE TABLE health_samples (
    ts              REAL    NOT NULL,
    node            TEXT    NOT NULL,
    agent           TEXT    NOT NULL DEFAULT '',    -- '' for collector-wide metrics
    metric          TEXT    NOT NULL,
    value           REAL    NOT NULL
) STRICT;
CREATE INDEX health_samples_ts_idx ON health_samples (ts);
CREATE INDEX health_samples_metric_ts_idx ON health_samples (metric, ts);
