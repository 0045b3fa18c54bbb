-- A role that may only read (issue 12, item 15): `myason api` logs in as its own user, granted
-- myason_reader, instead of the collector's read-write role (docs/operations.md, "The API's
-- database role"). NOLOGIN: it is granted to login roles, never used to log in.
--
-- Roles belong to the whole cluster, so it is created only when missing (another database of
-- the cluster may have made it, even at this moment). A collector role without CREATEROLE
-- cannot create it: the migration then only warns, and an administrator creates it and runs
-- the grants below by hand (the same commands are in docs/operations.md).
--
-- SELECT on every table of this schema (flows, rollups, events, health, ...) and, through
-- default privileges, on every table the collector's role creates later (new migrations; the
-- day partitions need none, a read through the parent is checked on the parent). Nothing else:
-- no INSERT, UPDATE, DELETE, TRUNCATE, and no CREATE on the schema.
DO $$
DECLARE
    s text := current_schema();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'myason_reader') THEN
        BEGIN
            CREATE ROLE myason_reader NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;   -- made by another database's migration at the same moment
            WHEN insufficient_privilege THEN
                RAISE WARNING 'myason: role myason_reader is missing and % may not create roles: create it and grant it SELECT as docs/operations.md shows', current_user;
                RETURN;
        END;
    END IF;
    IF NOT has_schema_privilege('myason_reader', s, 'USAGE') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO myason_reader', s);
    END IF;
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO myason_reader', s);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO myason_reader', s);
END
$$;
