"""`flask renormalise`: old spellings rewritten; customers that then share a value merged like /identify."""

import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, UTC

import pytest
from helpers import all_contacts
from servers import free_port, post_json, start_gunicorn, stop
from test_concurrency import assert_links_name_live_primaries, assert_primaries_are_oldest, customers

from conftest import make_app

START = datetime(2024, 1, 1, tzinfo=UTC)
FULLWIDTH = {chr(c): chr(c + 0xFEE0) for c in range(ord("a"), ord("z") + 1)}
# Rows as an older release stored them: (id, email, phone number, linked id, days after START).
OLD_ROWS = [
    (1, "\uff4a\uff4f\uff48\uff4e@shop.in", None, None, 0),  # fullwidth john
    (2, "john@shop.in", "9811111111", None, 1),  # merges into 1
    (3, None, "09876543210", None, 2),
    (4, "x@shop.in", "+919876543210", None, 3),  # merges into 3 once 3 is in E.164
    (5, "a@shop.in", "12", None, 4),  # impossible in India: left as it is
    (6, "p@shop.in", "9866666666", None, 6),
    (7, "\uff50\uff45\uff54\uff45@shop.in", "98666 66666", 6, 7),  # pete of customer 6...
    (8, "pete@shop.in", "9888888888", None, 5),  # ...and the older customer 8, who survives
    (9, "rene\u0301e@shop.fr", "9899999999", None, 9),
]
# Every row's primary afterwards.
PRIMARY_AFTER = {1: 1, 2: 1, 3: 3, 4: 3, 5: 5, 6: 8, 7: 8, 8: 8, 9: 9}


def insert(conn, rows):
    """Rows straight into the table, as an older release would have left them."""
    with conn.cursor() as cur:
        for contact_id, email, phone_number, linked_id, days in rows:
            cur.execute(
                "INSERT INTO contact (id, email, phone_number, linked_id, link_precedence, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    contact_id,
                    email,
                    phone_number,
                    linked_id,
                    "secondary" if linked_id else "primary",
                    START + timedelta(days=days),
                ),
            )
        cur.execute("SELECT setval('contact_id_seq', (SELECT max(id) FROM contact))")
    conn.commit()


def run(runner):
    """`flask renormalise`: its last line."""
    result = runner.invoke(args=["renormalise", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


@pytest.fixture
def india_runner(database_url):
    app = make_app(database_url, PHONE_REGION="IN")
    yield app.test_cli_runner()
    app.extensions["identity_pool"].closeall()


def test_old_spellings_are_rewritten_and_their_customers_merged(conn, india_runner):
    insert(conn, OLD_ROWS)
    assert run(india_runner) == (
        "read: 9, rewritten: 7, customers merged: 3, left as they are (refused now): 1"
    )
    rows = {row["id"]: row for row in all_contacts(conn)}
    assert {i: row["linked_id"] or i for i, row in rows.items()} == PRIMARY_AFTER
    assert [rows[i]["email"] for i in (1, 7, 9)] == ["john@shop.in", "pete@shop.in", "ren\u00e9e@shop.fr"]
    assert (rows[3]["phone_number"], rows[5]["phone_number"]) == ("+919876543210", "12")
    assert_links_name_live_primaries(rows)
    assert_primaries_are_oldest(customers(rows))


def test_a_second_run_changes_nothing(conn, india_runner):
    insert(conn, OLD_ROWS)
    run(india_runner)
    before = all_contacts(conn)
    assert (
        run(india_runner) == "read: 9, rewritten: 0, customers merged: 0, left as they are (refused now): 1"
    )
    assert all_contacts(conn) == before


def test_without_a_region_phone_numbers_are_left_as_they_are(conn, runner):
    insert(conn, OLD_ROWS)
    run(runner)
    assert [row["phone_number"] for row in all_contacts(conn)][2:5] == ["09876543210", "+919876543210", "12"]


SHOPPERS = 150


def test_renormalising_while_requests_race_keeps_every_value_in_one_customer(database_url, conn, tmp_path):
    rng = random.Random(7)
    insert(conn, [(i, fullwidth(f"user{i}@shop.in"), str(1000 + i), None, i) for i in range(1, SHOPPERS + 1)])
    bodies = [
        {
            "email": f"user{rng.randrange(1, SHOPPERS + 1)}@shop.in",
            "phoneNumber": str(1000 + rng.randrange(1, SHOPPERS + 1)),
        }
        for _ in range(400)
    ]
    port = free_port()
    process, _log = start_gunicorn(tmp_path, port, DATABASE_URL=database_url)
    app = make_app(database_url)
    try:
        with ThreadPoolExecutor(9) as pool:
            renormalising = pool.submit(run, app.test_cli_runner())
            answers = list(pool.map(lambda body: post_json(port, body), bodies))
            renormalising.result()
    finally:
        stop(process)
        app.extensions["identity_pool"].closeall()
    assert {status for status, _, _ in answers} == {200}
    rows = {row["id"]: row for row in all_contacts(conn)}
    assert not [
        row
        for row in rows.values()
        if row["email"] and row["email"] != row["email"].encode("ascii", "ignore").decode()
    ]
    assert_links_name_live_primaries(rows)
    assert_primaries_are_oldest(customers(rows))
    assert_each_value_in_one_customer(rows)


def fullwidth(email):
    """The local part in fullwidth letters, as an older release would have stored it."""
    local, _, domain = email.partition("@")
    return "".join(FULLWIDTH.get(char, char) for char in local) + "@" + domain


def assert_each_value_in_one_customer(rows):
    """No email and no phone number is held by two customers."""
    holders = defaultdict(set)
    for row in rows.values():
        for value in (("email", row["email"]), ("phone", row["phone_number"])):
            if value[1] is not None:
                holders[value].add(row["linked_id"] or row["id"])
    assert {value: found for value, found in holders.items() if len(found) > 1} == {}
