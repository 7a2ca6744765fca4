"""Erasure on request and unlinking (issue 13): what is blanked, what remains, who may, and the races."""

import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import TASK, all_contacts, identify, recorded_events
from servers import free_port, post_json, send, start_gunicorn, stop
from test_concurrency import assert_links_name_live_primaries, assert_primaries_are_oldest, customers
from test_import import jsonl, timed
from test_renormalise import assert_each_value_in_one_customer

from identity.admin import EXAMPLE_ADMIN_KEY
from identity.erasure import GEORGE_ERASED, LORRAINE_SPLIT, NOTHING_ERASED

ADMIN = {"Authorization": f"Bearer {EXAMPLE_ADMIN_KEY}"}


@pytest.fixture
def admin_app(make):
    return make(IDENTITY_ADMIN_KEYS=EXAMPLE_ADMIN_KEY)


@pytest.fixture
def admin(admin_app):
    return admin_app.test_client()


def send_task(client):
    """The task's five requests."""
    for email, phone_number in TASK:
        assert identify(client, email, phone_number)[0] == 200


def test_the_documented_examples_are_real_answers(admin):
    send_task(admin)
    assert admin.delete("/contacts/4", headers=ADMIN).get_json() == GEORGE_ERASED
    erased = admin.delete("/contacts?phoneNumber=123456", headers=ADMIN)
    assert (erased.status_code, erased.get_json()) == (200, LORRAINE_SPLIT)
    assert admin.delete("/contacts?phoneNumber=123456", headers=ADMIN).get_json() == NOTHING_ERASED


def test_erasing_a_customer_blanks_and_deletes_every_contact_and_event_value(admin, conn):
    send_task(admin)
    assert admin.delete("/contacts/4", headers=ADMIN).status_code == 200
    rows = {row["id"]: row for row in all_contacts(conn)}
    assert [(rows[i]["email"], rows[i]["phone_number"]) for i in (3, 4)] == [(None, None)] * 2
    assert rows[3]["deleted_at"] is not None and rows[4]["deleted_at"] is not None
    assert rows[1]["deleted_at"] is None and rows[2]["linked_id"] == 1  # nothing else changes
    george = [e for e in recorded_events(conn) if set(e[2]) & {3, 4}]
    assert [e[3:5] for e in george] == [(None, None)] * len(george)
    assert george[-1] == ("erased", 3, [3, 4], None, None, "customer erased")


def test_erasing_again_answers_zero_counts_and_an_unknown_id_404(admin):
    send_task(admin)
    admin.delete("/contacts/3", headers=ADMIN)
    again = admin.delete("/contacts/4", headers=ADMIN)
    assert again.get_json() == {"contactIds": [], "emails": 0, "phoneNumbers": 0, "events": 0}
    unknown = admin.delete("/contacts/99", headers=ADMIN)
    assert (unknown.status_code, unknown.get_json()["error"]["code"]) == (404, "not_found")


def test_an_erased_customer_never_matches_nor_shows(admin):
    send_task(admin)
    admin.delete("/contacts/3", headers=ADMIN)
    for path in (
        "/contacts/3",
        "/contacts/4",
        "/contacts/4/history",
        "/contacts?email=george@hillvalley.edu",
    ):
        assert admin.get(path).status_code == 404, path
    assert identify(admin, "george@hillvalley.edu", "717171")[1]["contact"] == {
        "primaryContatctId": 5,
        "emails": ["george@hillvalley.edu"],
        "phoneNumbers": ["717171"],
        "secondaryContactIds": [],
    }


def test_erasing_a_value_splits_its_customer_by_what_remains(admin, conn):
    send_task(admin)
    answer = admin.delete("/contacts?email=george@hillvalley.edu", headers=ADMIN).get_json()
    # 3 kept 919191; 4 was joined to it only by the request (george, 717171), which no longer holds.
    assert [c["primaryContatctId"] for c in answer["customers"]] == [3, 4]
    assert (answer["contacts"], answer["deleted"]) == (1, 0)
    assert admin.get("/contacts/4").get_json()["contact"]["secondaryContactIds"] == []
    assert not [e for e in recorded_events(conn) if "george@hillvalley.edu" in (e[3], e[4])]


