"""Instructions per POST /identify through the WSGI app, counted by callgrind, in the app and the database.

Unlike req/s, an instruction count does not depend on what else the machine is doing, so a change's
cost can be read on a busy machine. The app is built as production builds it (default settings:
JSON access log, metrics, the rate limit with memory://) on a throwaway migrated database. This
script runs itself twice under callgrind: a warm-up of WARM_UP requests, then either none or
--requests more; the difference of the two totals, divided by --requests, is one request's cost,
free of start-up and warm-up.

--workload returning (the default) posts one returning customer's values again and again;
--workload checkout cycles through the bench's checkout mix (tests/bench/workloads.lua: 70% returning
customers, 10% one value, 12% new customers, 6% a new phone number, 2% merges) over preloaded
customers, each measured request on values of its own. --guarded turns on what `run.py --guarded`
does: the recommended blocked list plus 1,000 values and 20 patterns, and limits. --server also
counts the database's share: the script then starts a PostgreSQL of its own under callgrind and
counts the server process that served the app's connection, the same way.

--checkout measures another checkout (say a worktree of an older commit) with its own .venv; its
database is migrated by it and then by this checkout, as `run.py --compare` does:

    python tests/bench/instructions.py [--checkout DIR] [--workload checkout] [--guarded] [--server]
"""

import argparse
import contextlib
import io
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

ROOT = Path(__file__).resolve().parents[2]
SERVER_URL = os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM_UP = 50
BODY = '{"email": "lorraine@hillvalley.edu", "phoneNumber": "123456"}'
TOTALS = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)
# The checkout mix per 100 requests, as workloads.lua draws it; PRELOADED customers, ids 1..N.
MIX = {"returning": 70, "email": 5, "phone": 5, "new": 12, "new_phone": 6, "merge": 2}
PRELOADED = 10_000
# `--guarded`: the settings run.py's --guarded gives every service.
GUARD_LIMITS = {
    "MAX_EMAILS_PER_CUSTOMER": "10",
    "MAX_PHONE_NUMBERS_PER_CUSTOMER": "10",
    "MAX_CONTACTS_PER_CUSTOMER": "50",
}


def admin(server_url, statement, name):
    """CREATE or DROP a database on the server."""
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(sql.Identifier(name)))
    finally:
        conn.close()


def bench_sql():
    """This checkout's bench statements; imported here, as a child runs another checkout's package."""
    sys.path.insert(0, str(ROOT))
    from identity.queries import load

    return load(ROOT / "sql" / "bench")


def execute(url, name, params=None):
    """Run one named bench statement on url, committed (VACUUM runs outside any transaction)."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(bench_sql()[name], params)
    finally:
        conn.close()


def flask(root, url, *command):
    """Run root's `flask --app wsgi COMMAND` on the database url."""
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run(
        [str(root / ".venv/bin/flask"), "--app", "wsgi", *command],
        cwd=root,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def prepared_database(args, server_url):
    """A database migrated by the checkout, then by this one, loaded for the workload; return (name, url)."""
    name = f"identity_instructions_{uuid.uuid4().hex[:8]}"
    admin(server_url, "CREATE DATABASE {}", name)
    url = make_dsn(server_url, dbname=name)
    for root in dict.fromkeys([args.checkout, ROOT]):
        flask(root, url, "migrate")
    if args.workload == "checkout":
        execute(url, "preload", {"customers": PRELOADED})
        execute(url, "move_id_sequence", {"customers": PRELOADED})
    if args.guarded:
        flask(ROOT, url, "blocked", "add", "--recommended")
        execute(url, "block_values")
    execute(url, "vacuum")
    return name, url


def schedule():
    """The kinds of 100 requests of the checkout mix, in an order drawn once (always the same)."""
    kinds = [kind for kind, share in MIX.items() for _ in range(share)]
    random.Random(0).shuffle(kinds)
    return kinds


def checkout_body(kind, run, k):
    """The body of request k of child run `run`: customers and new values differ from run to run."""
    customer = 1 + run * 3000 + 2 * k  # odd, so customer + 1 is a customer no other request touches
    email, phone = f'"c{customer}@bench.test"', f'"{1000000000 + customer}"'
    fresh = f"{run:02d}{k:07d}"
    email, phone = {
        "returning": (email, phone),
        "email": (email, "null"),
        "phone": ("null", phone),
        "new": (f'"n{fresh}@new.test"', f'"9{fresh}"'),
        "new_phone": (email, f'"9{fresh}"'),
        "merge": (email, f'"{1000000000 + customer + 1}"'),
    }[kind]
    return f'{{"email": {email}, "phoneNumber": {phone}}}'


def bodies(workload, run, count):
    """The bodies of a child run's WARM_UP + count requests."""
    if workload == "returning":
        return [BODY] * count
    kinds = schedule()
    return [checkout_body(kinds[k % len(kinds)], run, k) for k in range(count)]


def environ():
    """The WSGI environ of one POST /identify, as a server would pass it."""
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path="/identify", method="POST", data=BODY, content_type="application/json")
    built = builder.get_environ()
    built["REMOTE_ADDR"] = "203.0.113.7"
    return built


