"""A primary that goes away or turns read-only, without a cluster: several hosts, one dead; read-only.

The Patroni cluster's own failover and switchover are in tests/test_cluster.py.
"""

import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from conftest import make_app
from helpers import all_contacts, identify
from identity.settings import BadSetting
from servers import free_port


def two_hosts(database_url, dead_port, **settings):
    """database_url with a host where nothing listens named before the real one."""
    real = parse_dsn(database_url)
    host, port = real.get("host", "127.0.0.1"), real.get("port", "5432")
    return make_dsn(database_url, host=f"127.0.0.1,{host}", port=f"{dead_port},{port}", **settings)


def set_read_only(conn, on):
    """Make new sessions of the test's database read-only (on) or writable again, as a standby's are."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        name = cur.fetchone()[0]
        setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
        cur.execute(f'ALTER DATABASE "{name}" {setting}')


@pytest.fixture
def closing():
    """Apps made by the test, whose pools are closed before its database is dropped."""
    apps = []
    yield apps
    for app in apps:
        app.extensions["identity_pool"].closeall()


def test_several_hosts_with_the_first_dead_reach_the_live_one(database_url, conn, closing):
    url = two_hosts(database_url, free_port(), target_session_attrs="read-write")
    closing.append(app := make_app(url))
    assert identify(app.test_client(), "a@x.io", "1")[0] == 200
    assert [row["email"] for row in all_contacts(conn)] == ["a@x.io"]


def test_migrate_works_through_several_hosts(database_url, closing):
    url = two_hosts(database_url, free_port(), target_session_attrs="read-write")
    closing.append(app := make_app(url))
    result = app.test_cli_runner().invoke(args=["migrate"])
    assert (result.exit_code, result.output) == (0, "database is up to date\n")


def test_a_read_only_database_is_a_503_until_it_takes_writes_again(database_url, conn, closing):
    closing.append(app := make_app(database_url))
    client = app.test_client()
    set_read_only(conn, True)
    response = client.post("/identify", json={"email": "a@x.io"})
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    assert response.get_json()["error"]["code"] == "database_unavailable"
    set_read_only(conn, False)
    assert identify(client, "a@x.io", "1")[0] == 200
    assert len(all_contacts(conn)) == 1


def test_a_read_only_server_is_refused_at_connect_when_writes_are_asked_for(database_url, conn, closing):
    closing.append(app := make_app(make_dsn(database_url, target_session_attrs="read-write")))
    set_read_only(conn, True)
    assert identify(app.test_client(), "a@x.io", "1")[0] == 503
    set_read_only(conn, False)
    assert identify(app.test_client(), "a@x.io", "1")[0] == 200


def test_a_pooled_connection_whose_server_turned_read_only_is_dropped_and_replaced(app, client, conn):
    assert identify(client, "a@x.io", "1")[0] == 200
    pooled = app.extensions["identity_pool"].getconn()
    # This session now behaves as one on a server demoted under it; new sessions are still writable.
    with pooled.cursor() as cur:
        cur.execute("SET default_transaction_read_only = on")
    app.extensions["identity_pool"].putconn(pooled)
    assert identify(client, "b@x.io", "2")[0] == 200
    assert pooled.closed
    assert [row["email"] for row in all_contacts(conn)] == ["a@x.io", "b@x.io"]


def test_a_connection_ended_by_a_shutdown_is_replaced(app, client, conn):
    assert identify(client, "a@x.io", "1")[0] == 200
    pooled = app.extensions["identity_pool"].getconn()
    app.extensions["identity_pool"].putconn(pooled)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pooled.info.backend_pid,))
    assert identify(client, "b@x.io", "2")[0] == 200
    assert pooled.closed


@pytest.mark.parametrize(
    "url, complaint",
    [
        ("postgresql://a:1,b:2/identity", "target_session_attrs=read-write"),
        ("postgresql://a:1,b:2/identity?target_session_attrs=any", "target_session_attrs=read-write"),
        ("host=a,b,c port=1,2 dbname=identity target_session_attrs=read-write", "3 hosts but 2 ports"),
        ("postgresql://a/identity?target_session_attrs=writable", "target_session_attrs='writable'"),
    ],
    ids=["no attrs", "any", "ports", "unknown attrs"],
)
def test_a_database_url_that_may_miss_the_primary_stops_the_start(url, complaint):
    with pytest.raises(BadSetting, match=complaint):
        make_app(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@a:5441,b:5442,c:5443/identity?target_session_attrs=read-write",
        "host=a,b port=5432 dbname=identity target_session_attrs=primary",
        "postgresql://a,b/identity?target_session_attrs=read-write",
    ],
)
def test_several_hosts_that_lead_to_the_primary_are_accepted(url):
    assert make_app(url).config["DATABASE_URL"] == url
