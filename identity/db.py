"""Database connections: a small pool per worker process, one connection per request on `g`."""

import contextlib

import psycopg2
from flask import current_app, g
from psycopg2 import errorcodes, extensions

from identity.pool import ConnectionPool
from identity.queries import QUERIES
from identity.retrying import retrying

# The pool of DATABASE_READ_URL's server, there only when it is set.
READ_POOL = "identity_read_pool"


class TimedCursor(extensions.cursor):
    """A cursor that sends its connection's SET LOCAL timeouts in front of every statement."""

    def execute(self, query, vars=None):
        """Run query under the timeouts, in one query string: one round trip, one transaction."""
        connection = self.connection
        timeouts = connection.autocommit_timeouts if connection.autocommit else connection.local_timeouts
        return super().execute(timeouts + self.mogrify(query, vars))


def timed_connection(statement_timeout_ms):
    """A connection class whose statements each run under timeouts of statement_timeout_ms.

    The timeouts are SET LOCAL in the statement's own transaction (sql/timeouts.sql says why), so
    they hold through PgBouncer in transaction pooling and leave nothing on the server connection.
    """

    class TimedConnection(extensions.connection):
        """A connection whose cursors are TimedCursors, its timeouts rendered once."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            params = {"statement_timeout_ms": statement_timeout_ms}
            with self.cursor() as cur:
                statement = cur.mogrify(QUERIES["local_statement_timeout"], params) + b"\n"
                idle = cur.mogrify(QUERIES["local_idle_timeout"], params) + b"\n"
            # Without autocommit a transaction may be idle between statements; with it, never.
            self.autocommit_timeouts = statement
            self.local_timeouts = statement + idle
            self.cursor_factory = TimedCursor

    return TimedConnection


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
    """Connection settings that keep a stuck database from holding a checkout.

    Only startup parameters PgBouncer passes on: no `options`, which it refuses.
    """
    return {
        "connect_timeout": config["DB_CONNECT_TIMEOUT"],
        "application_name": "identity",
        "connection_factory": timed_connection(config["DB_STATEMENT_TIMEOUT_MS"]),
    }


def init_app(app):
    """Give the app its pools (connections open lazily, so forking workers is safe) and teardown."""
    config = app.config
    app.extensions["identity_pool"] = ConnectionPool(
        config["DATABASE_URL"], config["DB_POOL_SIZE"], **connect_kwargs(config)
    )
    app.teardown_appcontext(release_connection)
    if config["DATABASE_READ_URL"]:
        app.extensions[READ_POOL] = ConnectionPool(
            config["DATABASE_READ_URL"], config["DB_POOL_SIZE"], **connect_kwargs(config)
        )
        # Only then can a request hold a read connection: no hook to run on every request otherwise.
        app.teardown_appcontext(release_read_connection)


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


def read(work, *args):
    """Run read-only work(conn, *args) on DATABASE_READ_URL's server when it is set, else as run() does.

    A replica lags the primary (README, "Reads from a replica"): only lookups that may show a
    moment-old customer come here, never a write nor a read that a write depends on.
    """
    if READ_POOL not in current_app.extensions:
        return run(work, *args)
    try:
        return retrying(read_connection(), work, *args)
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        if not g.read_db.closed:
            raise
        release_read_connection()  # died while idle: once more on a fresh one, as run() does
        return retrying(read_connection(), work, *args)


def read_connection():
    """The request's connection to the read server, taken from its pool on first use."""
    if "read_db" not in g:
        g.read_db = current_app.extensions[READ_POOL].getconn()
        g.read_db.autocommit = True
    return g.read_db


def release_read_connection(_exc=None):
    """Hand the request's read connection back; a broken one is closed instead."""
    conn = g.pop("read_db", None)
    if conn is not None:
        current_app.extensions[READ_POOL].putconn(conn, close=bool(conn.closed))
