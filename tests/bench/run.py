"""`make bench`: drive the real service with wrk and print one table.

For each size K it makes a throwaway database, preloads K customers, starts gunicorn exactly as
`make run` does, runs the three workloads (a warm-up, then the measured run), checks the table's
invariants, and measures the pgbench floor on the same table; then the ceiling of the web stack,
a JSON echo under the same gunicorn settings. The checkout mix runs once more with the service
behind PgBouncer in transaction pooling (deploy/pgbouncer.ini), printed beside the direct run.
`--soak SECONDS` instead runs the checkout mix that long and samples each worker's resident memory.
`--compare REF...` runs the checkout mix on this checkout and on each git ref (a worktree of it),
taking turns, so all see the same machine.
"""

import argparse
import configparser
import contextlib
import io
import json
import os
import random
import resource
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))
import pgbouncer_config  # noqa: E402
from identity.migrations import migrate  # noqa: E402
from identity.queries import load  # noqa: E402

# The bench's SQL is read from the checkout: it is not part of the package.
BENCH_SQL_DIR = ROOT / "sql" / "bench"
BENCH_SQL = load(BENCH_SQL_DIR)
HERE = Path(__file__).resolve().parent
SERVER_URL = os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PORT = int(os.environ.get("BENCH_PORT", "8099"))
NGINX_PORT = int(os.environ.get("BENCH_NGINX_PORT", "8098"))
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
# deploy/nginx.conf's marked upstream servers, replaced by gunicorn on PORT.
NGINX_SERVERS = re.compile(r"(?m)^(\s*)server \S+ ([^;]*);\s*# tests replace: one line per app host\n")
# The pool `--edge` tries: HTTP/1.1 to gunicorn, the client's Connection header not passed on.
KEEPALIVE = "keepalive 16;\n"
KEEPALIVE_PROXY = 'proxy_http_version 1.1;\n            proxy_set_header Connection "";\n'

PGBOUNCER_PORT = int(os.environ.get("BENCH_PGBOUNCER_PORT", "8097"))
WORKLOADS = ("checkout", "new", "merge")
MEDIANS = ("rps", "p50_us", "p99_us", "cpu_us")
BATCH_ITEMS = 100  # items per request of the batch workload (workloads.lua)
CHECKS = ("broken_links", "split_values", "lost_customers", "duplicate_contacts")


def execute(url, name, params=None, autocommit=False):
    """Run one named bench statement on url; return the first column of its first row."""
    conn = psycopg2.connect(url)
    conn.autocommit = autocommit
    try:
        with conn.cursor() as cur:
            cur.execute(BENCH_SQL[name], params)
            row = cur.fetchone() if cur.description else None
        conn.commit()
        return row and row[0]
    finally:
        conn.close()


def admin(statement, name):
    """CREATE or DROP a database on the bench server."""
    conn = psycopg2.connect(SERVER_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(sql.Identifier(name)))
    finally:
        conn.close()


@contextlib.contextmanager
def bench_database(customers):
    """A migrated throwaway database holding `customers` one-contact customers."""
    name = f"identity_bench_{uuid.uuid4().hex[:8]}"
    admin("CREATE DATABASE {}", name)
    url = make_dsn(SERVER_URL, dbname=name)
    try:
        conn = psycopg2.connect(url)
        migrate(conn)
        conn.close()
        if customers:
            execute(url, "preload", {"customers": customers})
            execute(url, "move_id_sequence", {"customers": customers})
        execute(url, "vacuum", autocommit=True)
        yield url
    finally:
        admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@contextlib.contextmanager
