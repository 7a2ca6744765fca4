"""SIGTERM stops gunicorn gracefully: a request in flight finishes, no new one is served.

The request in flight is real: a merging POST /identify waits in PostgreSQL for the row lock of
its customer's primary, which the test holds in a transaction of its own until it lets go.
"""

import ast
import contextlib
import http.client
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
from helpers import poll, waiting_on_a_lock
from servers import REPO_ROOT, free_port, listening, post_json, send, start_gunicorn, stop

WORKERS = 4
# How long the request stays in flight after SIGTERM; well under the app's 5 s statement timeout.
HOLD_SECONDS = 1.5
DOC = "emmett@hillvalley.edu"
MERGED = {
    "primaryContatctId": 1,
    "emails": [DOC],
    "phoneNumbers": ["1955", "1985"],
    "secondaryContactIds": [2],
}


def gunicorn_setting(name):
    """A setting's value in gunicorn.conf.py, read without running the file (it has side effects)."""
    module = ast.parse((REPO_ROOT / "gunicorn.conf.py").read_text())
    values = [
        ast.literal_eval(node.value)
        for node in module.body
        if isinstance(node, ast.Assign) and [target.id for target in node.targets] == [name]
    ]
    assert len(values) == 1, f"gunicorn.conf.py should set {name} once"
    return values[0]


def workers(master):
    """How many child processes the master has."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended while we looked
            # The parent's pid is the second field after the command name, which may hold spaces.
            count += int(stat.read_text().rpartition(")")[2].split()[1]) == master.pid
    return count


def late_request(port):
    """A request sent after SIGTERM: the error it met, or its status if it was answered."""
    try:
        return send(port, "GET", "/healthz", timeout=30)[0]
    except (OSError, http.client.HTTPException) as error:
        return error


@pytest.fixture
def locked_primary(server, database_url):
    """Hold the row lock of the server's customer (contact 1); calling the result lets go."""
    blocker = psycopg2.connect(database_url)
    with blocker.cursor() as cur:
        cur.execute("SELECT id FROM contact WHERE id = 1 FOR UPDATE")
        assert cur.rowcount == 1
    yield blocker.rollback
    blocker.close()


@pytest.fixture
def server(database_url, tmp_path):
    """A real gunicorn as production starts it, with one customer (contact 1) already made."""
    port = free_port()
    process, _ = start_gunicorn(tmp_path, port, DATABASE_URL=database_url, WEB_CONCURRENCY=WORKERS)
    try:
        assert post_json(port, {"email": DOC, "phoneNumber": "1955"})[0] == 200
        yield process, port
    finally:
        stop(process)


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish_and_serves_no_new_one(server, locked_primary, conn):
    process, port = server
    graceful_timeout = gunicorn_setting("graceful_timeout")
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_flight = pool.submit(post_json, port, {"email": DOC, "phoneNumber": "1985"}, timeout=30)
        poll(lambda: waiting_on_a_lock(conn), 10, "the merging request did not wait for the lock")

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # The idle workers leave at once; the busy one stays, and takes no new connection.
        poll(lambda: workers(process) == 1, 10, "the idle workers did not exit")
        late = pool.submit(late_request, port)
        time.sleep(HOLD_SECONDS)
        assert waiting_on_a_lock(conn) and process.poll() is None, "the request in flight was cut off"

        locked_primary()
        status, _, body = in_flight.result(timeout=30)
        assert (status, body) == (200, {"contact": MERGED})
        # It was queued on the listening socket the busy worker still held, and reset as it exited.
        assert isinstance(late.result(timeout=30), ConnectionError), "a request sent after SIGTERM was served"

    exit_code = process.wait(timeout=graceful_timeout)
    assert exit_code == 0
    assert time.monotonic() - signalled < graceful_timeout
    assert not listening(port)
