"""Explain every link: recorded events, a customer's history, the evidence path, limits and the audit."""

import json
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import TASK, all_contacts, identify
from servers import free_port, post_json, start_gunicorn, stop
from test_concurrency import assert_links_name_live_primaries, assert_primaries_are_oldest, customers

from conftest import make_app
from identity.admin import AUDIT_EXAMPLE
from identity.settings import BadSetting
from identity.views import GEORGE_HISTORY, GEORGE_PATH

ADMIN_KEY = "explain-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def without_times(value):
    """value with every `at` and `requestId` left out, at any depth: they differ on every run."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in ("at", "requestId")}
    if isinstance(value, list):
        return [without_times(item) for item in value]
    return value


@pytest.fixture
def admin_app(make):
    return make(IDENTITY_ADMIN_KEYS=ADMIN_KEY)


@pytest.fixture
def task_client(admin_app):
    """A client after the task's examples: customers 1 (contacts 1, 2) and 3 (contacts 3, 4)."""
    client = admin_app.test_client()
    for email, phone_number in TASK:
        assert identify(client, email, phone_number)[0] == 200
    return client


def test_the_documented_history_and_path_are_real_answers(task_client):
    history = task_client.get("/contacts/4/history").get_json()
    assert without_times(history) == without_times(GEORGE_HISTORY)
    assert without_times(task_client.get("/contacts/3/path/4").get_json()) == without_times(GEORGE_PATH)


def test_the_documented_audit_is_a_real_answer(task_client):
    assert without_times(task_client.get("/admin/audit", headers=ADMIN).get_json()) == AUDIT_EXAMPLE


def test_a_shared_value_is_the_evidence_when_there_is_one(task_client):
    path = task_client.get("/contacts/2/path/1").get_json()["path"]
    assert [step.get("evidence") or step["contact"]["id"] for step in path] == [
        2,
        {"kind": "shared phoneNumber", "phoneNumber": "123456"},
        1,
    ]


def test_a_contact_is_its_own_path(task_client):
    assert task_client.get("/contacts/3/path/3").get_json()["path"] == [
        {"contact": {"id": 3, "email": "george@hillvalley.edu", "phoneNumber": "919191"}}
    ]


@pytest.mark.parametrize(("a", "b"), [(1, 3), (3, 1), (1, 99), (99, 1)])
def test_contacts_of_two_customers_have_no_path(task_client, a, b):
    response = task_client.get(f"/contacts/{a}/path/{b}")
    assert (response.status_code, response.get_json()["error"]["code"]) == (404, "not_found")


def test_the_history_names_the_request_that_made_each_change(admin_app):
    client = admin_app.test_client()
    client.post("/identify", json={"email": "a@shop.in"}, headers={"X-Request-ID": "first-order"})
    client.post(
        "/identify", json={"email": "a@shop.in", "phoneNumber": "5"}, headers={"X-Request-ID": "second"}
    )
    events = client.get("/contacts/1/history").get_json()["events"]
    assert [(e["requestId"], e["kind"], e["contactIds"]) for e in events] == [
        ("first-order", "created", [1]),
        ("second", "created", [2, 1]),
    ]
    assert client.get("/contacts/9/history").status_code == 404


def test_links_made_before_events_were_recorded_are_the_last_resort(conn, admin_app):
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO contact (id, email, phone_number, linked_id, link_precedence) VALUES"
            " (1, 'old@shop.in', '1', NULL, 'primary'), (2, 'older@shop.in', '2', 1, 'secondary')"
        )
    conn.commit()
    client = admin_app.test_client()
    assert client.get("/contacts/1/history").get_json()["events"] == []
    path = client.get("/contacts/2/path/1").get_json()["path"]
    assert path[1] == {"evidence": {"kind": "linked before events"}}


def test_a_history_of_fifty_contacts_lists_each_creation_and_merge(admin_app):
    client = admin_app.test_client()
    for i in range(25):
        identify(client, f"a{i}@shop.in", "100")
        identify(client, f"b{i}@shop.in", f"{200 + i}")
    for i in range(25):
        identify(client, f"a{i}@shop.in", f"{200 + i}")
    events = client.get("/contacts/1/history").get_json()["events"]
    assert [e["kind"] for e in events].count("created") == 50
    assert [e["kind"] for e in events].count("merged") == 25
    assert client.get("/contacts/50/path/1").status_code == 200


def test_the_cli_audit_prints_tables_and_json(task_client, admin_app):
    runner = admin_app.test_cli_runner()
    text = runner.invoke(args=["audit"]).output
    assert (
        "Largest customers" in text
        and "george@hillvalley.edu" in text
        and "Recent refused links: none" in text
    )
    assert without_times(json.loads(runner.invoke(args=["audit", "--json"]).output)) == AUDIT_EXAMPLE


# Limits per customer.


def limited(database_url, **limits):
    """An app with these limits per customer."""
    return make_app(
        database_url, **{f"MAX_{name.upper()}_PER_CUSTOMER": value for name, value in limits.items()}
    )


def test_without_limits_a_customer_grows_freely(client):
    for i in range(30):
        identify(client, f"e{i}@shop.in", "1")
    assert len(identify(client, None, "1")[1]["contact"]["emails"]) == 30


