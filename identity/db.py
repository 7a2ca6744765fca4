"""Database connections: a small pool per worker process, one connection per request on `g`."""

import contextlib

import psycopg2
from flask import current_app, g
from psycopg2 import errorcodes

from identity.pool import ConnectionPool
from identity.retrying import retrying

# SQLSTATEs after which a connection is of no more use, though it may still look open: its server
# became a standby or read-only (a failover or switchover demoted it), or it is shutting down or not
# yet accepting. Class 08, connection exceptions, counts too (see unusable()).
SERVER_UNUSABLE = frozenset(
    {
        errorcodes.READ_ONLY_SQL_TRANSACTION,
        errorcodes.ADMIN_SHUTDOWN,
        errorcodes.CRASH_SHUTDOWN,
        errorcodes.CANNOT_CONNECT_NOW,
    }
)


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


def unusable(error):
    """Whether error leaves the request's connection unfit for writes: dropped, or its server no primary."""
    code = getattr(error, "pgcode", None) or ""
    server_left = code in SERVER_UNUSABLE or code.startswith("08")
    return g.get("db") is not None and (connection_lost() or server_left)


def drop_connection():
    """Close the request's connection, so the next one is opened afresh to whichever host is primary."""
    g.db.close()
    release_connection()


def run(work, *args):
    """Run idempotent work(conn, *args) in a transaction, retried on conflicts.

    A connection may be unusable: it died while idle (the server restarted), or its server is no longer
    the primary (a failover). Then it is dropped and the work runs once more on a fresh connection,
    which libpq opens to the host of DATABASE_URL that takes writes: safe because every unit of work
    here is idempotent. Should that fail too, its connection is dropped as well and the error's handler
    answers 503 (identity/errors.py), so no request waits out a failover.
    """
    for attempt in (1, 2):
        try:
            return retrying(get_connection(), work, *args)
        except psycopg2.Error as error:
            if not unusable(error):
                raise
            drop_connection()
            if attempt == 2:
                raise
