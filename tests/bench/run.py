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
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
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
PGBOUNCER_PORT = int(os.environ.get("BENCH_PGBOUNCER_PORT", "8098"))
WORKLOADS = ("checkout", "new", "merge")
MEDIANS = ("rps", "p50_us", "p99_us", "cpu_us")
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


def wrk(workload, customers, seconds, connections=32):
    """One wrk run (2 threads); return the figures its Lua done() printed."""
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
        f"http://127.0.0.1:{PORT}/identify",
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    figures = json.loads(output.split("BENCH ", 1)[1])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    return figures


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


def measure(workload, customers, args, master):
    """Warm up, then the median of args.repeat measured runs, errors summed, and worker memory."""
    wrk(workload, customers, args.warmup)
    figures = summary([wrk(workload, customers, args.duration) for _ in range(args.repeat)])
    figures["rss_mib"] = worker_rss_mib(master)
    return figures


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
                figures = measure(workload, customers, args, master)
                figures["violations"] = violations(url, customers)
                rows.append((f"{workload} @ {customers:,}", figures))
                print(f"{rows[-1][0]}: {figures}", file=sys.stderr, flush=True)
        rows.append(pooled_checkout(url, customers, args))
        floor = statistics.median(pgbench(url, customers, args.duration) for _ in range(args.repeat))
    rows.append((f"pgbench floor @ {customers:,}", {"rps": floor}))
    return rows


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


def measured_checkout(customers, seconds, master):
    """One checkout run, with the workers' CPU time per request."""
    before = worker_cpu_seconds(master)
    figures = wrk("checkout", customers, seconds)
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
    args = parser.parse_args()
    if args.soak:
        return soak(args)
    if args.compare:
        return compare(args)
    rows = [row for customers in args.customers for row in bench_size(customers, args)] + ceiling(args)
    print_table(rows)
    share_of_floor(rows)
    print(f"each figure: median of {args.repeat} runs of {args.duration} s after {args.warmup} s of warm-up")


if __name__ == "__main__":
    main()
