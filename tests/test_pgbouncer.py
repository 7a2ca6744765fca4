"""Nothing outlives a transaction on a server connection, so PgBouncer's transaction pooling is safe.

The rules, the races and the timeouts run through a real PgBouncer too (the tests marked `pooled`);
these check the session itself.
"""

import psycopg2
from psycopg2.extensions import make_dsn

from identity import repository
from identity.db import connect_kwargs
from identity.migrations import setup_database
from identity.settings import DEFAULTS

from helpers import applied_versions


def session_state(conn):
    """(statement_timeout, idle_in_transaction_session_timeout, prepared statements) of the session."""
    with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
        cur.execute(
            "SELECT current_setting('statement_timeout'),"
            " current_setting('idle_in_transaction_session_timeout'),"
            " (SELECT count(*) FROM pg_prepared_statements)"
        )
        return cur.fetchone()


def test_the_timeouts_hold_for_the_statement_and_leave_the_session_as_it_was(database_url):
    conn = psycopg2.connect(database_url, **connect_kwargs({**DEFAULTS, "DB_STATEMENT_TIMEOUT_MS": 1234}))
    conn.autocommit = True
    try:
        before = session_state(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('statement_timeout')")
            assert cur.fetchone() == ("1234ms",)
        repository.identify(conn, "a@x.io", "1")
        assert session_state(conn) == before
        assert before[0] != "1234ms" and before[2] == 0
    finally:
        conn.close()


def test_a_transaction_the_client_ends_also_gets_the_idle_timeout(database_url):
    conn = psycopg2.connect(database_url, **connect_kwargs({**DEFAULTS, "DB_STATEMENT_TIMEOUT_MS": 1234}))
    try:
        before = session_state(conn)
        conn.commit()
        timeouts = (
            "SELECT current_setting('statement_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        )
        with conn.cursor() as cur:
            cur.execute(timeouts)
            assert cur.fetchone() == ("1234ms", "1234ms")
        conn.commit()
        # In autocommit the string's transaction ends before the server waits on the client again,
        # so it can never be idle in a transaction: only the statement timeout is sent.
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(timeouts)
            assert cur.fetchone() == ("1234ms", before[1])
        assert session_state(conn) == before
    finally:
        conn.close()


def test_migrations_run_through_pgbouncer(empty_database_url, pgbouncer):
    host, port = pgbouncer
    assert setup_database(make_dsn(empty_database_url, host=host, port=port))
    assert applied_versions(empty_database_url)[0] == "0001_contact"