def service(app, database_url=None, root=ROOT):
    """gunicorn with the production settings (root's gunicorn.conf.py) serving root's app on PORT."""
    env = {**os.environ, "PORT": str(PORT)}
    if database_url:
        env["DATABASE_URL"] = database_url
    command = [
        str(root / ".venv/bin/gunicorn"),
        "-c",
        str(root / "gunicorn.conf.py"),
        "--pythonpath",
        str(HERE),
        app,
    ]
    process = subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving()
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def pgbouncer(url):
    """The URL of url's database through a PgBouncer with deploy/pgbouncer.ini, started for the run."""
    server = parse_dsn(url)
    ini = pgbouncer_config.prepared_directory(
        PGBOUNCER_PORT,
        server.get("host", "127.0.0.1"),
        server.get("port", 5432),
        server.get("user", "postgres"),
    )
    program = shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    process = subprocess.Popen(pgbouncer_config.command(program, ini), stderr=subprocess.DEVNULL)
    pooled = make_dsn(url, host=pgbouncer_config.HOST, port=PGBOUNCER_PORT)
    try:
        wait_until(lambda: connects(pooled), "pgbouncer")
        yield pooled
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(ini.parent)


def connects(url):
    """Whether a connection to url opens (it is closed again)."""
    psycopg2.connect(url).close()
    return True


def wait_until(ready, what, seconds=30):
    """Block until ready() holds without raising."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, psycopg2.OperationalError):
            if ready():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start")


def wait_until_serving(seconds=30):
    """Block until the service answers on PORT."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=1).read()
            return
        time.sleep(0.2)
    raise RuntimeError("the service did not start")


def wrk(workload, customers, seconds, connections=32, port=PORT):
    """One wrk run (2 threads) against port; return the figures its Lua done() printed."""
    env = {
        **os.environ,
        "WORKLOAD": workload,
        "CUSTOMERS": str(customers),
        "RUN": str(time.time_ns() % 10**6),
    }
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(HERE / "workloads.lua"),
        f"http://127.0.0.1:{port}/identify",
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    figures = json.loads(output.split("BENCH ", 1)[1])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    return figures


def nginx_conf(keepalive=False):
    """deploy/nginx.conf listening on NGINX_PORT in front of gunicorn on PORT, with a pool if asked."""
    text = NGINX_CONF.read_text().replace("listen 8080;", f"listen 127.0.0.1:{NGINX_PORT};", 1)
    upstream = f"server 127.0.0.1:{PORT} max_fails=3 fail_timeout=10s;\n"
    text = NGINX_SERVERS.sub("", text).replace("upstream identity {\n", "upstream identity {\n" + upstream, 1)
    if keepalive:
        text = text.replace(upstream, upstream + KEEPALIVE, 1)
        text = text.replace(
            "proxy_pass http://identity;\n", "proxy_pass http://identity;\n" + KEEPALIVE_PROXY, 1
        )
    return text


@contextlib.contextmanager
def nginx(keepalive=False):
    """Debian's nginx with deploy/nginx.conf on NGINX_PORT in front of PORT, as deployed."""
    prefix = Path(tempfile.mkdtemp(prefix="identity-bench-nginx-"))
    prefix.chmod(0o755)  # started as root, its workers run as nobody
    (prefix / "nginx.conf").write_text(nginx_conf(keepalive))
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    command = [
        binary,
        "-c",
        str(prefix / "nginx.conf"),
        "-p",
        f"{prefix}/",
        "-e",
        "stderr",
        "-g",
        "daemon off;",
    ]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        wait_until_listening(NGINX_PORT)
        yield NGINX_PORT
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(prefix)


def wait_until_listening(port, seconds=30):
    """Block until something accepts connections on port."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def worker_statuses(master):
    """The /proc status fields of each of the gunicorn master's worker processes."""
    statuses = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            if int(fields["PPid"]) == master.pid:
                statuses.append(fields)
    return statuses


def worker_rss_mib(master):
    """Resident memory of each of the gunicorn master's worker processes, in MiB."""
    return sorted(int(fields["VmRSS"].split()[0]) / 1024 for fields in worker_statuses(master))


def worker_cpu_seconds(master):
    """CPU time (user and system) the gunicorn master's workers have used so far."""
    total = 0
    for fields in worker_statuses(master):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{fields['Pid'].strip()}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(stat[11]) + int(stat[12])
    return total / os.sysconf("SC_CLK_TCK")


