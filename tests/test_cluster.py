"""A Patroni cluster (deploy/cluster.sh) under checkout load through gunicorn: a switchover, then a failover.

The cluster runs on free loopback ports for this module; the tests run in file order, the switchover
first, as the failover leaves a member rejoining. Each test drives the checkout mix from several
threads through a real gunicorn whose DATABASE_URL names all three nodes, changes the primary, and
then holds every answer against the final table on the new primary with the invariants and the
reference model of tests/test_concurrency.py. FAILOVER_TIMINGS=<file> appends each test's figures to
that file as a JSON line (deploy/cluster-timing.sh runs the module several times and prints medians).
"""

import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import make_dsn
from servers import HOST, REPO_ROOT, free_port, start_gunicorn, stop
from test_concurrency import (
    assert_answer_fits,
    assert_table_serialisable,
    components,
    identifiers,
    live_contacts,
)

from identity.migrations import setup_database

pytestmark = pytest.mark.slow

CLUSTER_SCRIPT = REPO_ROOT / "deploy" / "cluster.sh"
NODES = 3
THREADS = 8
CUSTOMERS = 300
# The stated requirement: writes are taken again within 15 s of the new primary's promotion.
RECOVERY_SECONDS = 15
# Load before the change of primary, and after the service took writes again.
STEADY_SECONDS = 3
CHANGE_SECONDS = 60


class Cluster:
    """deploy/cluster.sh's cluster in a temporary directory, on free ports."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="identity-cluster-"))
        self.pg_ports = [free_port() for _ in range(NODES)]
        self.api_ports = [free_port() for _ in range(NODES)]
        self.env = {
            **os.environ,
            "CLUSTER_DIR": str(self.dir),
            "CLUSTER_ETCD_PORTS": f"{free_port()} {free_port()}",
            "CLUSTER_PG_PORTS": " ".join(map(str, self.pg_ports)),
            "CLUSTER_API_PORTS": " ".join(map(str, self.api_ports)),
        }

    def script(self, *args):
        """Run deploy/cluster.sh with args; its stdout."""
        done = subprocess.run([CLUSTER_SCRIPT, *args], env=self.env, capture_output=True, text=True)
        assert done.returncode == 0, f"cluster.sh {args} failed:\n{done.stderr}"
        return done.stdout.strip()

    def leader(self):
        """The index of the node whose Patroni says it is the primary, or None."""
        for index, port in enumerate(self.api_ports):
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/primary", timeout=1) as answer:
                    if answer.status == 200:
                        return index
            except OSError:  # 503 (not the primary) and refused connections alike
                continue
        return None

    def postmaster_pid(self, index):
        """The pid of a node's postmaster, from its data directory."""
        return int((self.dir / f"node{index + 1}" / "data" / "postmaster.pid").read_text().split()[0])


@pytest.fixture(scope="module")
def cluster():
    """A started cluster, stopped and removed after the module's tests."""
    cluster = Cluster()
    try:
        cluster.url = cluster.script("start")
        yield cluster
    finally:
        subprocess.run([CLUSTER_SCRIPT, "stop"], env=cluster.env)
        shutil.rmtree(cluster.dir, ignore_errors=True)


@pytest.fixture
def healthy_cluster(cluster):
    """The cluster with a leader and every member streaming again (start waits for that)."""
    cluster.script("start")
    return cluster


@pytest.fixture
def cluster_database(healthy_cluster, request):
    """The URL of a migrated database of this test's own on the cluster, all three hosts named."""
    url = make_dsn(healthy_cluster.url, dbname=f"identity_{request.node.name[-40:]}")
    setup_database(url)
    for port in healthy_cluster.pg_ports:
        wait_for_database(make_dsn(url, host=HOST, port=port, target_session_attrs="any"))
    return url


def wait_for_database(url):
    """Block until the database url names exists on its one host, as a replica replays its creation.

    libpq tries the next host only when it cannot reach one, not when a standby that has not yet
    replayed the CREATE DATABASE says there is no such database.
    """
    deadline = time.monotonic() + CHANGE_SECONDS
    while True:
        try:
            return psycopg2.connect(url).close()
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def service(cluster_database, tmp_path):
    """A real gunicorn with 4 workers on the cluster; yields its port."""
    port = free_port()
    process, _ = start_gunicorn(tmp_path, port, DATABASE_URL=cluster_database, WEB_CONCURRENCY=4)
    try:
        yield port
    finally:
        stop(process)


# The checkout mix of tests/bench/workloads.lua: mostly returning customers, some new ones, new
# values for known customers, and now and then a merge of two.


def checkout(rng, fresh):
    """One checkout's (email, phone number)."""
    roll, i = rng.randrange(100), rng.randrange(CUSTOMERS)
    email, phone_number = f"c{i}@cluster.test", f"10000{i:04d}"
    if roll < 70:
        return email, phone_number
    if roll < 80:
        return (email, None) if roll < 75 else (None, phone_number)
    if roll < 92:
        return f"n{fresh}@cluster.test", f"9{fresh:08d}"
    if roll < 98:
        return email, f"9{fresh:08d}"
    return email, f"10000{rng.randrange(CUSTOMERS):04d}"


def post(port, request):
    """POST /identify; (status, body, sent, answered) with monotonic times.

    A broken connection or an answer that is not JSON is kept as its exception in place of the status,
    so that the checks see it.
    """
    sent = time.monotonic()
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        body = json.dumps({"email": request[0], "phoneNumber": request[1]})
        connection.request("POST", "/identify", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), sent, time.monotonic()
    except (OSError, http.client.HTTPException, ValueError) as error:
        return repr(error), None, sent, time.monotonic()
    finally:
        connection.close()


