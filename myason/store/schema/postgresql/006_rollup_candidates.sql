-- Incremental rollups (issue 11, docs/rollups.md): each stored batch adds its exact 1m totals to
-- rollup_1m/15m/1h/1d (an upsert that adds, in the batch's transaction) and inserts its top-N
-- candidates here: per (1m bucket, agent, dimension) the batch's `rollup_top` keys with the most
-- bytes. The maintenance sums the candidates of each closed minute with the list already in
-- rollup_top_1m, ranks, keeps the top and deletes exactly the candidates it read. No scan of raw
-- flows is needed any more; rollup_dirty stays for rebuilding minutes from raw flows
-- (`myason maintain --rebuild`, and the marks earlier migrations left).
CREATE TABLE IF NOT EXISTS rollup_cand (
    bucket      timestamptz NOT NULL,
    agent       text        NOT NULL,
    dimension   text        NOT NULL,
    key         text        NOT NULL,
    bytes       bigint      NOT NULL,
    packets     bigint      NOT NULL,
    flows       bigint      NOT NULL
);
CREATE INDEX IF NOT EXISTS rollup_cand_bucket_idx ON rollup_cand (bucket);
-- Rows live for a minute or two: vacuum it often so the churn does not bloat it.
ALTER TABLE rollup_cand SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