def pgbench(url, customers, seconds):
    """The floor: transactions/s of the least database work the checkout mix needs."""
    command = [
        "pgbench",
        "-n",
        "-c",
        "32",
        "-j",
        "2",
        "-T",
        str(seconds),
        "-D",
        f"customers={customers}",
        "-f",
        str(BENCH_SQL_DIR / "floor.pgbench"),
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("tps"))
    return float(line.split("=")[1].split()[0])


def violations(url, customers):
    """Sum of every invariant check; 0 when the table is sound."""
    return {name: execute(url, name, {"customers": customers}) for name in CHECKS}


def measure(workload, customers, args, master, ports=(PORT,)):
    """Warm up, then args.repeat measured runs on each port, taking turns; per port the medians."""
    for port in ports:
        wrk(workload, customers, args.warmup, port=port)
    runs = {port: [] for port in ports}
    for _ in range(args.repeat):
        for port in ports:
            runs[port].append(wrk(workload, customers, args.duration, port=port))
    figures = [summary(runs[port]) | {"rss_mib": worker_rss_mib(master)} for port in ports]
    return figures if len(ports) > 1 else figures[0]


def summary(runs):
    """The median of each figure over runs (cpu_us where measured), and their errors summed."""
    medians = {key: statistics.median(run[key] for run in runs) for key in MEDIANS if key in runs[0]}
    return medians | {key: sum(run[key] for run in runs) for key in ("socket_errors", "non_2xx")}


def bench_size(customers, args):
    """Every workload and the pgbench floor at one table size."""
    rows = []
    with bench_database(customers) as url:
        with service("wsgi:app", url) as master:
            for workload in WORKLOADS:
                measured = workload_rows(workload, customers, args, master)
                found = violations(url, customers)  # after the workload's requests
                for name, figures in measured:
                    rows.append((name, figures | {"violations": found}))
                    print(f"{name}: {rows[-1][1]}", file=sys.stderr, flush=True)
        rows.append(pooled_checkout(url, customers, args))
        floor = statistics.median(pgbench(url, customers, args.duration) for _ in range(args.repeat))
    rows.append((f"pgbench floor @ {customers:,}", {"rps": floor}))
    return rows


def answered_rps(run):
    """The requests per second of one wrk run that were answered with a 2xx."""
    return (run["requests"] - run["non_2xx"]) / (run["duration_us"] / 1e6)


