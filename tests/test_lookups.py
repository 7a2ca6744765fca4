"""GET /contacts/{id} and GET /contacts?email=|phoneNumber=: the customer, read and never written."""

from urllib.parse import urlencode

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

from conftest import make_app
from helpers import all_contacts, identify
from tcp_proxy import free_port

LORRAINE = {
    "primaryContatctId": 1,
    "emails": ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"],
    "phoneNumbers": ["123456"],
    "secondaryContactIds": [2],
}
GEORGE = {
    "primaryContatctId": 3,
    "emails": ["george@hillvalley.edu", "biffsucks@hillvalley.edu"],
    "phoneNumbers": ["919191", "717171"],
    "secondaryContactIds": [4],
}
BIGINT_MAX = 2**63 - 1


def seed(client):
    """The task's customers: Lorraine (1, secondary 2) and George (3) with Biff merged in (4)."""
    for email, phone_number in [
        ("lorraine@hillvalley.edu", "123456"),
        ("mcfly@hillvalley.edu", "123456"),
        ("george@hillvalley.edu", "919191"),
        ("biffsucks@hillvalley.edu", "717171"),
        ("george@hillvalley.edu", "717171"),
    ]:
        assert identify(client, email, phone_number)[0] == 200


def get(client, url):
    """GET url; return (status, json)."""
    response = client.get(url)
    assert response.content_type == "application/json"
    return response.status_code, response.get_json()


def by_query(client, **query):
    """GET /contacts with the query string given."""
    return get(client, f"/contacts?{urlencode(query)}")


def error_code(answer):
    """(status, the error's code) of an answer."""
    status, body = answer
    return status, body["error"]["code"]


@pytest.mark.parametrize(("contact_id", "customer"), [(1, LORRAINE), (2, LORRAINE), (3, GEORGE), (4, GEORGE)])
def test_any_contact_id_answers_with_its_whole_customer(client, contact_id, customer):
    seed(client)
    assert get(client, f"/contacts/{contact_id}") == (200, {"contact": customer})


def test_an_unknown_id_is_a_json_404(client):
    seed(client)
    not_found = {"error": {"code": "not_found", "message": "No live contact has this id."}}
    assert get(client, "/contacts/5") == (404, not_found)


def soft_delete(conn, contact_id):
    """Mark one contact deleted, as an operator would."""
    with conn.cursor() as cur:
        cur.execute("UPDATE contact SET deleted_at = clock_timestamp() WHERE id = %s", (contact_id,))


def test_a_deleted_contact_is_not_found_and_drops_out_of_its_customer(client, conn):
    seed(client)
    soft_delete(conn, 2)
    assert error_code(get(client, "/contacts/2")) == (404, "not_found")
    lorraine = {**LORRAINE, "emails": ["lorraine@hillvalley.edu"], "secondaryContactIds": []}
    assert get(client, "/contacts/1") == (200, {"contact": lorraine})
    assert error_code(by_query(client, email="mcfly@hillvalley.edu")) == (404, "not_found")


def test_a_primary_is_never_soft_deleted_by_hand_so_it_never_hides_its_customer(client, conn):
    """Issue 13: a deleted primary would hide its customer; only erasure, which re-derives it, deletes one."""
    seed(client)
    with pytest.raises(psycopg2.errors.CheckViolation, match="live contacts are linked to it"):
        soft_delete(conn, 3)
    for url in ["/contacts/2", "/contacts/3", "/contacts/4", "/contacts?email=biffsucks@hillvalley.edu"]:
        assert get(client, url)[0] == 200, url


@pytest.mark.parametrize("contact_id", ["abc", "1.5", "-1", "+1", "1e3", "%20", "0x10", "１", "1/2"])
def test_an_id_that_is_not_a_non_negative_integer_is_a_json_404(client, contact_id):
    seed(client)
    assert error_code(get(client, f"/contacts/{contact_id}")) == (404, "not_found")


@pytest.mark.parametrize("contact_id", [0, BIGINT_MAX])
def test_ids_beyond_any_contact_are_a_json_404(client, contact_id):
    seed(client)
    assert error_code(get(client, f"/contacts/{contact_id}")) == (404, "not_found")


