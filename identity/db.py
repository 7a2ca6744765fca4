"""Database connections: a small pool per worker process, one connection per request on `g`."""

import contextlib

import psycopg2
from flask import current_app, g

from identity.pool import ConnectionPool
from identity.retrying import retrying


def connect_kwargs(config):
    """Connection settings that keep a stuck database from holding a checkout."""
    timeout_ms = config["DB_STATEMENT_TIMEOUT_MS"]
    return {
        "connect_timeout": config["DB_CONNECT_TIMEOUT"],
        "application_name": "identity",
        "options": f"-c statement_timeout={timeout_ms} -c idle_in_transaction_session_timeout={timeout_ms}",
    }


def init_app(app):
    """Give the app its pool (connections open lazily, so forking workers is safe) and teardown."""
    config = app.config
    app.extensions["identity_pool"] = ConnectionPool(
        config["DATABASE_URL"], config["DB_POOL_SIZE"], **connect_kwargs(config)
    )
    app.teardown_appcontext(release_connection)


def pool():
    """This app's connection pool."""
    return current_app.extensions["identity_pool"]


def get_connection():
    """The connection of the current request, taken from the pool on first use."""
    if "db" not in g:
        g.db = pool().getconn()
        # Every unit of work is one statement, which PostgreSQL runs as its own transaction;
        # autocommit spares the round trips psycopg2 would spend on BEGIN and on COMMIT.
        g.db.autocommit = True
    return g.db


def release_connection(_exc=None):
    """Hand the request's connection back, clean; a broken one is closed instead."""
    conn = g.pop("db", None)
    if conn is None:
        return
    with contextlib.suppress(psycopg2.Error):  # a broken connection is closed just below
        conn.rollback()  # no-op unless a transaction was left open
    pool().putconn(conn, close=bool(conn.closed))


def connection_lost():
    """Whether the request holds a connection the server has dropped."""
    conn = g.get("db")
    return conn is not None and bool(conn.closed)


def run(work, *args):
    """Run idempotent work(conn, *args) in a transaction, retried on conflicts.

    A pooled connection may have died while idle (the server restarted). Then the work runs once
    more on a fresh connection: safe because every unit of work here is idempotent.
    """
    try:
        return retrying(get_connection(), work, *args)
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        if not connection_lost():
            raise
        release_connection()
        return retrying(get_connection(), work, *args)
