"""Helpers the tests share: reading the contact table and calling the API."""

import time

import psycopg2

# The task's requests in its order: customers 1 (contacts 1, 2) and 3 (contacts 3, 4).
TASK = [
    ("lorraine@hillvalley.edu", "123456"),
    ("mcfly@hillvalley.edu", "123456"),
    ("george@hillvalley.edu", "919191"),
    ("biffsucks@hillvalley.edu", "717171"),
    ("george@hillvalley.edu", "717171"),
]
POLL_SECONDS = 0.05
COLUMNS = "id, email, phone_number, linked_id, link_precedence, created_at, updated_at, deleted_at"


def all_contacts(conn):
    """Every row of the contact table, as dicts, in id order."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM contact ORDER BY id")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=False)) for row in cur.fetchall()]


def recorded_events(conn):
    """(kind, survivor, contact ids, email, phone number, reason) of every recorded event, in order."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT kind, survivor_id, contact_ids, email, phone_number, reason"
            " FROM contact_event ORDER BY id"
        )
        return [tuple(row) for row in cur.fetchall()]


def functions(conn):
    """{name: the transaction that last wrote its definition} of every function in schema public."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT p.proname, p.xmin::text FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        )
        return dict(cur.fetchall())


def identify(client, email=None, phone_number=None, **body):
    """POST /identify with the given values; return (status, json)."""
    payload = {"email": email, "phoneNumber": phone_number, **body}
    response = client.post("/identify", json=payload)
    return response.status_code, response.get_json()


def applied_versions(url):
    """The versions schema_migration records, in order."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migration ORDER BY version")
            return [version for (version,) in cur.fetchall()]
    finally:
        conn.close()


def poll(condition, seconds, what):
    """Wait until condition() holds, at most seconds; fail naming what did not happen."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(POLL_SECONDS)


def waiting_on_a_lock(conn):
    """Whether one of the service's connections to this database waits for a lock."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'identity' AND wait_event_type = 'Lock'"
        )
        return cur.fetchone()[0] == 1