def bench_batch(customers, args):
    """Single /identify checkouts beside /identify/batch of 100 of them, taking turns, in records/s."""
    runs = {"checkout": [], "batch": []}
    with bench_database(customers) as url, service("wsgi:app", url):
        for workload in runs:
            wrk(workload, customers, args.warmup)
        for _ in range(args.repeat):
            for workload, figures in runs.items():
                figures.append(wrk(workload, customers, args.duration))
        checks = violations(url, customers)
    print(f"{'run':<32}{'records/s':>11}{'req/s':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for workload, figures in runs.items():
        f = summary(figures)
        items = BATCH_ITEMS if workload == "batch" else 1
        # Only answered requests moved records: a batch refused by RATE_LIMIT (429) moved none.
        records = statistics.median(answered_rps(run) * items for run in figures)
        print(
            f"{workload + ' @ ' + format(customers, ','):<32}{records:>11.0f}{f['rps']:>9.0f}"
            f"{f['p99_us'] / 1000:>9.2f}{f['non_2xx']:>9}"
        )
    print(f"invariants broken: {sum(checks.values())}")


def history(records, rng, values=("hist.test", 2000000000)):
    """A realistic order history (issue 10): about 0.4 records per customer, shuffled, as CSV lines.

    Customers order 1 to 4 times with the same values; 10% change their phone number or email once,
    2% share a phone number with the customer before them (merges), 1% carry one value only, and
    0.5% of records are bad; createdAt spread over three years. Customer n's values are
    c<n>@<domain> and <base + n> for values=(domain, base): ("bench.test", 1000000000) gives the
    values of the benchmark's preloaded customers.
    """
    start, span = datetime(2022, 1, 1, tzinfo=UTC), 3 * 365 * 86400
    lines, customer = [], 0
    while len(lines) < records:
        customer += 1
        for order in range(rng.randint(1, 4)):
            at = start + timedelta(seconds=rng.randrange(span))
            lines.append(order_line(customer, order, rng, at, values))
    rng.shuffle(lines)
    return ["email,phoneNumber,createdAt\n", *lines[:records]]


def order_line(customer, order, rng, at, values):
    """One record of the history's customer."""
    domain, base = values
    email, phone = f"c{customer}@{domain}", str(base + customer)
    if customer % 10 == 0 and order > 0:
        changed = (email, str(3000000000 + customer)), (f"d{customer}@{domain}", phone)
        email, phone = changed[0] if customer % 20 else changed[1]
    if customer % 50 == 1:
        phone = str(base + customer - 1)
    if customer % 100 == 2:
        phone = ""
    if rng.random() < 0.005:
        email = "not an address"
    return f"{email},{phone},{at.isoformat()}\n"


def import_command(url, path, *options):
    """`flask import-contacts path` into url: (command, environment)."""
    env = {**os.environ, "DATABASE_URL": url}
    flask = str(ROOT / ".venv/bin/flask")
    return [flask, "--app", "wsgi", "import-contacts", path, "--allow-rejects", *options], env


def timed_import(url, path, *options):
    """(seconds, peak RSS MiB, summary line) of `flask import-contacts path options` into url."""
    command, env = import_command(url, path, *options)
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ways = [line for line in done.stderr.splitlines() if line.startswith("chunks:")]
    return seconds, peak, f"{done.stdout.strip().splitlines()[-1]} ({ways[-1]})"


def checkout_during_import(url, path, customers):
    """The checkout mix's runs (5 s each) for as long as an import into url runs beside it; its seconds."""
    command, env = import_command(url, path)
    with service("wsgi:app", url) as _master:
        wrk("checkout", customers, 3)
        started = time.monotonic()
        importing = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        runs = []
        while importing.poll() is None:
            runs.append(wrk("checkout", customers, 5))
        if importing.wait() != 0:
            raise RuntimeError("the import beside the checkout mix failed")
    return runs, time.monotonic() - started


def copy_seconds(source_url, records):
    """Seconds to COPY the rows source_url holds into an empty contact table with its indexes."""
    rows = io.StringIO()
    conn = psycopg2.connect(source_url)
    with conn.cursor() as cur:
        cur.copy_expert(BENCH_SQL["copy_out_contacts"], rows)
    conn.close()
    with bench_database(0) as url:
        conn = psycopg2.connect(url)
        rows.seek(0)
        started = time.monotonic()
        with conn.cursor() as cur:
            cur.copy_expert(BENCH_SQL["copy_in_contacts"], rows)
        conn.commit()
        conn.close()
        return time.monotonic() - started


# The ways into an empty table the bench times beside COPY: the command's options.
EMPTY_TABLE_IMPORTS = (
    (),
    ("--events", "merges"),
    ("--lock-tables",),
    ("--lock-tables", "--events", "merges"),
)


def bench_imports(records, args):
    """The import into an empty table (each way) beside COPY of its rows; into as many customers."""
    path = str(Path(tempfile.mkdtemp()) / "history.csv")
    Path(path).write_text("".join(history(records, random.Random(10))))
    runs = {" ".join(options) or "by default": [] for options in EMPTY_TABLE_IMPORTS}
    copies, populated = [], []
    for _ in range(args.repeat):
        for options in EMPTY_TABLE_IMPORTS:
            with bench_database(0) as url:
                runs[" ".join(options) or "by default"].append(timed_import(url, path, *options))
                if not options:
                    copies.append(copy_seconds(url, records))
        with bench_database(records) as url:
            populated.append(timed_import(url, path))
    for way, timed in runs.items():
        print_import(records, f"into an empty table, {way}", timed)
    print_import(records, f"into {records:,} customers", populated)
    copy = statistics.median(copies)
    shares = ", ".join(
        f"{way} {copy / statistics.median(run[0] for run in timed):.0%}" for way, timed in runs.items()
    )
    print(
        f"COPY of the resulting rows: {records / copy:,.0f} records/s (the import's share of that: {shares})"
    )
    # Beside live traffic, a history of the very customers the checkout mix sends: they wait on locks.
    Path(path).write_text("".join(history(records, random.Random(10), ("bench.test", 1000000000))))
    with bench_database(records) as url:
        checkout_runs, seconds = checkout_during_import(url, path, records)
        checks = violations(url, records)
    print_traffic_during_import(records, checkout_runs, seconds, sum(checks.values()))


def print_import(records, name, timed):
    """One way's median speed, peak memory and last summary line (timed: timed_import's results)."""
    seconds = statistics.median(run[0] for run in timed)
    print(
        f"import {records:,} {name}: {records / seconds:,.0f} records/s (median {seconds:.1f} s), "
        f"peak RSS {max(run[1] for run in timed):.0f} MiB; last: {timed[-1][2]}"
    )


def print_traffic_during_import(records, runs, seconds, broken):
    """The checkout mix's p99 (worst and median run) and failures while an import ran beside it."""
    p99s = [run["p99_us"] / 1000 for run in runs]
    failed = sum(run["non_2xx"] + run["socket_errors"] for run in runs)
    print(
        f"checkout mix during an import into {records:,} customers: p99 {max(p99s):.1f} ms in the worst of"
        f" {len(runs)} runs of 5 s (median {statistics.median(p99s):.1f} ms), {failed} failed;"
        f" the import took {seconds:.1f} s; invariants broken: {broken}"
    )


def bench_explain(customers, args):
    """GET history and path of a customer of 50 contacts at `customers` customers (issue 12): ms each."""
    with bench_database(customers) as url, service("wsgi:app", url):
        answers = [post_identify({"email": "fifty@explain.test", "phoneNumber": str(n)}) for n in range(50)]
        primary, last = answers[-1]["primaryContatctId"], answers[-1]["secondaryContactIds"][-1]
        routes = {"history": f"/contacts/{primary}/history", "path": f"/contacts/{primary}/path/{last}"}
        for name, route in routes.items():
            seconds = [timed_get(route) for _ in range(200 * args.repeat)]
            median, p99 = statistics.median(seconds) * 1000, statistics.quantiles(seconds, n=100)[98] * 1000
            print(f"{name}, customer of 50 contacts @ {customers:,}: median {median:.1f}, p99 {p99:.1f} ms")


def post_identify(body):
    """POST /identify on PORT; the answer's contact."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/identify", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["contact"]


def timed_get(route):
    """Seconds one GET of route on PORT took, its 200 checked."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{route}", timeout=10) as answer:
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{route} answered {answer.status}")
    return time.perf_counter() - started


