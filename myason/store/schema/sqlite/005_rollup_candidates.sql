-- Incremental rollups: the PostgreSQL migration 006's twin (see there and docs/rollups.md).
CREATE TABLE rollup_cand (
    bucket      INTEGER NOT NULL,
    agent       TEXT    NOT NULL,
    dimension   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    flows       INTEGER NOT NULL
) STRICT;
CREATE INDEX rollup_cand_bucket_idx ON rollup_cand (bucket);
