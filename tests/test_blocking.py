"""Blocked values: never matched, stored or counted as new; set by admins; on every worker within a second."""

import json
import re
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import all_contacts, identify
from servers import free_port, post_json, start_gunicorn, stop
from test_concurrency import assert_serialisable, live_contacts, storm_requests

from conftest import make_app
from identity import blocking
from identity.admin import BLOCK_SUPPORT_PHONE, EXAMPLE_ADMIN_KEY, SUPPORT_PHONE
from identity.settings import BadSetting

ADMIN_KEY = "admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
RECOMMENDED = blocking.compiled(0, [vars(entry) for entry in blocking.RECOMMENDED])
# Each entry of the recommended list, with values it must block and near misses it must not.
BLOCKED_BY_RECOMMENDED = [
    ("phone", "0000000"),
    ("phone", "+1111111111"),
    ("phone", "99999999999999"),
    ("phone", "1234567890"),
    ("phone", "0123456789"),
    ("email", "test@test.com"),
    ("email", "noemail@shop.in"),
    ("email", "none@gmail.com"),
    ("email", "na@x.org"),
    ("email", "anyone@example.com"),
    ("email", "a.b@mail.example.org"),
    ("email", "c@example.net"),
]
NOT_BLOCKED_BY_RECOMMENDED = [
    ("phone", "123456"),  # the task's own examples
    ("phone", "919191"),
    ("phone", "717171"),
    ("phone", "111111"),  # six digits: short codes and extensions
    ("phone", "11111112"),
    ("phone", "12345678901"),
    ("phone", "+911234567890"),
    ("email", "lorraine@hillvalley.edu"),
    ("email", "test@test.co"),
    ("email", "tester@test.com"),
    ("email", "nonesuch@shop.in"),
    ("email", "nana@x.org"),
    ("email", "a@example.co"),
    ("email", "a@notexample.com"),
    ("email", "example.com@gmail.com"),
]


@pytest.fixture
def admin_app(make):
    return make(IDENTITY_ADMIN_KEYS=ADMIN_KEY)


@pytest.fixture
def admin(admin_app):
    return admin_app.test_client()


