-- Issue 4: the enrichment columns (myason.enrich.ENRICH_FIELDS) on flows, and IDEA events.
-- Defaults ('' and 0) are what enrichment stores for "unknown", so plain rows fit as they are.
-- IF NOT EXISTS throughout: tests and operators may drop flows/batches/schema_migrations
-- while keeping events, and the migration must then apply again cleanly.
ALTER TABLE flows ADD COLUMN IF NOT EXISTS direction   text   NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN IF NOT EXISTS service     text   NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN IF NOT EXISTS src_country text   NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN IF NOT EXISTS dst_country text   NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN IF NOT EXISTS src_asn     bigint NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN IF NOT EXISTS dst_asn     bigint NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN IF NOT EXISTS src_as_org  text   NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN IF NOT EXISTS dst_as_org  text   NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN IF NOT EXISTS src_host    text   NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN IF NOT EXISTS dst_host    text   NOT NULL DEFAULT '';

-- Modelled on Mentat's storage (mentat-hawat's `events` table): searchable columns as arrays,
-- the full IDEA message as jsonb.
CREATE TABLE IF NOT EXISTS events (
    id          uuid        PRIMARY KEY,
    detecttime  timestamptz NOT NULL,
    category    text[]      NOT NULL,
    source_ip   inet[]      NOT NULL,
    target_ip   inet[]      NOT NULL,
    source_port integer[]   NOT NULL,
    target_port integer[]   NOT NULL,
    protocol    text[]      NOT NULL,
    node_name   text[]      NOT NULL,
    description text        NOT NULL,
    event       jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS events_detecttime_idx ON events (detecttime);
CREATE INDEX IF NOT EXISTS events_category_idx ON events USING gin (category);
CREATE INDEX IF NOT EXISTS events_source_ip_idx ON events USING gin (source_ip);
CREATE INDEX IF NOT EXISTS events_target_ip_idx ON events USING gin (target_ip);
