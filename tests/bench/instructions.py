"""Instructions per POST /identify of a returning customer through the WSGI app, counted by callgrind.

Unlike req/s, an instruction count does not depend on what else the machine is doing, so a change's
cost can be read on a busy machine. The app is built as production builds it (default settings:
JSON access log, metrics, the rate limit with memory://) on a throwaway migrated database. This
script runs itself twice under callgrind: a warm-up of WARM_UP requests, then either none or
--requests more; the difference of the two totals, divided by --requests, is one request's cost,
free of start-up and warm-up. --checkout measures another checkout's package (say an older commit,
exported with `git archive`), run with a Python that has that checkout's dependencies:

    python tests/bench/instructions.py [--checkout DIR] [--requests N]
"""

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

ROOT = Path(__file__).resolve().parents[2]
SERVER_URL = os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM_UP = 50
BODY = b'{"email": "lorraine@hillvalley.edu", "phoneNumber": "123456"}'
TOTALS = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


def admin(statement, name):
    """CREATE or DROP a database on the server."""
    conn = psycopg2.connect(SERVER_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(sql.Identifier(name)))
    finally:
        conn.close()


def migrated_database(checkout):
    """Create a database and migrate it with checkout's migrations; return (name, url)."""
    name = f"identity_instructions_{uuid.uuid4().hex[:8]}"
    admin("CREATE DATABASE {}", name)
    url = make_dsn(SERVER_URL, dbname=name)
    sys.path.insert(0, str(checkout))
    from identity.migrations import migrate

    conn = psycopg2.connect(url)
    migrate(conn)
    conn.close()
    return name, url


def environ():
    """The WSGI environ of one POST /identify, as a server would pass it."""
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path="/identify", method="POST", data=BODY, content_type="application/json")
    built = builder.get_environ()
    built["REMOTE_ADDR"] = "203.0.113.7"
    return built


def serve(app, template):
    """Pass one request through the app as a WSGI server does; return its status line."""
    statuses = []
    request = {**template, "wsgi.input": io.BytesIO(BODY)}
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
    statuses = {serve(app, template) for _ in range(WARM_UP + args.count)}
    assert statuses == {"200 OK"}, statuses


def run_child(args, url, count, tool=()):
    """Run this script as the child serving WARM_UP + count requests, under tool (a command prefix)."""
    command = [*tool, sys.executable, __file__, "--child", "--database-url", url]
    command += ["--checkout", str(args.checkout), "--count", str(count)]
    # Hash randomisation changes dict layouts, and so instruction counts, from run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def callgrind_total(args, url, count):
    """Instructions callgrind counted for the whole child process serving WARM_UP + count requests."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        run_child(args, url, count, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        return int(TOTALS.search(out.read_text()).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the checkout whose identity/ to measure")
    parser.add_argument("--requests", type=int, default=100, help="measured requests, after the warm-up")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.checkout = args.checkout.resolve()
    name, url = migrated_database(args.checkout)
    try:
        # A plain run first creates the customer, so every counted request finds a returning one.
        run_child(args, url, 0)
        base = callgrind_total(args, url, 0)
        total = callgrind_total(args, url, args.requests)
    finally:
        admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
    print(f"{args.checkout}: {(total - base) / args.requests:,.0f} instructions per POST /identify")


if __name__ == "__main__":
    main()