def block(client, kind, value, pattern=False, reason="test"):
    response = client.post(
        "/admin/blocked-values",
        json={"kind": kind, "value": value, "pattern": pattern, "reason": reason},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def seen_by_every_worker():
    """Wait out the interval after which every worker has re-read the list."""
    time.sleep(blocking.REFRESH_SECONDS + 0.2)


@pytest.mark.parametrize(("kind", "value"), BLOCKED_BY_RECOMMENDED)
def test_each_recommended_entry_blocks_its_values(kind, value):
    assert RECOMMENDED.blocks(kind, value)


@pytest.mark.parametrize(("kind", "value"), NOT_BLOCKED_BY_RECOMMENDED)
def test_the_recommended_list_spares_real_values_and_the_tasks_examples(kind, value):
    assert not RECOMMENDED.blocks(kind, value)


def test_every_recommended_entry_blocks_at_least_one_listed_value():
    for entry in blocking.RECOMMENDED:
        alone = blocking.compiled(0, [vars(entry)])
        assert any(alone.blocks(kind, value) for kind, value in BLOCKED_BY_RECOMMENDED), entry


KINDS = ("email", "phone")
# Patterns an operator might add beside the recommended ones, joinable or not, and values to try them on.
MORE_PATTERNS = [
    r".+@junk2\.test",
    r"a|ab",  # the first branch matches a prefix of "ab": the joined expression must go on to the next
    r"\+?9991[0-9]*",
    r"(?i)shop@.+",  # inline flags: checked alone
    r"(?u)12",  # a global flag that changes nothing, refused inside a group
    r"(?P<d>[0-9])(?P=d)",  # a named group and its backreference
    r"x(?:y|z)+",
]
TRIED_VALUES = [value for _, value in BLOCKED_BY_RECOMMENDED + NOT_BLOCKED_BY_RECOMMENDED] + [
    "a",
    "ab",
    "abc",
    "q@junk2.test",
    "q@junk2xtest",
    "+99912",
    "9991",
    "SHOP@x.in",
    "12",
    "77",
    "78",
    "xyzzy",
    "xzy",
]


def test_patterns_joined_into_one_expression_block_exactly_what_each_alone_blocks():
    recommended = [vars(entry) for entry in blocking.RECOMMENDED if entry.pattern]
    more = [{"kind": kind, "value": pattern, "pattern": True} for kind in KINDS for pattern in MORE_PATTERNS]
    joined = blocking.compiled(0, recommended + more)
    for kind in KINDS:
        alone = [re.compile(e["value"]) for e in recommended + more if e["kind"] == kind]
        assert len(joined.patterns[kind]) < len(alone)
        for value in TRIED_VALUES:
            expected = any(pattern.fullmatch(value) for pattern in alone)
            assert joined.blocks(kind, value) == expected, (kind, value)


def test_a_backreference_keeps_its_group_when_other_patterns_are_joined():
    blocklist = blocking.compiled(
        0, [{"kind": "phone", "value": v, "pattern": True} for v in (r"5[0-9]*", r"\+?([0-9])\1{6,}", "6+")]
    )
    assert blocklist.blocks("phone", "3333333")
    assert not blocklist.blocks("phone", "3333334")


def test_a_fresh_install_blocks_nothing(client, conn):
    status, answer = identify(client, "test@test.com", "0000000")
    assert status == 200
    assert answer["contact"]["emails"] == ["test@test.com"]
    assert [(r["email"], r["phone_number"]) for r in all_contacts(conn)] == [("test@test.com", "0000000")]


def test_a_blocked_email_is_treated_as_absent(admin, conn):
    block(admin, "email", "Test@Test.com")
    status, answer = identify(admin, "test@test.com", "5550001")
    assert status == 200
    assert answer["contact"]["emails"] == []
    assert [(r["email"], r["phone_number"]) for r in all_contacts(conn)] == [(None, "5550001")]


def test_a_blocked_phone_is_treated_as_absent_and_links_nobody(admin, conn):
    block(admin, "phone", "555-0100")
    identify(admin, "a@shop.in", "5550100")
    status, answer = identify(admin, "b@shop.in", "5550100")
    assert status == 200
    assert answer["contact"]["emails"] == ["b@shop.in"]
    assert answer["contact"]["secondaryContactIds"] == []
    assert [r["phone_number"] for r in all_contacts(conn)] == [None, None]


def test_a_request_with_only_blocked_values_is_refused_and_writes_nothing(admin, conn):
    block(admin, "email", "test@test.com")
    block(admin, "phone", r"9+", pattern=True)
    response = admin.post("/identify", json={"email": "test@test.com", "phoneNumber": "999"})
    assert response.status_code == 422
    assert response.get_json() == {
        "error": {"code": "blocked_value", "message": blocking.BlockedValue.description}
    }
    assert all_contacts(conn) == []


def test_rows_stored_before_keep_the_value_but_it_links_nothing_new(admin, conn):
    identify(admin, "shared@shop.in", "1001")
    block(admin, "email", "shared@shop.in")
    status, answer = identify(admin, "shared@shop.in", "2002")
    assert status == 200
    assert answer["contact"]["phoneNumbers"] == ["2002"]
    rows = all_contacts(conn)
    assert [(r["email"], r["phone_number"], r["linked_id"]) for r in rows] == [
        ("shared@shop.in", "1001", None),
        (None, "2002", None),
    ]
    assert identify(admin, None, "1001")[1]["contact"]["emails"] == ["shared@shop.in"]


def test_lookups_by_a_blocked_value_are_refused(admin):
    identify(admin, "shared@shop.in", "1001")
    block(admin, "email", "shared@shop.in")
    response = admin.get("/contacts?email=shared@shop.in")
    assert (response.status_code, response.get_json()["error"]["code"]) == (422, "blocked_value")
    assert admin.get("/contacts?phoneNumber=1001").status_code == 200


def test_a_change_reaches_another_worker_within_a_second(database_url, admin):
    other = make_app(database_url)
    try:
        assert identify(other.test_client(), "late@shop.in")[0] == 200  # its copy is loaded now
        block(admin, "email", "late@shop.in")
        seen_by_every_worker()
        assert identify(other.test_client(), "late@shop.in")[0] == 422
        admin.delete("/admin/blocked-values?kind=email&value=late@shop.in", headers=ADMIN)
        seen_by_every_worker()
        assert identify(other.test_client(), "late@shop.in")[0] == 200
    finally:
        other.extensions["identity_pool"].closeall()


# The admin API.


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer api-key-0123"}]
)
def test_admin_routes_need_an_admin_key(database_url, headers):
    app = make_app(database_url, IDENTITY_ADMIN_KEYS=ADMIN_KEY, IDENTITY_API_KEYS="api-key-0123")
    response = app.test_client().get("/admin/blocked-values", headers=headers)
    assert (response.status_code, response.get_json()["error"]["code"]) == (401, "unauthorized")
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
    app.extensions["identity_pool"].closeall()


