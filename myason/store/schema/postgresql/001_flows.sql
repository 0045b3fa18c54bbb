-- Flows, partitioned by day on "first" (UTC). Partitions are created by the writer for the days
-- present in each batch (flows_pYYYYMMDD, [day, day + 1)); there is no default partition on
-- purpose: a default partition would have to be scanned (and locked) every time a new day is
-- attached, and retention could not drop it. Retention drops whole day partitions.
CREATE TABLE flows (
    src_ip      inet        NOT NULL,
    dst_ip      inet        NOT NULL,
    src_port    integer     NOT NULL,
    dst_port    integer     NOT NULL,
    proto       smallint    NOT NULL,
    tos         smallint    NOT NULL,
    packets     bigint      NOT NULL,
    bytes       bigint      NOT NULL,
    "first"     timestamptz NOT NULL,
    "last"      timestamptz NOT NULL,
    tcp_flags   smallint    NOT NULL,
    agent       text        NOT NULL,
    if_name     text        NOT NULL,
    in_if       bigint      NOT NULL,
    out_if      bigint      NOT NULL,
    ip_version  smallint    NOT NULL,
    vlan        smallint    NOT NULL,
    next_hop    inet,                   -- NULL: directly connected or unknown (the agent's "")
    src_mask    smallint    NOT NULL,
    dst_mask    smallint    NOT NULL,
    src_as      bigint      NOT NULL,
    dst_as      bigint      NOT NULL,
    end_reason  text        NOT NULL,
    received    timestamptz NOT NULL,   -- when the collector received the datagram
    exporter    inet        NOT NULL    -- the UDP source address of the datagram
) PARTITION BY RANGE ("first");

-- Rows arrive in time order, so a BRIN index serves time ranges at almost no write cost; the
-- btrees serve "this host" and "this agent over time" queries.
CREATE INDEX flows_first_brin ON flows USING brin ("first");
CREATE INDEX flows_src_ip_idx ON flows (src_ip);
CREATE INDEX flows_dst_ip_idx ON flows (dst_ip);
CREATE INDEX flows_agent_first_idx ON flows (agent, "first");

-- One row per stored spool batch, inserted in the batch's own transaction: a retried batch
-- finds its id here and is skipped (exactly once).
CREATE TABLE batches (
    batch_id    text        PRIMARY KEY,
    rows        integer     NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_stored_at_idx ON batches (stored_at);