@pytest.mark.parametrize("contact_id", [str(BIGINT_MAX + 1), str(10**30), "9" * 5000])
def test_ids_beyond_bigint_are_a_json_404_without_asking_the_database(database_url, contact_id):
    client = make_app(make_dsn(database_url, port=free_port())).test_client()
    assert error_code(get(client, f"/contacts/{contact_id}")) == (404, "not_found")
    # The largest bigint does go to the database, which here does not answer.
    assert error_code(get(client, f"/contacts/{BIGINT_MAX}")) == (503, "database_unavailable")


@pytest.mark.parametrize(
    "query",
    [
        {"email": "mcfly@hillvalley.edu"},
        {"email": "  McFly@HillValley.EDU\t"},
        {"phoneNumber": "123456"},
        {"phoneNumber": "12-34 56"},
        {"phoneNumber": "(123) 456"},
        {"email": "", "phoneNumber": "123456"},
        {"email": "lorraine@hillvalley.edu", "orderId": "7"},
    ],
)
def test_an_identifier_answers_with_its_customer_normalised_as_identify_does(client, query):
    seed(client)
    assert by_query(client, **query) == (200, {"contact": LORRAINE})


def test_a_phone_number_with_a_plus_is_found(client):
    assert identify(client, "doc@hillvalley.edu", "+1 (555) 010-9999")[0] == 200
    status, body = by_query(client, phoneNumber="+1-555-010-9999")
    assert (status, body["contact"]["phoneNumbers"]) == (200, ["+15550109999"])
    # Unencoded, a + in a query string is a space: another number, which nobody holds.
    assert error_code(get(client, "/contacts?phoneNumber=+15550109999")) == (404, "not_found")


@pytest.mark.parametrize("query", [{"email": "nobody@hillvalley.edu"}, {"phoneNumber": "999"}])
def test_an_unknown_identifier_is_a_json_404(client, query):
    seed(client)
    message = "No live contact has this email or phone number."
    assert by_query(client, **query) == (404, {"error": {"code": "not_found", "message": message}})


EXACTLY_ONE = {"_schema": ["Give exactly one of email and phoneNumber."]}


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ({}, EXACTLY_ONE),
        ({"orderId": "7"}, EXACTLY_ONE),
        ({"email": "  ", "phoneNumber": ""}, EXACTLY_ONE),
        ({"email": "mcfly@hillvalley.edu", "phoneNumber": "123456"}, EXACTLY_ONE),
        (
            {"email": "no-at-sign"},
            {"email": ["Must be an address with one @, text on both sides, no spaces."]},
        ),
        (
            {"phoneNumber": "12a"},
            {"phoneNumber": ["Must be 1 to 20 digits, with an optional leading + and separators."]},
        ),
    ],
)
def test_both_neither_or_an_invalid_identifier_is_a_400_naming_the_fields(client, conn, query, fields):
    seed(client)
    status, body = by_query(client, **query)
    assert (status, body["error"]["code"], body["error"]["fields"]) == (400, "invalid_request", fields)


def test_lookups_write_nothing(client, conn, database_url):
    seed(client)
    before = all_contacts(conn)
    with conn.cursor() as cur:
        # Every new session of this database now refuses to write: a lookup that wrote would fail.
        name = sql.Identifier(parse_dsn(database_url)["dbname"])
        cur.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(name))
    app = make_app(database_url)
    reader = app.test_client()
    lookups = [
        "/contacts/2",
        "/contacts/4",
        "/contacts?email=mcfly@hillvalley.edu",
        "/contacts?phoneNumber=717171",
    ]
    for url in lookups:
        assert get(reader, url)[0] == 200, url
    # The same sessions refuse a request that does write, so the check above can fail: a read-only
    # server is one mid-failover, so the refusal is a 503 (tests/test_primary_changes.py).
    assert identify(reader, "new@hillvalley.edu", "1")[0] == 503
    app.extensions["identity_pool"].closeall()
    assert all_contacts(conn) == before