def test_admin_routes_are_closed_without_admin_keys(client):
    response = client.get("/admin/blocked-values", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 401


def test_an_admin_key_is_no_api_key(database_url):
    app = make_app(database_url, IDENTITY_ADMIN_KEYS=ADMIN_KEY, IDENTITY_API_KEYS="api-key-0123")
    assert app.test_client().post("/identify", json={"email": "a@b.c"}, headers=ADMIN).status_code == 401
    app.extensions["identity_pool"].closeall()


@pytest.mark.parametrize(
    "settings",
    [
        {"IDENTITY_ADMIN_KEYS": ","},
        {"IDENTITY_ADMIN_KEYS": " "},
        {"IDENTITY_ADMIN_KEYS": "k", "IDENTITY_API_KEYS": "k"},
    ],
)
def test_admin_keys_that_make_no_sense_stop_the_start(database_url, settings):
    with pytest.raises(BadSetting, match="IDENTITY_ADMIN_KEYS"):
        make_app(database_url, **settings)


def test_block_list_and_unblock(admin):
    added = block(admin, "phone", "+1 (800) 555-0100", reason="support line")
    entry = added["blockedValue"]
    assert (entry["value"], entry["pattern"], added["added"]) == ("+18005550100", False, True)
    assert entry["addedBy"].startswith("admin key ")
    assert block(admin, "phone", "+18005550100") == {"blockedValue": entry, "added": False}
    listed = admin.get("/admin/blocked-values", headers=ADMIN).get_json()
    assert listed["blockedValues"] == [entry] and listed["version"] >= 1
    removed = admin.delete("/admin/blocked-values?kind=phone&value=%2B18005550100", headers=ADMIN)
    assert removed.get_json() == {"blockedValue": entry}
    again = admin.delete("/admin/blocked-values?kind=phone&value=%2B18005550100", headers=ADMIN)
    assert (again.status_code, again.get_json()["error"]["code"]) == (404, "not_found")
    assert admin.get("/admin/blocked-values", headers=ADMIN).get_json()["version"] > listed["version"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "fax", "value": "1", "reason": "r"}, "kind"),
        ({"kind": "phone", "value": "call me", "reason": "r"}, "value"),
        ({"kind": "email", "value": "no-at-sign", "reason": "r"}, "value"),
        ({"kind": "email", "value": "(unclosed", "pattern": True, "reason": "r"}, "value"),
        ({"kind": "email", "value": "a@b.c"}, "reason"),
        ({"kind": "email", "value": "a@b.c", "reason": ""}, "reason"),
    ],
)
def test_a_bad_entry_is_refused_and_blocks_nothing(admin, body, field):
    response = admin.post("/admin/blocked-values", json=body, headers=ADMIN)
    assert response.status_code == 400
    assert field in response.get_json()["error"]["fields"]
    assert admin.get("/admin/blocked-values", headers=ADMIN).get_json()["blockedValues"] == []


def test_the_documented_admin_examples_are_real_answers(database_url):
    app = make_app(database_url, IDENTITY_ADMIN_KEYS=EXAMPLE_ADMIN_KEY)
    client, headers = app.test_client(), {"Authorization": f"Bearer {EXAMPLE_ADMIN_KEY}"}
    added = client.post("/admin/blocked-values", json=BLOCK_SUPPORT_PHONE, headers=headers).get_json()
    when = added["blockedValue"].pop("addedAt")
    assert added == {
        "blockedValue": {k: v for k, v in SUPPORT_PHONE.items() if k != "addedAt"},
        "added": True,
    }
    listed = client.get("/admin/blocked-values", headers=headers).get_json()
    assert listed == {"version": 1, "blockedValues": [{**SUPPORT_PHONE, "addedAt": when}]}
    app.extensions["identity_pool"].closeall()