def workload_rows(workload, customers, args, master):
    """One row per way of reaching the service: checkout straight and through nginx, taking turns."""
    if workload != "checkout":
        return [(f"{workload} @ {customers:,}", measure(workload, customers, args, master))]
    with nginx() as port:
        direct, through_nginx = measure(workload, customers, args, master, (PORT, port))
    return [(f"checkout @ {customers:,}", direct), (f"checkout via nginx @ {customers:,}", through_nginx)]


def pooled_checkout(url, customers, args):
    """The checkout mix with the service behind PgBouncer in transaction pooling."""
    with pgbouncer(url) as pooled, service("wsgi:app", pooled) as master:
        figures = measure("checkout", customers, args, master)
    figures["violations"] = violations(url, customers)
    print(f"checkout via PgBouncer @ {customers:,}: {figures}", file=sys.stderr, flush=True)
    return f"checkout via PgBouncer @ {customers:,}", figures


def ceiling(args):
    """The web stack alone: a JSON echo under the same gunicorn settings."""
    with service("echo:app") as master:
        return [("echo ceiling", measure("echo", 1000, args, master))]


def print_table(rows):
    """One table: throughput, latency, errors, invariants, memory."""
    print(
        f"{'run':<36}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'non-2xx':>9}"
        f"{'broken':>8}  worker RSS MiB"
    )
    for name, f in rows:
        broken = sum(f["violations"].values()) if "violations" in f else ""
        latency = (
            f"{f['p50_us'] / 1000:>9.2f}{f['p99_us'] / 1000:>9.2f}{f['socket_errors']:>8}{f['non_2xx']:>9}"
            if "p50_us" in f
            else f"{'':>35}"
        )
        rss = ", ".join(f"{m:.0f}" for m in f.get("rss_mib", []))
        print(f"{name:<36}{f['rps']:>9.0f}{latency}{broken!s:>8}  {rss}")