def test_a_contact_left_with_no_value_is_deleted_and_its_customer_keeps_the_rest(admin, conn):
    admin.post("/identify", json={"email": "a@shop.in", "phoneNumber": "1001"})
    admin.post("/identify", json={"phoneNumber": "1001"})
    admin.post("/identify", json={"email": "b@shop.in", "phoneNumber": "1001"})
    answer = admin.delete("/contacts?email=a@shop.in", headers=ADMIN).get_json()
    # The primary, left with 1001, still joins b@ through it.
    assert answer["customers"] == [
        {
            "primaryContatctId": 1,
            "emails": ["b@shop.in"],
            "phoneNumbers": ["1001"],
            "secondaryContactIds": [2],
        }
    ]
    answer = admin.delete("/contacts?phoneNumber=1001", headers=ADMIN).get_json()
    assert (answer["contacts"], answer["deleted"]) == (2, 1)
    assert [c["primaryContatctId"] for c in answer["customers"]] == [2]
    rows = {row["id"]: row for row in all_contacts(conn)}
    assert rows[1]["deleted_at"] is not None and rows[2]["linked_id"] is None  # no live row names 1


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer api-key-0123"}]
)
@pytest.mark.parametrize("path", ["/contacts/1", "/contacts?email=a@shop.in"])
def test_erasure_needs_an_admin_key(make, conn, headers, path):
    client = make(IDENTITY_ADMIN_KEYS=EXAMPLE_ADMIN_KEY, IDENTITY_API_KEYS="api-key-0123").test_client()
    client.post("/identify", json={"email": "a@shop.in"}, headers={"Authorization": "Bearer api-key-0123"})
    response = client.delete(path, headers=headers)
    assert (response.status_code, response.get_json()["error"]["code"]) == (401, "unauthorized")
    assert all_contacts(conn)[0]["email"] == "a@shop.in"


@pytest.mark.parametrize("query", ["", "?email=a@shop.in&phoneNumber=1", "?email=%20", "?phoneNumber=abc"])
def test_a_bad_erasure_is_refused_and_erases_nothing(admin, conn, query):
    admin.post("/identify", json={"email": "a@shop.in", "phoneNumber": "1"})
    response = admin.delete(f"/contacts{query}", headers=ADMIN)
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, "invalid_request")
    assert [(r["email"], r["phone_number"]) for r in all_contacts(conn)] == [("a@shop.in", "1")]


def test_the_openapi_document_lists_the_erasure_routes_behind_the_admin_key(admin):
    paths = admin.get("/openapi.json").get_json()["paths"]
    for path in ("/contacts/{contact_id}", "/contacts"):
        assert paths[path]["delete"]["security"] == [{"adminKey": []}]
        assert paths[path]["get"]["security"] != [{"adminKey": []}]
    examples = paths["/contacts"]["delete"]["responses"]["200"]["content"]["application/json"]["examples"]
    assert examples["split"]["value"] == LORRAINE_SPLIT


# The CLI.


def test_the_cli_erases_a_customer_and_a_value(admin_app, admin, conn):
    send_task(admin)
    runner = admin_app.test_cli_runner()
    by_contact = runner.invoke(args=["erase", "--contact", "4"])
    assert by_contact.exit_code == 0, by_contact.output
    assert json.loads(by_contact.output) == GEORGE_ERASED
    by_phone = runner.invoke(args=["erase", "--phone", "123-456"])
    assert json.loads(by_phone.output) == LORRAINE_SPLIT
    assert runner.invoke(args=["erase", "--contact", "99"]).exit_code == 1
    assert [e[0] for e in recorded_events(conn)][-3:] == ["merged", "erased", "erased"]


