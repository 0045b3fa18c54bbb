-- Issue 5: rollups per resolution (1m, 15m, 1h, 1d), the state their maintenance needs, and the
-- collector health tables. Maintained by myason.store.rollup (see docs/rollups.md).
-- Buckets are aligned to the Unix epoch (UTC days for 1d); a flow belongs to the bucket of "first".
-- The rollup tables are partitioned by bucket so retention drops whole partitions: 1m by day
-- (rollup_1m_pYYYYMMDD), 15m and 1h by month (rollup_15m_pYYYYMM), 1d by year (rollup_1d_pYYYY).
-- Partitions are created by the maintenance for the periods it writes; no default partition, for
-- the same reason as flows (001).
-- IF NOT EXISTS throughout: tests and operators may drop schema_migrations and apply again.

CREATE TABLE IF NOT EXISTS rollup_1m (
    bucket      timestamptz NOT NULL,
    agent       text        NOT NULL,
    if_name     text        NOT NULL,
    proto       smallint    NOT NULL,
    direction   text        NOT NULL,
    bytes       bigint      NOT NULL,
    packets     bigint      NOT NULL,
    flows       bigint      NOT NULL,
    PRIMARY KEY (bucket, agent, if_name, proto, direction)
) PARTITION BY RANGE (bucket);
CREATE TABLE IF NOT EXISTS rollup_15m (LIKE rollup_1m INCLUDING ALL) PARTITION BY RANGE (bucket);
CREATE TABLE IF NOT EXISTS rollup_1h  (LIKE rollup_1m INCLUDING ALL) PARTITION BY RANGE (bucket);
CREATE TABLE IF NOT EXISTS rollup_1d  (LIKE rollup_1m INCLUDING ALL) PARTITION BY RANGE (bucket);

-- agent '*' = all agents together; dimension in src_ip, dst_ip, src_port, dst_port, src_country,
-- dst_country, src_asn, dst_asn; key is the value as text; rank 1 = most bytes.
CREATE TABLE IF NOT EXISTS rollup_top_1m (
    bucket      timestamptz NOT NULL,
    agent       text        NOT NULL,
    dimension   text        NOT NULL,
    key         text        NOT NULL,
    bytes       bigint      NOT NULL,
    packets     bigint      NOT NULL,
    flows       bigint      NOT NULL,
    rank        smallint    NOT NULL,
    PRIMARY KEY (bucket, agent, dimension, key)
) PARTITION BY RANGE (bucket);
CREATE TABLE IF NOT EXISTS rollup_top_15m (LIKE rollup_top_1m INCLUDING ALL) PARTITION BY RANGE (bucket);
CREATE TABLE IF NOT EXISTS rollup_top_1h  (LIKE rollup_top_1m INCLUDING ALL) PARTITION BY RANGE (bucket);
CREATE TABLE IF NOT EXISTS rollup_top_1d  (LIKE rollup_top_1m INCLUDING ALL) PARTITION BY RANGE (bucket);

-- One row per 1m bucket a stored batch touched, inserted in the batch's own transaction; the
-- maintenance recomputes those buckets and deletes exactly the ids it read.
CREATE TABLE IF NOT EXISTS rollup_dirty (
    id          bigserial   PRIMARY KEY,
    bucket      timestamptz NOT NULL
);
-- Coarse buckets (15m, 1h, 1d) whose top-N waits for the bucket to close (see docs/rollups.md).
CREATE TABLE IF NOT EXISTS rollup_pending (
    res         text        NOT NULL,
    bucket      timestamptz NOT NULL,
    PRIMARY KEY (res, bucket)
);
-- Small key/value facts of the maintenance (last run, what it did).
CREATE TABLE IF NOT EXISTS rollup_state (
    name        text        PRIMARY KEY,
    value       text        NOT NULL,
    updated     timestamptz NOT NULL DEFAULT now()
);

-- Flows stored before this migration: mark their minutes so the first maintenance rolls them up.
INSERT INTO rollup_dirty (bucket)
    SELECT DISTINCT date_bin('1 minute', "first", timestamptz '1970-01-01 00:00:00+00') FROM flows;

-- Collector health, written by the collector every health_interval seconds.
CREATE TABLE IF NOT EXISTS health_collectors (
    node            text             PRIMARY KEY,
    updated         timestamptz      NOT NULL,
    started         timestamptz,
    datagrams       bigint           NOT NULL DEFAULT 0,
    flows           bigint           NOT NULL DEFAULT 0,
    rejects         bigint           NOT NULL DEFAULT 0,
    queue_dropped   bigint           NOT NULL DEFAULT 0,
    kernel_drops    bigint           NOT NULL DEFAULT 0,
    spool_files     bigint           NOT NULL DEFAULT 0,
    spool_bytes     bigint           NOT NULL DEFAULT 0,
    writer_lag      double precision,           -- seconds: age of the oldest unstored spool batch
    disk_free       bigint                      -- bytes free where the spool lives
);
CREATE TABLE IF NOT EXISTS health_agents (
    node            text             NOT NULL,
    agent           text             NOT NULL,
    updated         timestamptz      NOT NULL,
    last_datagram   timestamptz,
    datagrams       bigint           NOT NULL DEFAULT 0,
    flows           bigint           NOT NULL DEFAULT 0,
    gaps            bigint           NOT NULL DEFAULT 0,     -- lost datagrams
    restarts        bigint           NOT NULL DEFAULT 0,
    rejects         bigint           NOT NULL DEFAULT 0,
    PRIMARY KEY (node, agent)
);
-- One row per metric per interval (cumulative counters); kept 7 days.
CREATE TABLE IF NOT EXISTS health_samples (
    ts              timestamptz      NOT NULL,
    node            text             NOT NULL,
    agent           text             NOT NULL DEFAULT '',    -- '' for collector-wide metrics
    metric          text             NOT NULL,
    value           double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS health_samples_ts_idx ON health_samples (ts);
CREATE INDEX IF NOT EXISTS health_samples_metric_ts_idx ON health_samples (metric, ts);