def share_of_floor(rows):
    """Checkout throughput as a share of the pgbench floor at each size."""
    figures = dict(rows)
    for name, f in rows:
        if name.startswith("checkout @"):
            size = name.split("@")[1]
            floor = figures[f"pgbench floor @{size}"]["rps"]
            print(f"checkout @{size}: {100 * f['rps'] / floor:.0f}% of the pgbench floor")


def soak(args):
    """Checkout for args.soak seconds at the largest size, sampling worker memory every 30 s."""
    customers = args.customers[-1]
    with bench_database(customers) as url, service("wsgi:app", url) as master:
        slices = max(1, args.soak // 30)
        for done in range(1, slices + 1):
            figures = wrk("checkout", customers, args.soak // slices)
            rss = ", ".join(f"{m:.1f}" for m in worker_rss_mib(master))
            print(
                f"{done * args.soak // slices:>5} s {figures['rps']:>7.0f} req/s  worker RSS MiB {rss}",
                flush=True,
            )


@contextlib.contextmanager
def worktree(ref):
    """A checkout of the git ref beside this one, with its own dependencies, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="identity-bench-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True)
    try:
        install_dependencies(path)
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=True)


def install_dependencies(root):
    """A virtual environment in root with what root's code needs, as its own files name them.

    A ref may need other libraries than this checkout (an older one Flask-Limiter, say), so each has
    its own: from its lock file where it has one, else from its setup.cfg (releases before the locks).
    """
    python = str(root / ".venv/bin/python")
    subprocess.run([sys.executable, "-m", "venv", str(root / ".venv")], check=True)
    lock = root / "requirements" / "app.txt"
    requirements = ["-r", str(lock)] if lock.exists() else setup_cfg_requirements(root)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *requirements], check=True)
    if (root / "pyproject.toml").exists():  # a package since issue 8: installed as make installs it
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(root)], check=True)


def setup_cfg_requirements(root):
    """install_requires of root's setup.cfg."""
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    return config["options"]["install_requires"].split()


def migrate_with(root, url):
    """Migrate url as root's own code does: releases side by side on one database, as in a rolling deploy."""
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([str(root / ".venv/bin/flask"), "--app", "wsgi", "migrate"], cwd=root, env=env, check=True)


# `--guarded`: issue 12's protections on, at values an operator might choose (README, "Limits").
GUARD_LIMITS = {
    "MAX_EMAILS_PER_CUSTOMER": "10",
    "MAX_PHONE_NUMBERS_PER_CUSTOMER": "10",
    "MAX_CONTACTS_PER_CUSTOMER": "50",
}


def guard(url):
    """Block the recommended list, 1,000 values and 20 patterns in url; limits on for every service."""
    env = {**os.environ, "DATABASE_URL": url}
    command = [str(ROOT / ".venv/bin/flask"), "--app", "wsgi", "blocked", "add", "--recommended"]
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    execute(url, "block_values")
    os.environ.update(GUARD_LIMITS)  # a release before the limits ignores them


def measured_checkout(customers, seconds, master, port=PORT, workload="checkout"):
    """One checkout run (or another workload), with the workers' CPU time per request."""
    before = worker_cpu_seconds(master)
    figures = wrk(workload, customers, seconds, port=port)
    figures["cpu_us"] = (worker_cpu_seconds(master) - before) / figures["requests"] * 1e6
    return figures


def compare(args):
    """The checkout mix on this checkout and on each ref, one after another, args.repeat times."""
    customers = args.customers[-1]
    with contextlib.ExitStack() as stack:
        roots = {"this checkout": ROOT} | {ref: stack.enter_context(worktree(ref)) for ref in args.compare}
        url = stack.enter_context(bench_database(customers))
        for root in roots.values():
            migrate_with(root, url)
        if args.guarded:
            guard(url)
        runs = {name: [] for name in roots}
        for _ in range(args.repeat):
            for name, root in roots.items():
                with service("wsgi:app", url, root) as master:
                    wrk("checkout", customers, args.warmup)
                    runs[name].append(measured_checkout(customers, args.duration, master))
    print_comparison(f"checkout @ {customers:,}", runs, args)


def print_comparison(title, runs, args):
    """One line per variant: medians of its runs, errors summed."""
    print(f"{title:<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'non-2xx':>9}  worker CPU/request")
    for name, m in ((name, summary(figures)) for name, figures in runs.items()):
        print(
            f"{name:<24}{m['rps']:>9.0f}{m['p50_us'] / 1000:>9.2f}{m['p99_us'] / 1000:>9.2f}"
            f"{m['socket_errors']:>8}{m['non_2xx']:>9}  {m['cpu_us']:.0f} us"
        )
    print(f"each figure: median of {args.repeat} runs of {args.duration} s, the variants taking turns")


def edge(args):
    """The checkout mix straight to gunicorn, through nginx, and through nginx with a pool, taking turns."""
    customers = args.customers[-1]
    variants = {
        "direct": {},
        "via nginx": {"keepalive": False},
        "via nginx, keepalive 16": {"keepalive": True},
    }
    runs = {name: [] for name in variants}
    with bench_database(customers) as url, service("wsgi:app", url) as master:
        wrk("checkout", customers, args.warmup)
        for _ in range(args.repeat):
            for name, options in variants.items():
                with contextlib.ExitStack() as stack:
                    port = stack.enter_context(nginx(**options)) if options else PORT
                    runs[name].append(measured_checkout(customers, args.duration, master, port))
    print_comparison(f"checkout @ {customers:,}", runs, args)


def backend_pids(url):
    """The PostgreSQL server processes of url's other connections."""
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(BENCH_SQL["backend_pids"])
        return [pid for (pid,) in cur.fetchall()]


def cpu_seconds(pids):
    """CPU time (user and system) the processes pids have used so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(stat[11]) + int(stat[12])
    return total / os.sysconf("SC_CLK_TCK")


def returning_run(url, customers, seconds, master):
    """One run of returning customers, with the workers' and the database's CPU time per request."""
    pids = backend_pids(url)
    workers, backends = worker_cpu_seconds(master), cpu_seconds(pids)
    figures = wrk("returning", customers, seconds)
    figures["cpu_us"] = (worker_cpu_seconds(master) - workers) / figures["requests"] * 1e6
    figures["db_cpu_us"] = (cpu_seconds(pids) - backends) / figures["requests"] * 1e6
    return figures


def pgbench_returning(url, customers, seconds):
    """Transactions/s of the database's share of a returning customer's request alone, prepared."""
    command = ["pgbench", "-n", "-M", "prepared", "-c", "32", "-j", "2", "-T", str(seconds)]
    command += ["-D", f"customers={customers}", "-f", str(BENCH_SQL_DIR / "returning.pgbench"), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(
        next(line for line in output.splitlines() if line.startswith("tps")).split("=")[1].split()[0]
    )


REDIS_GETS = 20_000
# What a cache would keep per customer: the answer, about as long as a returning customer's.
CACHED_ANSWER = json.dumps({"contact": {"primaryContatctId": 1, "emails": ["c1@bench.test"] * 2}}) * 2


def redis_get_cost():
    """(client, server) CPU microseconds of one GET of a cached answer from a Redis of its own, unloaded."""
    import redis

    port = free_port()
    command = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--save", ""]
    server = subprocess.Popen([*command, "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        wait_until_listening(port)
        client = redis.Redis(port=port)
        client.set("customer:c1@bench.test:1000000001", CACHED_ANSWER)
        client_before, server_before = time.process_time(), cpu_seconds([server.pid])
        for _ in range(REDIS_GETS):
            client.get("customer:c1@bench.test:1000000001")
        client_us = (time.process_time() - client_before) / REDIS_GETS * 1e6
        return client_us, (cpu_seconds([server.pid]) - server_before) / REDIS_GETS * 1e6
    finally:
        server.terminate()
        server.wait(timeout=30)


def free_port():
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def where(args):
    """Where a returning customer's request goes: full request, its SQL alone, the web stack alone."""
    customers = args.customers[-1]
    runs = {"returning, full request": [], "echo (web stack alone)": []}
    floors = []
    with bench_database(customers) as url:
        for _ in range(args.repeat):
            with service("wsgi:app", url) as master:
                wrk("returning", customers, args.warmup)
                runs["returning, full request"].append(returning_run(url, customers, args.duration, master))
            with service("echo:app") as master:
                wrk("echo", customers, args.warmup)
                runs["echo (web stack alone)"].append(
                    measured_checkout(customers, args.duration, master, PORT, "echo")
                )
            floors.append(pgbench_returning(url, customers, args.duration))
    print_comparison(f"returning @ {customers:,}", runs, args)
    db = statistics.median(run["db_cpu_us"] for run in runs["returning, full request"])
    print(f"database server CPU per returning request: {db:.0f} us")
    print(f"its SQL alone (pgbench -M prepared, 32 clients): {statistics.median(floors):.0f} transactions/s")
    costs = [redis_get_cost() for _ in range(args.repeat)]
    client, server = (statistics.median(cost[i] for cost in costs) for i in (0, 1))
    print(
        f"a Redis GET of a cached answer, unloaded: {client:.0f} us in the client, {server:.0f} us in Redis"
    )


DEFAULT_IMPORT_RECORDS = 1_000_000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[20_000, 1_000_000])
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per figure; the median is shown")
    parser.add_argument("--soak", type=int, default=0, help="seconds of checkout while sampling memory")
    parser.add_argument("--compare", nargs="+", default=[], metavar="REF", help="git refs to run beside this")
    parser.add_argument(
        "--guarded", action="store_true", help="with --compare: blocked values and limits on (issue 12)"
    )
    parser.add_argument(
        "--batch", action="store_true", help="single /identify beside /identify/batch of 100, taking turns"
    )
    parser.add_argument("--imports", type=int, default=0, metavar="N", help="import N records, beside COPY")
    parser.add_argument(
        "--edge", action="store_true", help="checkout direct, via nginx, via nginx with a pool"
    )
    parser.add_argument("--where", action="store_true", help="where a returning customer's request time goes")
    parser.add_argument("--explain", action="store_true", help="history and path of 50 contacts' customer")
    args = parser.parse_args()
    if args.imports:
        return bench_imports(args.imports, args)
    if args.batch:
        return [bench_batch(customers, args) for customers in args.customers]
    if args.edge:
        return edge(args)
    if args.where:
        return where(args)
    if args.explain:
        return [bench_explain(customers, args) for customers in args.customers]
    if args.soak:
        return soak(args)
    if args.compare:
        return compare(args)
    rows = [row for customers in args.customers for row in bench_size(customers, args)] + ceiling(args)
    print_table(rows)
    share_of_floor(rows)
    print(f"each figure: median of {args.repeat} runs of {args.duration} s after {args.warmup} s of warm-up")
    # The sections of issue 10, at the sizes its figures are given for.
    bench_batch(args.customers[-1], args)
    bench_imports(DEFAULT_IMPORT_RECORDS, args)


if __name__ == "__main__":
    main()