@pytest.mark.parametrize(
    "args",
    [["erase"], ["erase", "--contact", "1", "--email", "a@b.c"], ["erase", "--phone", "call me"]],
)
def test_the_cli_refuses_an_erasure_that_makes_no_sense(admin_app, args):
    assert admin_app.test_cli_runner().invoke(args=args).exit_code == 2


def test_blocked_add_unlink_splits_the_customers_a_junk_value_joined(admin_app, admin, conn):
    for email in ("a@shop.in", "b@shop.in", "c@shop.in"):
        admin.post("/identify", json={"email": email, "phoneNumber": "0000000"})
    admin.post("/identify", json={"email": "a@shop.in", "phoneNumber": "5550001"})
    result = admin_app.test_cli_runner().invoke(
        args=["blocked", "add", "0000000", "--reason", "placeholder", "--unlink"]
    )
    assert result.exit_code == 0, result.output
    assert "unlinked: its holders are 3 customer(s) now: 1, 2, 3" in result.output
    rows = {row["id"]: row for row in all_contacts(conn)}
    assert {i: row["linked_id"] for i, row in rows.items()} == {1: None, 2: None, 3: None, 4: 1}
    assert rows[2]["phone_number"] == "0000000"  # the rows keep the value
    assert [e[0] for e in recorded_events(conn)][-1] == "unlinked"


def test_unlink_takes_one_exact_value(admin_app):
    result = admin_app.test_cli_runner().invoke(
        args=["blocked", "add", "0+", "--pattern", "--kind", "phone", "--reason", "r", "--unlink"]
    )
    assert result.exit_code == 2


# Logs.


def test_no_log_line_carries_an_erased_value(admin, capsys):
    send_task(admin)
    admin.get("/contacts?email=biffsucks@hillvalley.edu")
    admin.delete("/contacts?email=biffsucks@hillvalley.edu", headers=ADMIN)
    admin.delete("/contacts/1", headers=ADMIN)
    logged = capsys.readouterr().err
    assert '"customers merged"' in logged and '"value erased"' in logged and '"customer erased"' in logged
    for value in ("biffsucks", "lorraine", "mcfly", "123456", "717171", "george"):
        assert value not in logged, value


# Racing /identify through gunicorn.

SHOPPERS = 40


def storm_body(rng):
    """An order of one of a few shoppers, sometimes with a neighbour's phone number: merges."""
    shopper = rng.randrange(SHOPPERS)
    phone_owner = (shopper + 1) % SHOPPERS if rng.random() < 0.2 else shopper
    return {"email": f"s{shopper}@storm.test", "phoneNumber": f"7{phone_owner:03d}"}


def eraser(port, rng, count):
    """Erase customers and values of the storm's shoppers, one by one; every answer's status."""
    statuses = []
    for _ in range(count):
        shopper = rng.randrange(SHOPPERS)
        path = rng.choice(
            [
                f"/contacts?email=s{shopper}@storm.test",
                f"/contacts?phoneNumber=7{shopper:03d}",
                f"/contacts/{shopper + 1}",
            ]
        )
        statuses.append(send(port, "DELETE", path, headers=ADMIN)[0])
    return statuses


@pytest.mark.slow
def test_erasures_racing_a_storm_of_identify_and_an_import_keep_every_invariant(database_url, conn, tmp_path):
    rng = random.Random(13)
    bodies = [storm_body(rng) for _ in range(1500)]
    # An import of the same shoppers' orders, older than any live row, beside them.
    history = jsonl(tmp_path / "h.jsonl", timed([storm_body(rng) for _ in range(300)], range(300)))
    importing = [sys.executable, "-m", "flask", "--app", "wsgi", "import-contacts", history]
    port = free_port()
    process, _log = start_gunicorn(
        tmp_path, port, DATABASE_URL=database_url, IDENTITY_ADMIN_KEYS=EXAMPLE_ADMIN_KEY, WEB_CONCURRENCY=4
    )
    try:
        importer = subprocess.Popen(
            importing, env={**os.environ, "DATABASE_URL": database_url}, stdout=subprocess.PIPE, text=True
        )
        with ThreadPoolExecutor(12) as pool:
            erasing = [pool.submit(eraser, port, random.Random(seed), 40) for seed in range(4)]
            answers = list(pool.map(lambda body: post_json(port, body), bodies))
            erased = [status for future in erasing for status in future.result()]
        imported = importer.communicate(timeout=300)[0]
    finally:
        stop(process)
    assert importer.returncode == 0, imported
    assert {status for status, _, _ in answers} == {200}
    assert set(erased) <= {200, 404} and erased.count(200) > 50
    assert_invariants(all_contacts(conn), recorded_events(conn))


