"""Every reconciliation rule, one test each, through the HTTP API and the table."""

import time

import psycopg2
import pytest

from helpers import all_contacts, identify
from identity import repository

# Every rule holds straight on PostgreSQL and through PgBouncer in transaction pooling.
pytestmark = pytest.mark.pooled


def customer(primary, emails, phones, secondaries):
    """The answer body for a customer."""
    return {
        "contact": {
            "primaryContatctId": primary,
            "emails": emails,
            "phoneNumbers": phones,
            "secondaryContactIds": secondaries,
        }
    }


def insert_contact(conn, email, phone, linked_id=None, created_at="now()", deleted_at=None):
    """Write a row directly, as a backfill would; return its id."""
    precedence = "secondary" if linked_id else "primary"
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO contact (email, phone_number, linked_id, link_precedence, created_at, deleted_at)"
            f" VALUES (%s, %s, %s, %s, {created_at}, %s) RETURNING id",
            (email, phone, linked_id, precedence, deleted_at),
        )
        return cur.fetchone()[0]


def test_unknown_email_alone_creates_a_primary(client, conn):
    assert identify(client, "doc@hillvalley.edu") == (200, customer(1, ["doc@hillvalley.edu"], [], []))
    assert all_contacts(conn)[0]["phone_number"] is None


def test_unknown_phone_number_alone_creates_a_primary(client, conn):
    assert identify(client, phone_number="555") == (200, customer(1, [], ["555"], []))
    assert all_contacts(conn)[0]["email"] is None


def test_new_phone_number_for_known_email_adds_a_secondary_with_both_values(client, conn):
    identify(client, "a@x.io", "1")
    assert identify(client, "a@x.io", "2") == (200, customer(1, ["a@x.io"], ["1", "2"], [2]))
    second = all_contacts(conn)[1]
    assert (second["email"], second["phone_number"], second["linked_id"]) == ("a@x.io", "2", 1)


def test_repeating_a_request_changes_nothing_and_answers_the_same(client, conn):
    first = identify(client, "a@x.io", "1"), identify(client, "b@x.io", "1")
    before = all_contacts(conn)
    assert (identify(client, "a@x.io", "1"), identify(client, "b@x.io", "1")) == (first[1], first[1])
    assert all_contacts(conn) == before


def test_values_known_on_different_rows_are_not_new(client, conn):
    identify(client, "a@x.io", "1")
    identify(client, "b@x.io", "1")
    identify(client, "a@x.io", "2")
    assert identify(client, "b@x.io", "2") == (200, customer(1, ["a@x.io", "b@x.io"], ["1", "2"], [2, 3]))
    assert len(all_contacts(conn)) == 3


def test_absent_value_is_never_new_information(client, conn):
    identify(client, "a@x.io", "1")
    identify(client, "a@x.io", None)
    identify(client, None, "1")
    assert len(all_contacts(conn)) == 1


def test_merge_relinks_the_demoted_primarys_secondaries_to_the_survivor(client, conn):
    identify(client, "a@x.io", "1")
    identify(client, "b@x.io", "2")
    identify(client, "c@x.io", "2")
    assert identify(client, "a@x.io", "2") == (
        200,
        customer(1, ["a@x.io", "b@x.io", "c@x.io"], ["1", "2"], [2, 3]),
    )
    links = {row["id"]: (row["link_precedence"], row["linked_id"]) for row in all_contacts(conn)}
    assert links == {1: ("primary", None), 2: ("secondary", 1), 3: ("secondary", 1)}


def test_merge_with_a_new_value_also_adds_a_secondary(client, conn):
    identify(client, "a@x.io", "1")
    identify(client, "b@x.io", "2")
    identify(client, "c@x.io", "2")
    status, body = identify(client, "c@x.io", "1")
    assert status == 200 and body["contact"]["secondaryContactIds"] == [2, 3]
    status, body = identify(client, "new@x.io", "1")
    assert body == customer(1, ["a@x.io", "b@x.io", "c@x.io", "new@x.io"], ["1", "2"], [2, 3, 4])


def test_survivor_is_the_earliest_created_even_with_a_larger_id(client, conn):
    newer = insert_contact(conn, "new@x.io", "1")
    older = insert_contact(conn, "old@x.io", "2", created_at="now() - interval '1 day'")
    assert identify(client, "new@x.io", "2") == (
        200,
        customer(older, ["old@x.io", "new@x.io"], ["2", "1"], [newer]),
    )


def test_primary_values_come_first_then_creation_order(client, conn):
    primary = insert_contact(conn, "p@x.io", "9", created_at="now()")
    early = insert_contact(conn, "s@x.io", "8", primary, created_at="now() - interval '1 hour'")
    late = insert_contact(conn, "t@x.io", "9", primary, created_at="now() + interval '1 hour'")
    assert identify(client, "t@x.io") == (
        200,
        customer(primary, ["p@x.io", "s@x.io", "t@x.io"], ["9", "8"], [early, late]),
    )


def test_deleted_rows_never_match_and_never_show(client, conn):
    primary = insert_contact(conn, "a@x.io", "1")
    insert_contact(conn, "gone@x.io", "1", primary, deleted_at="2026-01-01")
    assert identify(client, "a@x.io") == (200, customer(primary, ["a@x.io"], ["1"], []))
    ghost = insert_contact(conn, "ghost@x.io", "7", deleted_at="2026-01-01")
    assert identify(client, "ghost@x.io", "7") == (200, customer(ghost + 1, ["ghost@x.io"], ["7"], []))
    assert len(all_contacts(conn)) == 4


def test_normalised_values_are_stored_and_match(client, conn):
    identify(client, "  Lorraine@HillValley.EDU ", "+1 (555) 010-9999")
    assert identify(client, "lorraine@hillvalley.edu", "+1-555-010-9999")[1] == customer(
        1, ["lorraine@hillvalley.edu"], ["+15550109999"], []
    )
    identify(client, None, 123456)
    assert identify(client, None, "123 456") == (200, customer(2, [], ["123456"], []))
    assert [row["phone_number"] for row in all_contacts(conn)] == ["+15550109999", "123456"]


def test_other_keys_are_ignored(client, conn):
    assert identify(client, "a@x.io", "1", orderId=42, extra={"x": 1})[0] == 200
    assert len(all_contacts(conn)) == 1


def test_created_at_is_the_moment_the_row_is_written_not_the_transaction_start(service_url):
    conn = psycopg2.connect(service_url)
    try:
        repository.identify(conn, "a@x.io", "1")
        time.sleep(0.05)
        repository.identify(conn, "a@x.io", "2")
        conn.commit()
        rows = all_contacts(conn)
    finally:
        conn.close()
    assert (rows[1]["created_at"] - rows[0]["created_at"]).total_seconds() >= 0.05


def test_repository_reports_what_it_created_and_merged(service_url):
    conn = psycopg2.connect(service_url)
    try:
        calls = [("a@x.io", "1"), ("b@x.io", "2"), ("a@x.io", "3"), ("b@x.io", "1"), ("b@x.io", "1")]
        outcomes = [repository.identify(conn, *call) for call in calls]
        conn.rollback()
    finally:
        conn.close()
    assert [(o.created, o.merged) for o in outcomes] == [
        ("primary", []),
        ("primary", []),
        ("secondary", []),
        (None, [2]),
        (None, []),
    ]