class Load:
    """Threads sending the checkout mix until stopped; every answer kept with its times."""

    def __init__(self, port):
        self.port, self.results, self.done = port, [], threading.Event()
        self.threads = [threading.Thread(target=self.work, args=(n,)) for n in range(THREADS)]

    def work(self, n):
        rng, count = random.Random(n), 0
        while not self.done.is_set():
            count += 1
            request = checkout(rng, n * 10**6 + count)
            self.results.append((request, *post(self.port, request)))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for thread in self.threads:
            thread.join()


def wait_for_new_leader(cluster, old):
    """Block until a node other than old is the primary; its index and the moment it was seen."""
    deadline = time.monotonic() + CHANGE_SECONDS
    while time.monotonic() < deadline:
        leader = cluster.leader()
        if leader not in (None, old):
            return leader, time.monotonic()
        time.sleep(0.1)
    pytest.fail(f"no new primary within {CHANGE_SECONDS} s:\n{cluster.script('list')}")


def wait_for_writes(load, since):
    """Block until a request sent after since was answered 200; when that answer came."""
    deadline = time.monotonic() + CHANGE_SECONDS
    while time.monotonic() < deadline:
        taken = [done for _, status, _, sent, done in list(load.results) if status == 200 and sent > since]
        if taken:
            return min(taken)
        time.sleep(0.1)
    pytest.fail(f"no write taken within {CHANGE_SECONDS} s of the promotion")


def change_primary(cluster, port, act):
    """Run the load, act(old leader), wait for the new primary and for writes; return the figures."""
    old = cluster.leader()
    with Load(port) as load:
        time.sleep(STEADY_SECONDS)
        acted = time.monotonic()
        act(old)
        new, promoted = wait_for_new_leader(cluster, old)
        served = wait_for_writes(load, promoted)
        time.sleep(STEADY_SECONDS)
    return load.results, {"old": old, "new": new, "acted": acted, "promoted": promoted, "served": served}


def owners(rows_by_id):
    """{identifier: the id of its customer's primary} for every value in the table."""
    owner = {}
    for row in rows_by_id.values():
        for value in identifiers(row["email"], row["phone_number"]):
            owner[value] = row["linked_id"] or row["id"]
    return owner


def effective(results, rows_by_id):
    """The requests that took effect: those answered 200, and refused ones whose values one customer holds.

    A refused request may have committed before its answer was lost in the change of primary. Counting
    one that did not commit but whose values one customer holds anyway changes no component.
    """
    owner = owners(rows_by_id)

    def took_effect(request):
        found = {owner.get(value) for value in identifiers(*request)}
        return None not in found and len(found) == 1

    return [request for request, status, *_ in results if status == 200 or took_effect(request)]


def assert_nothing_lost(database_url, results):
    """Every answer 200 or 503; every 200 in the table on the new primary; every invariant holds."""
    statuses = {status for _, status, *_ in results}
    assert statuses <= {200, 503}, f"answers other than 200 and 503: {statuses}"
    conn = psycopg2.connect(database_url)
    try:
        rows_by_id = live_contacts(conn)
    finally:
        conn.close()
    requests = effective(results, rows_by_id)
    assert_table_serialisable(rows_by_id, requests)
    component_of = components(requests)
    for request, status, body, *_ in results:
        if status == 200:
            assert_answer_fits(request, body["contact"], rows_by_id, component_of)


def refused_window(results, figures):
    """The figures, with when writes were refused and for how long, relative to the act."""
    refused = [(sent, answered) for _, status, _, sent, answered in results if status == 503]
    acted = figures["acted"]
    window = max(a for _, a in refused) - min(s for s, _ in refused) if refused else 0.0
    return {
        "refused": len(refused),
        "answered": len(results),
        "refused_seconds": round(window, 2),
        "promotion_after_act": round(figures["promoted"] - acted, 2),
        "served_after_promotion": round(figures["served"] - figures["promoted"], 2),
    }


def record(name, timings):
    """Print the figures, and append them to FAILOVER_TIMINGS when set."""
    print(f"{name}: {timings}")
    if os.environ.get("FAILOVER_TIMINGS"):
        with open(os.environ["FAILOVER_TIMINGS"], "a") as out:
            out.write(json.dumps({"test": name, **timings}) + "\n")


def assert_served_again_in_time(results, figures):
    """Writes were taken within RECOVERY_SECONDS of the promotion, and every request sent since was.

    Since: after the first answer that took a write, as a request sent earlier may still have queued
    for a worker, and tried the hosts, before the promotion was complete.
    """
    assert figures["served"] - figures["promoted"] <= RECOVERY_SECONDS
    late = [(request, status) for request, status, _, sent, _ in results if sent >= figures["served"]]
    assert late and all(status == 200 for _, status in late), [r for r in late if r[1] != 200][:5]


def switchover(cluster):
    """act: a planned switchover to the synchronous standby, as an operator starts it."""

    def act(_old):
        cluster.script("switchover")

    return act


def kill_postmaster(cluster):
    """act: SIGKILL the leader's postmaster."""

    def act(old):
        os.kill(cluster.postmaster_pid(old), signal.SIGKILL)

    return act


def test_a_switchover_refuses_writes_briefly_and_loses_none(cluster, service, cluster_database):
    results, figures = change_primary(cluster, service, switchover(cluster))
    record("switchover", refused_window(results, figures))
    assert_served_again_in_time(results, figures)
    assert_nothing_lost(cluster_database, results)


def test_a_killed_primary_fails_over_without_losing_an_acknowledged_write(cluster, service, cluster_database):
    results, figures = change_primary(cluster, service, kill_postmaster(cluster))
    record("failover", refused_window(results, figures))
    assert_served_again_in_time(results, figures)
    assert_nothing_lost(cluster_database, results)