def assert_invariants(rows, recorded):
    """What every serial order of identify and erasure leaves: see the checks below."""
    live = {row["id"]: row for row in rows if row["deleted_at"] is None}
    assert_links_name_live_primaries(live)
    assert_primaries_are_oldest(customers(live))
    assert_each_value_in_one_customer(live)
    assert not [row for row in rows if row["deleted_at"] and (row["email"] or row["phone_number"])]
    assert not [row for row in live.values() if not (row["email"] or row["phone_number"])]
    assert_customers_are_joined_by_evidence(live, recorded)


def assert_customers_are_joined_by_evidence(live, recorded):
    """Each customer's rows are connected by shared values and recorded requests' pairs: nothing else."""
    parent = {row_id: row_id for row_id in live}

    def root(node):
        while parent[node] != node:
            node = parent[node]
        return node

    holders = {}
    for row in live.values():
        for value in (("email", row["email"]), ("phone", row["phone_number"])):
            if value[1] is not None:
                parent[root(row["id"])] = root(holders.setdefault(value, row["id"]))
    for kind, _, _, email, phone_number, _ in recorded:
        if (
            kind in ("created", "merged")
            and ("email", email) in holders
            and ("phone", phone_number) in holders
        ):
            a, b = holders["email", email], holders["phone", phone_number]
            if (live[a]["linked_id"] or a) == (live[b]["linked_id"] or b):
                parent[root(a)] = root(b)
    for primary_id, members in customers(live).items():
        assert {root(row["id"]) for row in members} == {root(primary_id)}, f"customer {primary_id} not joined"


def test_the_evidence_check_reports_a_customer_nothing_joins():
    rows = [
        {"id": 1, "email": "a@x.test", "phone_number": "1", "linked_id": None},
        {"id": 2, "email": "b@x.test", "phone_number": "2", "linked_id": 1},
    ]
    live = {row["id"]: row for row in rows}
    with pytest.raises(AssertionError, match="customer 1 not joined"):
        assert_customers_are_joined_by_evidence(live, [])
    # A recorded request that carried a@ and 2 is the evidence that joins them.
    assert_customers_are_joined_by_evidence(live, [("merged", 1, [1, 2], "a@x.test", "2", None)])


def test_unlinking_more_values_than_the_lock_table_fits_is_a_clear_error(admin_app, conn):
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('max_locks_per_transaction')::int"
            " * current_setting('max_connections')::int"
        )
        # Well past the shared lock table, whose size also counts background processes and some slack.
        rows = 3 * cur.fetchone()[0]
        cur.execute(
            "INSERT INTO contact (email, phone_number, linked_id, link_precedence)"
            " SELECT 'j' || i || '@junk.test', '0000000', CASE WHEN i > 1 THEN 1 END,"
            " CASE WHEN i > 1 THEN 'secondary' ELSE 'primary' END FROM generate_series(1, %s) i",
            (rows,),
        )
    result = admin_app.test_cli_runner().invoke(
        args=["blocked", "add", "0000000", "--reason", "r", "--unlink"]
    )
    assert result.exit_code == 1
    assert "raise max_locks_per_transaction" in result.output
    assert [row["linked_id"] for row in all_contacts(conn)][1:3] == [1, 1]  # nothing was re-derived
