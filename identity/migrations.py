"""Schema migrations: numbered SQL files, tables and versioned functions alike, applied once each."""

import psycopg2
from psycopg2 import errors, sql
from psycopg2.extensions import parse_dsn

from identity.queries import QUERIES, SQL_DIR, sql_files, stem

MIGRATIONS_DIR = SQL_DIR / "migrations"


def pending(applied):
    """The migration files not yet applied, in the order their numbers give."""
    return [path for path in sql_files(MIGRATIONS_DIR) if stem(path) not in applied]


def migrate(conn):
    """Apply the pending migrations, all in one transaction; return their names."""
    with conn.cursor() as cur:
        cur.execute(QUERIES["lock_migrations"])
        cur.execute(QUERIES["create_migration_table"])
        cur.execute(QUERIES["applied_migrations"])
        todo = pending({version for (version,) in cur.fetchall()})
        for path in todo:
            cur.execute(path.read_text())
            cur.execute(QUERIES["record_migration"], {"version": stem(path)})
    conn.commit()
    return [stem(path) for path in todo]


def create_database(database_url):
    """Create the database that database_url names unless it exists; True if it was created."""
    name = parse_dsn(database_url)["dbname"]
    conn = psycopg2.connect(database_url, dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(QUERIES["database_exists"], {"name": name})
            if cur.fetchone()[0]:
                return False
            statement = sql.SQL(QUERIES["create_database"]).format(name=sql.Identifier(name))
            cur.execute(statement)
            return True
    except (errors.DuplicateDatabase, errors.UniqueViolation):
        # Another process created it between our check and our CREATE; racing CREATEs report
        # the clash on pg_database's unique index rather than as a duplicate database.
        return False
    finally:
        conn.close()


def setup_database(database_url):
    """Create the database if missing and migrate it; return the migrations applied."""
    create_database(database_url)
    conn = psycopg2.connect(database_url)
    try:
        return migrate(conn)
    finally:
        conn.close()