def test_a_new_value_past_a_limit_is_refused_and_recorded(database_url, conn):
    app = limited(database_url, emails=2)
    client = app.test_client()
    identify(client, "a@shop.in", "1")
    identify(client, "b@shop.in", "1")
    status, answer = identify(client, "c@shop.in", "1")
    assert (status, answer["contact"]["emails"], answer["contact"]["phoneNumbers"]) == (
        200,
        ["c@shop.in"],
        [],
    )
    assert [(r["email"], r["phone_number"]) for r in all_contacts(conn)][-1] == ("c@shop.in", None)
    refused = client.get("/contacts/3/history").get_json()["events"][-1]
    assert (refused["kind"], refused["reason"]) == ("refused", "at most 2 emails per customer")
    assert client.get("/admin/audit").status_code == 401
    app.extensions["identity_pool"].closeall()


@pytest.mark.parametrize(
    ("body", "answered"), [(("a@shop.in", "2"), 1), (("c@shop.in", "1"), 3)], ids=["email of 1", "email of 3"]
)
def test_a_merge_past_a_limit_answers_the_emails_customer_and_writes_no_row(
    database_url, conn, body, answered
):
    app = limited(database_url, contacts=2)
    client = app.test_client()
    for email, phone_number in [("a@shop.in", "1"), ("b@shop.in", "1"), ("c@shop.in", "2")]:
        identify(client, email, phone_number)
    before = all_contacts(conn)
    status, answer = identify(client, *body)
    assert (status, answer["contact"]["primaryContatctId"]) == (200, answered)
    assert all_contacts(conn) == before


def test_the_limits_query_of_identify_v3_answers_as_identify_v2s(client, conn):
    """passed_limit_v2 counts with one plain query what passed_limit_v1 counted through a walk."""
    for email, phone_number in [("a@shop.in", "1"), ("b@shop.in", "1"), ("c@shop.in", "2"), (None, "3")]:
        identify(client, email, phone_number)
    identify(client, "d@shop.in", "3")
    identify(client, "c@shop.in", "3")  # merges customer 3 (c, 2) and customer 4 (3, d)
    primaries = [[1], [3], [1, 3]]
    values = [("a@shop.in", "1"), ("z@shop.in", None), (None, "9"), ("c@shop.in", "8"), ("y@shop.in", "3")]
    limits = [(None, None, None), (2, None, None), (3, 2, None), (None, None, 4), (1, 1, 1), (9, 9, 9)]
    answers = set()
    with conn.cursor() as cur:
        for ids in primaries:
            for email, phone_number in values:
                for knows_all in (True, False):
                    for limit in limits:
                        args = (ids, email, phone_number, knows_all, *limit)
                        cur.execute("SELECT passed_limit_v1(%s, %s, %s, %s, %s, %s, %s)", args)
                        before = cur.fetchone()
                        cur.execute("SELECT passed_limit_v2(%s, %s, %s, %s, %s, %s, %s)", args)
                        assert cur.fetchone() == before, args
                        answers.add(before[0])
    # Every check was met and passed: no limit, and each of the three limits.
    kinds = {None if answer is None else answer.split(" ", 3)[3] for answer in answers}
    assert kinds == {None, "emails per customer", "phone numbers per customer", "contacts per customer"}
    assert any(row["linked_id"] == 3 for row in all_contacts(conn))


def test_phone_numbers_have_their_limit_too(database_url):
    app = limited(database_url, phone_numbers=1)
    client = app.test_client()
    identify(client, "a@shop.in", "1")
    assert identify(client, "a@shop.in", "2")[1]["contact"]["phoneNumbers"] == ["1"]
    app.extensions["identity_pool"].closeall()


@pytest.mark.parametrize("value", ["-1", "many"])
def test_a_limit_that_makes_no_sense_stops_the_start(database_url, monkeypatch, value):
    monkeypatch.setenv("MAX_CONTACTS_PER_CUSTOMER", value)
    with pytest.raises(BadSetting, match="MAX_CONTACTS_PER_CUSTOMER"):
        make_app(database_url)


def test_racing_merges_near_a_limit_never_pass_it(database_url, conn, tmp_path):
    rng = random.Random(3)
    bodies = [
        {"email": f"s{rng.randrange(40)}@shop.in", "phoneNumber": str(rng.randrange(40))} for _ in range(500)
    ]
    port = free_port()
    process, _log = start_gunicorn(tmp_path, port, DATABASE_URL=database_url, MAX_CONTACTS_PER_CUSTOMER=4)
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda body: post_json(port, body), bodies))
    finally:
        stop(process)
    assert {status for status, _, _ in answers} == {200}
    rows = {row["id"]: row for row in all_contacts(conn)}
    grouped = customers(rows)
    assert max(len(members) for members in grouped.values()) <= 4
    assert_links_name_live_primaries(rows)
    assert_primaries_are_oldest(grouped)
    holders = defaultdict(set)
    for row in rows.values():
        for value in (("email", row["email"]), ("phone", row["phone_number"])):
            if value[1] is not None:
                holders[value].add(row["linked_id"] or row["id"])
    assert {value: found for value, found in holders.items() if len(found) > 1} == {}
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM contact_event WHERE kind = 'refused'")
        assert cur.fetchone()[0] > 0
