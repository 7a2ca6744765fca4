-- lock_migrations --
-- Serialise migrators: two processes starting at once must not apply a file twice.
SELECT pg_advisory_xact_lock(hashtextextended('identity migrations', 0));

-- create_migration_table --
CREATE TABLE IF NOT EXISTS schema_migration (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- applied_migrations --
SELECT version FROM schema_migration ORDER BY version;

-- record_migration --
INSERT INTO schema_migration (version) VALUES (%(version)s);

-- database_exists --
SELECT EXISTS (SELECT FROM pg_database WHERE datname = %(name)s);

-- create_database --
-- The name is filled in with psycopg2.sql.Identifier: identifiers cannot be parameters.
CREATE DATABASE {name};
