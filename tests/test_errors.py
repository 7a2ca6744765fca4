"""One JSON error shape for everything that goes wrong, and recovery from a database outage."""

import logging
import threading

import psycopg2
import pytest
from psycopg2.extensions import make_dsn

from conftest import make_app
from helpers import all_contacts, identify
from identity.retrying import MAX_ATTEMPTS, TooMuchContention, retrying
from servers import free_port
from tcp_proxy import TcpProxy

# How long a test's blocker holds its lock at most: far beyond the timeouts the tests set.
LOCK_HELD_SECONDS = 15


def test_unknown_route_is_a_json_404(client):
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_wrong_method_is_a_json_405_with_allow(client):
    response = client.get("/identify")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]
    assert response.content_type == "application/json"


def test_an_unexpected_error_is_a_json_500_logged_with_its_trace(database_url, caplog):
    app = make_app(database_url)

    @app.get("/explode")
    def explode():
        raise RuntimeError("secret internals")

    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/explode")
    assert response.status_code == 500
    assert response.get_json() == {
        "error": {"code": "internal_error", "message": "Something went wrong on our side."}
    }
    assert "secret internals" not in response.get_data(as_text=True)
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


def test_health_needs_no_database_but_readiness_does(database_url):
    app = make_app(make_dsn(database_url, port=free_port()))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    assert client.get("/readyz").get_json()["error"]["code"] == "database_unavailable"


def test_ready_when_the_database_answers(client):
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_unreachable_database_is_a_503_with_retry_after(database_url):
    app = make_app(make_dsn(database_url, port=free_port()))
    response = app.test_client().post("/identify", json={"email": "a@b.c"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "database_unavailable"


@pytest.fixture
def proxy(database_url):
    """A cuttable TCP path to the test's database."""
    tcp = TcpProxy(database_url)
    tcp.start()
    yield tcp
    tcp.stop()


def test_service_recovers_by_itself_after_an_outage(database_url, proxy, conn):
    app = make_app(make_dsn(database_url, host="127.0.0.1", port=proxy.port))
    client = app.test_client()
    assert identify(client, "a@x.io", "1")[0] == 200
    proxy.stop()
    assert identify(client, "b@x.io", "2")[0] == 503
    assert client.get("/readyz").status_code == 503
    proxy.start()
    assert client.get("/readyz").status_code == 200
    assert identify(client, "b@x.io", "2")[0] == 200
    assert [row["email"] for row in all_contacts(conn)] == ["a@x.io", "b@x.io"]
    app.extensions["identity_pool"].closeall()


@pytest.mark.pooled
def test_a_connection_the_server_dropped_is_replaced_without_an_error(app, client, conn):
    assert identify(client, "a@x.io", "1")[0] == 200
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'identity' AND datname = current_database()"
        )
        assert cur.rowcount >= 1
    assert identify(client, "a@x.io", "2")[0] == 200
    assert len(all_contacts(conn)) == 2


@pytest.mark.pooled
def test_a_request_stuck_behind_a_lock_times_out_as_a_503(database_url, service_url, conn):
    # Through PgBouncer too: the timeout is SET LOCAL in the statement's own query string, which a
    # pooler passes on as it is, where a session SET or the `options` startup parameter never arrive.
    app = make_app(service_url, DB_STATEMENT_TIMEOUT_MS=300)
    client = app.test_client()
    identify(client, "a@x.io", "1")
    blocker = psycopg2.connect(database_url)
    with blocker.cursor() as cur:
        cur.execute("SELECT id FROM contact WHERE id = 1 FOR UPDATE")
    # Should the timeout not hold, the lock goes after a while and the request answers 200, not 503:
    # the test fails rather than hangs.
    release = threading.Timer(LOCK_HELD_SECONDS, blocker.close)
    release.start()
    try:
        assert identify(client, "a@x.io", "2")[0] == 503
    finally:
        release.cancel()
        blocker.close()
    assert identify(client, "a@x.io", "2")[0] == 200
    app.extensions["identity_pool"].closeall()


def fail_with_serialization_failure(conn, failures, calls):
    """Unit of work that the database refuses `failures` times, then accepts."""
    calls.append(threading.get_ident())
    with conn.cursor() as cur:
        if len(calls) <= failures:
            cur.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"
            )
        cur.execute("SELECT 42")
        return cur.fetchone()[0]


def test_retrying_runs_the_whole_transaction_again_after_a_conflict(conn):
    conn.autocommit = False
    calls = []
    assert retrying(conn, fail_with_serialization_failure, 3, calls) == 42
    assert len(calls) == 4


def test_retrying_gives_up_after_a_bounded_number_of_attempts(conn, database_url):
    conn.autocommit = False
    calls = []
    with pytest.raises(TooMuchContention):
        retrying(conn, fail_with_serialization_failure, 100, calls)
    assert len(calls) == MAX_ATTEMPTS


def test_other_database_errors_are_not_retried(conn):
    conn.autocommit = False
    calls = []

    def bad_sql(conn):
        calls.append(1)
        with conn.cursor() as cur:
            cur.execute("SELECT no_such_column FROM contact")

    with pytest.raises(psycopg2.errors.UndefinedColumn):
        retrying(conn, bad_sql)
    assert calls == [1]
