"""Migrations: applied in order, once each, tracked, and safe when several processes start at once."""

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
from psycopg2.extensions import make_dsn

from conftest import drop_database
from helpers import applied_versions, functions
from identity.migrations import MIGRATIONS_DIR, migrate
from identity.queries import sql_files, stem

ROOT = Path(__file__).resolve().parent.parent


def test_migrate_applies_every_file_once_and_then_nothing(empty_database_url):
    conn = psycopg2.connect(empty_database_url)
    try:
        every = [stem(sql_file) for sql_file in sql_files(MIGRATIONS_DIR)]
        assert migrate(conn) == every
        assert migrate(conn) == []
    finally:
        conn.close()
    assert applied_versions(empty_database_url) == every


def test_a_fresh_database_gets_versioned_functions_that_no_later_migrate_replaces(empty_database_url):
    """Hosts of two releases may share the functions, so a migrate with nothing to apply leaves them be."""
    conn = psycopg2.connect(empty_database_url)
    try:
        migrate(conn)
        created = functions(conn)
        conn.commit()
        assert migrate(conn) == []
        assert functions(conn) == created
    finally:
        conn.close()
    # Every function has a versioned name; the unversioned ones of the releases before were never
    # created here.
    assert [name for name in created if not re.search(r"_v[0-9]+$", name)] == []
    assert {"identify_v1", "customer_json_v1", "matching_customers_v1", "customer_contacts_v1"} <= set(
        created
    )


def test_the_cli_command_reports_an_up_to_date_database(runner):
    result = runner.invoke(args=["migrate"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output


def test_processes_starting_at_once_create_and_migrate_the_database_once(server_url):
    name = f"identity_test_{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "DATABASE_URL": make_dsn(server_url, dbname=name)}
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "migrate"]
    try:
        processes = [
            subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for _ in range(4)
        ]
        outputs = [(p.wait(timeout=60), p.stdout.read()) for p in processes]
        assert [code for code, _ in outputs] == [0] * 4, outputs
        assert sum("applied: " in output for _, output in outputs) == 1, outputs
        assert applied_versions(env["DATABASE_URL"]) == [stem(f) for f in sql_files(MIGRATIONS_DIR)]
    finally:
        drop_database(server_url, name)
