"""Schema migrations: numbered SQL files, tables and versioned functions alike, applied once each."""

import psycopg2
from psycopg2 import errors, sql
from psycopg2.extensions import make_dsn, parse_dsn

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
    """Create the database that database_url names unless it exists; return its URL on the server reached."""
    conn = psycopg2.connect(database_url, dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        create_unless_exists(conn, parse_dsn(database_url)["dbname"])
        return same_server(database_url, conn)
    finally:
        conn.close()


def create_unless_exists(conn, name):
    """CREATE DATABASE name on conn's server unless it has one of that name."""
    try:
        with conn.cursor() as cur:
            cur.execute(QUERIES["database_exists"], {"name": name})
            if not cur.fetchone()[0]:
                cur.execute(sql.SQL(QUERIES["create_database"]).format(name=sql.Identifier(name)))
    except (errors.DuplicateDatabase, errors.UniqueViolation):
        # Another process created it between our check and our CREATE; racing CREATEs report
        # the clash on pg_database's unique index rather than as a duplicate database.
        pass


def same_server(database_url, conn):
    """database_url narrowed to the one host conn reached, where it names several (a cluster).

    A standby may not yet have replayed a CREATE DATABASE, and libpq, told by the first host that there
    is no such database, tries no other: so the migrations go to the primary that created it.
    """
    if "," not in parse_dsn(database_url).get("host", ""):
        return database_url
    return make_dsn(database_url, host=conn.info.host, port=conn.info.port)


def setup_database(database_url):
    """Create the database if missing and migrate it; return the migrations applied."""
    conn = psycopg2.connect(create_database(database_url))
    try:
        return migrate(conn)
    finally:
        conn.close()
