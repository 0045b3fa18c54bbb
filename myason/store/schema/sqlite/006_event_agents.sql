-- The agents (probes) whose flows made an event (`_Myason.Agents` of the IDEA document), a JSON
-- array as the other list columns, for the /events agent filter. Events stored before keep an
-- empty array (they are found by their Node name as before).
ALTER TABLE events ADD COLUMN agents TEXT NOT NULL DEFAULT '[]';