# The CLI.


def test_the_cli_adds_the_recommended_list_once_lists_and_removes(database_url):
    runner = make_app(database_url).test_cli_runner()
    first = runner.invoke(args=["blocked", "add", "--recommended"])
    assert first.exit_code == 0, first.output
    assert first.output.count("\nblocked ") + first.output.startswith("blocked ") == len(blocking.RECOMMENDED)
    again = runner.invoke(args=["blocked", "add", "--recommended"])
    assert again.output.count("already blocked") == len(blocking.RECOMMENDED)
    listed = json.loads(runner.invoke(args=["blocked", "list", "--json"]).output)
    assert {(e["kind"], e["value"]) for e in listed["blockedValues"]} == {
        (e.kind, e.value) for e in blocking.RECOMMENDED
    }
    assert all(e["addedBy"].startswith("cli ") for e in listed["blockedValues"])
    removed = runner.invoke(args=["blocked", "remove", "test@test.com"])
    assert removed.exit_code == 0 and "unblocked email value 'test@test.com'" in removed.output
    assert runner.invoke(args=["blocked", "remove", "test@test.com"]).exit_code == 1


@pytest.mark.parametrize(
    "args",
    [
        ["blocked", "add"],
        ["blocked", "add", "x@y.z", "--recommended", "--reason", "r"],
        ["blocked", "add", "x@y.z"],
        ["blocked", "add", "not a phone", "--reason", "r"],
    ],
)
def test_the_cli_refuses_what_makes_no_sense(database_url, args):
    result = make_app(database_url).test_cli_runner().invoke(args=args)
    assert result.exit_code == 2, result.output


def test_the_cli_blocks_what_the_service_then_refuses(database_url, client):
    runner = make_app(database_url).test_cli_runner()
    assert runner.invoke(args=["blocked", "add", "0000000", "--reason", "placeholder"]).exit_code == 0
    assert identify(client, None, "000-0000")[0] == 422


# A storm with a blocked value in every request.


def test_a_storm_with_a_blocked_value_in_every_request_keeps_every_invariant(database_url, conn, tmp_path):
    app = make_app(database_url, IDENTITY_ADMIN_KEYS=ADMIN_KEY)
    block(app.test_client(), "email", r"blocked\d+@storm\.test", pattern=True)
    block(app.test_client(), "phone", "999")
    app.extensions["identity_pool"].closeall()
    rng = random.Random(12)
    sent = [with_a_blocked_value(request, rng) for request in storm_requests(rng)]
    port = free_port()
    process, _log = start_gunicorn(tmp_path, port, DATABASE_URL=database_url)
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda request: post_json(port, request), sent))
    finally:
        stop(process)
    usable = [usable_part(request) for request in sent]
    assert [status for status, _, _ in answers] == [200] * len(sent)
    answered = [(r, body["contact"]) for r, (_, _, body) in zip(usable, answers, strict=True)]
    rows = live_contacts(conn)
    assert not [r for r in rows.values() if r["phone_number"] == "999" or "blocked" in (r["email"] or "")]
    assert_serialisable(rows, answered)


def with_a_blocked_value(request, rng):
    """The request as a body, with a blocked value in place of a missing one, or of one of its own."""
    email, phone_number = request
    if email is None or (phone_number is not None and rng.random() < 0.2):
        email = f"blocked{rng.randrange(50)}@storm.test"
    else:
        phone_number = "999" if phone_number is None or rng.random() < 0.1 else phone_number
    return {"email": email, "phoneNumber": phone_number}


def usable_part(body):
    """(email, phone number) of a body without its blocked values."""
    email = None if body["email"].startswith("blocked") else body["email"]
    phone_number = None if body["phoneNumber"] == "999" else body["phoneNumber"]
    return email, phone_number
