-- The agents (probes) whose flows made an event (`_Myason.Agents` of the IDEA document), for the
-- /events agent filter, which matches them or the collector's Node name. Events stored before
-- stay with an empty list (they are found by their Node name as before).
ALTER TABLE events ADD COLUMN IF NOT EXISTS agents text[] NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS events_agents_idx ON events USING gin (agents);
