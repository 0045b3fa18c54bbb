-- Issue 15: event search pages newest first by keyset on (detecttime, id) (myason.store.query.events_sql),
-- so the time index carries the id: a page is one backward index scan from its cursor, whatever
-- its depth, and retention deletes the oldest events through the same index. Same name as
-- before: a database holding the old one-column index gets this one instead.
DROP INDEX IF EXISTS events_detecttime_idx;
CREATE INDEX events_detecttime_idx ON events (detecttime, id);
-- The agent filter (an IDEA Node name), as category, source_ip and target_ip already have.
CREATE INDEX IF NOT EXISTS events_node_name_idx ON events USING gin (node_name);
