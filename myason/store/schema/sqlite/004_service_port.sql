-- Top lists gain the dimension service_port (the port naming a flow's service whichever way it
-- went; rule in docs/api.md, "Top lists"). The maintenance computes it for new minutes; marking
-- every minute the 1m rollups hold makes the next maintenance rebuild them, and the coarse lists
-- above them, with it. Minutes whose raw flows are gone (before the retention horizon) are
-- skipped by the maintenance and keep their lists without service_port.
INSERT INTO rollup_dirty (bucket) SELECT DISTINCT bucket FROM rollup_1m;
