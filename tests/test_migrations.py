"""Migrations: applied in order, once each, tracked, and safe when several processes start at once."""

import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import make_dsn

from conftest import drop_database
from helpers import applied_versions, functions
from identity import create_app
from identity.migrations import MIGRATIONS_DIR, migrate
from identity.queries import QUERIES, sql_files, stem

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


# 0009 (issue 13) on a table an older release filled.

LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)
# (id, email, phone number, linked id, days after LONG_AGO, deleted): rows written before events were
# recorded, but 7, written by the release before this one through identify_v2.
OLD_ROWS = [
    (1, "a@old.test", "1001", None, 0, False),
    (2, "b@old.test", "1002", 1, 1, False),  # joined to 1 by a request's pair no event recorded
    (3, "c@old.test", "1003", None, 2, True),  # a primary soft-deleted by hand...
    (4, "d@old.test", "1004", 3, 3, False),  # ...that hid its two secondaries
    (5, "e@old.test", "1004", 3, 4, False),
    (6, "d@old.test", "1006", None, 5, False),  # took d@ while 4 was hidden
]


def migrate_until(conn, last):
    """Apply the migrations up to last, as the release that shipped them did."""
    with conn.cursor() as cur:
        cur.execute(QUERIES["create_migration_table"])
        for path in sql_files(MIGRATIONS_DIR):
            if stem(path) <= last:
                cur.execute(path.read_text())
                cur.execute(QUERIES["record_migration"], {"version": stem(path)})
    conn.commit()


def fill_as_before(conn):
    """OLD_ROWS as an older release left them, and one customer the release before made."""
    with conn.cursor() as cur:
        for contact_id, email, phone_number, linked_id, days, deleted in OLD_ROWS:
            at = LONG_AGO + timedelta(days=days)
            cur.execute(
                "INSERT INTO contact (id, email, phone_number, linked_id, link_precedence, created_at,"
                " updated_at, deleted_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    contact_id,
                    email,
                    phone_number,
                    linked_id,
                    "secondary" if linked_id else "primary",
                    at,
                    at,
                    at if deleted else None,
                ),
            )
        cur.execute("SELECT setval('contact_id_seq', 6)")
        cur.execute("SELECT identify_v2('f@new.test', '1007', 'r', NULL, NULL, NULL)")
    conn.commit()


@pytest.fixture
def filled_before_0009(empty_database_url):
    conn = psycopg2.connect(empty_database_url)
    migrate_until(conn, "0008_identify_batch_v1")
    fill_as_before(conn)
    yield conn
    conn.close()


def links(conn):
    """{id: (linked id, deleted)} of every row."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, linked_id, deleted_at IS NOT NULL FROM contact ORDER BY id")
        return {contact_id: (linked_id, deleted) for contact_id, linked_id, deleted in cur.fetchall()}


def test_0009_on_a_filled_table_keeps_every_row_and_unhides_a_deleted_primarys_customer(filled_before_0009):
    conn = filled_before_0009
    values_before = values(conn)
    assert migrate(conn) == [stem(f) for f in sql_files(MIGRATIONS_DIR) if stem(f) > "0008_identify_batch_v1"]
    assert values(conn) == values_before
    # 4, the oldest live row of 3's customer, is its primary now, and 6, which took d@, joined it.
    assert links(conn) == {
        1: (None, False),
        2: (1, False),
        3: (None, True),
        4: (None, False),
        5: (4, False),
        6: (4, False),
        7: (None, False),
    }
    with conn.cursor() as cur:
        cur.execute("SELECT kind, survivor_id, contact_ids FROM contact_event WHERE id > 1 ORDER BY id")
        assert cur.fetchall() == [
            ("linked", 1, [1, 2]),
            ("linked", 3, [3, 4, 5]),
            ("rederived", 3, [3, 4]),
            ("rederived", 6, [6, 4]),
        ]


def test_after_0009_an_erased_row_may_hold_no_value_but_a_live_one_must(filled_before_0009):
    conn = filled_before_0009
    migrate(conn)
    with conn.cursor() as cur:
        cur.execute("UPDATE contact SET email = NULL, phone_number = NULL, deleted_at = now() WHERE id = 7")
        conn.commit()
        with pytest.raises(psycopg2.errors.CheckViolation, match="contact_live_has_email_or_phone_number"):
            cur.execute("UPDATE contact SET email = NULL, phone_number = NULL WHERE id = 1")
    conn.rollback()


def test_links_older_than_the_record_are_kept_through_an_erasure(filled_before_0009, empty_database_url):
    migrate(filled_before_0009)
    app = create_app({"DATABASE_URL": empty_database_url, "TESTING": True, "IDENTITY_ADMIN_KEYS": "k"})
    try:
        client = app.test_client()
        erased = client.delete("/contacts?email=a@old.test", headers={"Authorization": "Bearer k"}).get_json()
        # Nothing recorded joins 2 to 1 but the link itself, older than the record: it stays.
        assert [(c["primaryContatctId"], c["secondaryContactIds"]) for c in erased["customers"]] == [(1, [2])]
        assert client.get("/contacts/5").get_json()["contact"]["secondaryContactIds"] == [5, 6]
    finally:
        app.extensions["identity_pool"].closeall()


def values(conn):
    """{id: (email, phone number)} of every row."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, email, phone_number FROM contact ORDER BY id")
        return {contact_id: (email, phone_number) for contact_id, email, phone_number in cur.fetchall()}
