"""Several app hosts behind the real nginx: one is killed outright under load, and clients barely notice.

Two gunicorn servers (two "app hosts") on one test database behind Debian's nginx with deploy/nginx.conf.
Several threads send POST /identify, each linking new emails onto a customer of its own; once both
servers have answered, every process of one server is killed with SIGKILL, as when a host dies, and
the load goes on. Clients must see only 200, or a 502/503 (or an answer cut off after its header) for
a request that was in flight at the kill; every request that got a 200 must be in the table, on its
thread's customer.
"""

import contextlib
import http.client
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest
from helpers import all_contacts
from servers import HOST, free_port, post_json, start_gunicorn, start_nginx, stop

pytestmark = pytest.mark.slow

THREADS = 4
BEFORE_KILL = 40  # answers (from both servers) before the kill
AFTER_KILL = 120  # answers after it
# What a request in flight at the kill may get: nginx's 502 or the app's 503, or, when the dead server
# had sent the answer's header but not its body, a connection closed mid-answer (status 0): nginx has
# passed that header on and can no longer answer 502 or try another server.
FAILURES = {502, 503, 0}


@dataclass
class Sent:
    """One request of the load and what came of it (status 0: the connection to nginx failed)."""

    thread: int
    email: str
    started: float
    ended: float = 0.0
    status: int = 0
    body: dict = field(default_factory=dict)
    error: str = ""


@pytest.fixture
def two_app_hosts(database_url, tmp_path):
    """Two gunicorn servers, 2 workers each, on the test's database; yields [(process, port), ...]."""
    settings = {"DATABASE_URL": database_url, "WEB_CONCURRENCY": 2, "TRUSTED_PROXY_HOPS": 1}
    hosts = []
    try:
        for _ in range(2):
            port = free_port()
            hosts.append((start_gunicorn(tmp_path, port, **settings)[0], port))
        yield hosts
    finally:
        for process, _ in hosts:
            stop(process)


@pytest.fixture
def nginx_over(two_app_hosts, tmp_path):
    """nginx with deploy/nginx.conf over both servers; yields (port, prefix)."""
    prefix = Path(tempfile.mkdtemp(prefix="identity-nginx-"))
    prefix.chmod(0o755)  # nginx's workers run as nobody and must enter it
    process, port = start_nginx(prefix, tmp_path / "nginx.log", [port for _, port in two_app_hosts])
    try:
        yield port, prefix
    finally:
        stop(process)
        shutil.rmtree(prefix)


def kill_host(process):
    """SIGKILL to a gunicorn master and every one of its workers at once, as when its host dies."""
    workers = [
        int(path.parent.name) for path in Path("/proc").glob("[0-9]*/stat") if parent(path) == process.pid
    ]
    for pid in [*workers, process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def parent(stat_path):
    """The parent pid in a /proc/<pid>/stat file, or None once the process is gone."""
    try:
        return int(stat_path.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Load:
    """THREADS clients, each linking new emails onto its own customer through nginx until told to stop."""

    def __init__(self, port):
        self.port, self.sent, self.lock, self.stopping = port, [], threading.Lock(), threading.Event()

    def client(self, thread):
        """Send requests one after another; every one shares the thread's phone number."""
        number = 0
        while not self.stopping.is_set():
            number += 1
            sent = Sent(thread, f"t{thread}-{number}@kill.test", time.monotonic())
            payload = {"email": sent.email, "phoneNumber": f"555000{thread}"}
            try:
                sent.status, _, sent.body = post_json(self.port, payload, timeout=30)
            except (OSError, http.client.HTTPException) as error:
                sent.error = repr(error)
            sent.ended = time.monotonic()
            with self.lock:
                self.sent.append(sent)

    def answered(self):
        """How many requests have been answered so far."""
        with self.lock:
            return len(self.sent)

    def wait_for(self, count):
        """Block until count requests have been answered."""
        deadline = time.monotonic() + 120
        while self.answered() < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.answered() >= count, "the load stalled"


def upstreams(prefix):
    """The app host addresses nginx logged for each request, "a, b" where it retried on b."""
    lines = (prefix / "access.log").read_text().splitlines()
    return [json.loads(line)["upstream"] for line in lines]


def customers_by_email(database_url):
    """{email: its customer's primary id} of every live contact, read straight from the table."""
    with contextlib.closing(psycopg2.connect(database_url)) as conn:
        rows = all_contacts(conn)
    return {row["email"]: row["linked_id"] or row["id"] for row in rows if row["deleted_at"] is None}


def run_load_through_a_kill(port, victim):
    """Load from THREADS clients, the victim killed after BEFORE_KILL answers; returns (sent, kill)."""
    load = Load(port)
    threads = [threading.Thread(target=load.client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        load.wait_for(BEFORE_KILL)
        kill_started = time.monotonic()
        kill_host(victim)
        kill = (kill_started, time.monotonic())
        load.wait_for(BEFORE_KILL + AFTER_KILL)
    finally:
        load.stopping.set()
        for thread in threads:
            thread.join()
    return load.sent, kill


def test_an_app_host_killed_under_load_costs_at_most_the_requests_in_flight(
    two_app_hosts, nginx_over, database_url
):
    port, prefix = nginx_over
    (victim, victim_port), (_, survivor_port) = two_app_hosts
    # Each thread's customer exists before the load, so every later request links onto it.
    for thread in range(THREADS):
        assert post_json(port, {"phoneNumber": f"555000{thread}"})[0] == 200
    sent, (kill_started, kill_ended) = run_load_through_a_kill(port, victim)

    failed = [answer for answer in sent if answer.status != 200]
    assert {answer.status for answer in failed} <= FAILURES, failed
    assert all(answer.error.startswith("IncompleteRead") for answer in failed if answer.status == 0), failed
    in_flight = [answer for answer in failed if answer.started <= kill_ended and answer.ended >= kill_started]
    assert failed == in_flight, f"only requests in flight at the kill may fail: {failed}"
    assert len(failed) <= THREADS
    # Both servers served before the kill; after it, the survivor alone.
    served = upstreams(prefix)
    assert {f"{HOST}:{victim_port}", f"{HOST}:{survivor_port}"} <= set(served[:BEFORE_KILL])
    # nginx tries the dead one again after fail_timeout, then passes the request on: "victim, survivor".
    assert served[-1].endswith(f"{HOST}:{survivor_port}")

    customers = customers_by_email(database_url)
    for answer in sent:
        if answer.status == 200:
            primary = answer.body["contact"]["primaryContatctId"]
            assert customers.get(answer.email) == primary, answer
