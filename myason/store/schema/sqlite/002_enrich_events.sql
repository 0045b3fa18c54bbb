-- Issue 4: the enrichment columns (myason.enrich.ENRICH_FIELDS) on flows, and IDEA events.
-- Defaults ('' and 0) are what enrichment stores for "unknown", so plain rows fit as they are.
ALTER TABLE flows ADD COLUMN direction   TEXT    NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN service     TEXT    NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN src_country TEXT    NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN dst_country TEXT    NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN src_asn     INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN dst_asn     INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN src_as_org  TEXT    NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN dst_as_org  TEXT    NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN src_host    TEXT    NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN dst_host    TEXT    NOT NULL DEFAULT '';

-- Mentat's event storage, flattened for SQLite: the list columns hold JSON arrays (searched
-- with json_each), detecttime is Unix seconds (UTC), event is the full IDEA JSON.
CREATE TABLE events (
    id          TEXT    PRIMARY KEY,
    detecttime  REAL    NOT NULL,
    category    TEXT    NOT NULL,
    source_ip   TEXT    NOT NULL,
    target_ip   TEXT    NOT NULL,
    source_port TEXT    NOT NULL,
    target_port TEXT    NOT NULL,
    protocol    TEXT    NOT NULL,
    node_name   TEXT    NOT NULL,
    description TEXT    NOT NULL,
    event       TEXT    NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX events_detecttime_idx ON events (detecttime);