def serve(app, template, body):
    """Pass one request through the app as a WSGI server does; return its status line."""
    statuses = []
    data = body.encode()
    request = {**template, "wsgi.input": io.BytesIO(data), "CONTENT_LENGTH": str(len(data))}
    answer = app(request, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        b"".join(answer)
    finally:
        getattr(answer, "close", lambda: None)()
    return statuses[0]


def child(args):
    """Under callgrind: build the app, warm it up (the first request creates the customer), then serve."""
    sys.path.insert(0, str(args.checkout))
    from identity import create_app

    app = create_app({"DATABASE_URL": args.database_url})
    template = environ()
    statuses = {serve(app, template, body) for body in bodies(args.workload, args.run, WARM_UP + args.count)}
    assert statuses == {"200 OK"}, statuses


def run_child(args, url, run, count, tool=()):
    """Run this script as child run `run` serving WARM_UP + count requests, under tool (a command prefix)."""
    command = [*tool, str(args.checkout / ".venv/bin/python"), __file__, "--child", "--database-url", url]
    command += ["--checkout", str(args.checkout), "--count", str(count), "--run", str(run)]
    command += ["--workload", args.workload]
    # Hash randomisation changes dict layouts, and so instruction counts, from run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0", **(GUARD_LIMITS if args.guarded else {})}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def callgrind_total(out):
    """The instructions a callgrind output file counts."""
    return int(TOTALS.search(out.read_text()).group(1))


def counted_run(args, url, server, run, count):
    """(app, database) instructions of child run `run`; the database's is None without --server."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        before = server.settled() if server else None
        run_child(args, url, run, count, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        return callgrind_total(out), server.served_since(before) if server else None


class CountedServer:
    """A PostgreSQL of its own under callgrind, which writes one file per server process as it ends."""

    def __init__(self, scratch, port):
        self.scratch, self.port = scratch, port
        self.out = scratch / "callgrind"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def as_postgres(self):
        """The command prefix that runs a program as the postgres user when we are root."""
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self):
        """initdb, then the postmaster under callgrind, which follows the processes it forks."""
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        data = self.scratch / "data"
        self.out.mkdir()
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.scratch, "postgres")
            shutil.chown(self.out, "postgres")
        initdb = [f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust"]
        subprocess.run([*self.as_postgres(), *initdb], check=True, stdout=subprocess.DEVNULL)
        postgres = [f"{bindir}/postgres", "-D", str(data), "-p", str(self.port), "-k", str(self.scratch)]
        postgres += ["-c", "listen_addresses=127.0.0.1", "-c", "autovacuum=off"]
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}/%p"]
        command = [*self.as_postgres(), *valgrind, *postgres]
        self.process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        self.monitor = self.connected()

    def connected(self, seconds=120):
        """A connection to the server once it accepts one, kept open so that its process never ends
        during a run and is never counted as one of the run's."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg2.OperationalError):
                conn = psycopg2.connect(self.url)
                conn.autocommit = True
                return conn
            time.sleep(0.5)
        raise RuntimeError("the counted PostgreSQL did not start")

    def settled(self, quiet_seconds=3, seconds=120):
        """The files of the server processes ended so far, once no client but the monitor is connected
        and no file has appeared for quiet_seconds (a process writes its file as it ends)."""
        deadline = time.monotonic() + seconds
        seen, quiet_since = None, time.monotonic()
        while time.monotonic() < deadline:
            with self.monitor.cursor() as cur:
                cur.execute(bench_sql()["client_backends"])
                clients = cur.fetchone()[0]
            files = set(self.out.iterdir())
            if files != seen or clients > 1:
                seen, quiet_since = files, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_seconds:
                return files
            time.sleep(0.2)
        raise RuntimeError("the counted PostgreSQL did not settle")

    def served_since(self, before):
        """Instructions of the server processes that ended since `before`: the app's connections."""
        return sum(callgrind_total(path) for path in self.settled() - before)

    def stop(self):
        """Stop the postmaster and everything it started."""
        self.monitor.close()
        self.process.terminate()
        self.process.wait(timeout=120)


@contextlib.contextmanager
def counted_server(port):
    """A CountedServer on port, started, and removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix="identity-instructions-"))
    server = CountedServer(scratch, port)
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(AttributeError):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def measure(args, server):
    """(app, database) instructions per request, the database's None without a server."""
    name, url = prepared_database(args, server.url if server else SERVER_URL)
    try:
        # A plain run first: it creates the returning workload's customer, so no counted run does.
        run_child(args, url, 0, 0)
        base = counted_run(args, url, server, 1, 0)
        total = counted_run(args, url, server, 2, args.requests)
    finally:
        admin(server.url if server else SERVER_URL, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
    return [None if t is None else (t - b) / args.requests for t, b in zip(total, base, strict=True)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkout", type=Path, default=ROOT, help="the checkout (with its .venv) whose app to measure"
    )
    parser.add_argument("--requests", type=int, default=100, help="measured requests, after the warm-up")
    parser.add_argument("--workload", choices=("returning", "checkout"), default="returning")
    parser.add_argument("--guarded", action="store_true", help="blocked values and limits on, as run.py's")
    parser.add_argument("--server", action="store_true", help="count the database server's share too")
    parser.add_argument("--server-port", type=int, default=int(os.environ.get("BENCH_COUNTED_PORT", "8096")))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.checkout = args.checkout.resolve()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(counted_server(args.server_port)) if args.server else None
        app, database = measure(args, server)
    what = f"{args.workload}{', guarded' if args.guarded else ''}"
    line = f"{args.checkout} ({what}): {app:,.0f} instructions per POST /identify in the app"
    print(line + (f", {database:,.0f} in the database" if database is not None else ""))


if __name__ == "__main__":
    main()
