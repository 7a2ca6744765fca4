"""POST /identify/batch: each item answered as /identify would answer it alone, in order, all or nothing."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import make_app
from flask import Flask
from helpers import recorded_events
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError
from test_model import GEORGE_AND_BIFF, MERGE_RELINKS_SECONDARIES, bodies, real_table
from test_security import KEYS, bearer

from identity import repository
from identity.schemas import IdentifyBatchRequest

ORDERS = [
    {"email": "lorraine@hillvalley.edu", "phoneNumber": "123456"},
    {"email": "mcfly@hillvalley.edu", "phoneNumber": "123456"},
    {"email": "doc@hillvalley.edu", "phoneNumber": "555"},
]


def batch(client, items, headers=None):
    """POST /identify/batch with items; return (status, json)."""
    response = client.post("/identify/batch", json={"contacts": items}, headers=headers)
    return response.status_code, response.get_json()


def empty(conn):
    """Empty the tables and restart their ids, as a fresh install has them."""
    with conn.cursor() as cur:
        cur.execute("TRUNCATE contact, contact_event RESTART IDENTITY")


def single_answers(client, conn, items):
    """(answers, table, events) of posting the items one by one to /identify from an empty table."""
    empty(conn)
    answers = [client.post("/identify", json=item).get_json()["contact"] for item in items]
    return answers, real_table(conn), recorded_events(conn)


# Batches that split a history anywhere: the answers never depend on where one batch ends.
histories = st.integers(1, 25).flatmap(lambda n: st.lists(bodies, min_size=n, max_size=n))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=histories, cut=st.integers(0, 25))
@example(items=GEORGE_AND_BIFF, cut=0)
@example(items=MERGE_RELINKS_SECONDARIES, cut=2)
def test_batches_answer_and_write_as_the_items_posted_one_by_one(client, conn, items, cut):
    expected = single_answers(client, conn, items)
    empty(conn)
    answers = []
    for part in (items[:cut], items[cut:]):
        if part:
            status, body = batch(client, part)
            assert status == 200, body
            answers += body["contacts"]
    assert (answers, real_table(conn), recorded_events(conn)) == expected


ALICE, BOB = {"email": "alice@x.io", "phoneNumber": "111"}, {"email": "bob@x.io", "phoneNumber": "222"}
# Customers Alice and Bob exist before the batch; in each batch an item that changes nothing on its own
# (Bob's values, which Bob already holds) comes after, or before, an item that changes Bob's customer.
TOUCHED_BEFORE = {
    "merged_directly": [ALICE | {"phoneNumber": "222"}, BOB],
    "merged_through_a_value_the_batch_adds": [
        ALICE | {"phoneNumber": "333"},  # Alice gains 333
        {"email": "bob@x.io", "phoneNumber": "333"},  # so Bob's email joins Bob to Alice
        {"email": None, "phoneNumber": "222"},
    ],
    "merged_through_a_new_customer": [
        {"email": "carol@x.io", "phoneNumber": "444"},  # a new customer
        {"email": "carol@x.io", "phoneNumber": "222"},  # Bob gains carol's email by a merge
        {"email": "carol@x.io", "phoneNumber": "111"},  # and then Alice's customer
        BOB,
    ],
    "gains_a_secondary": [BOB | {"email": "robert@x.io"}, BOB],
    "merged_after": [BOB, ALICE | {"phoneNumber": "222"}, BOB],
    "unrelated_change_before": [{"email": "carol@x.io", "phoneNumber": "444"}, BOB, ALICE],
}


@pytest.mark.parametrize("items", TOUCHED_BEFORE.values(), ids=TOUCHED_BEFORE)
def test_an_item_that_changes_nothing_sees_what_earlier_items_did_to_its_customer(client, conn, items):
    expected = single_answers(client, conn, [ALICE, BOB, *items])
    empty(conn)
    answers = [client.post("/identify", json=item).get_json()["contact"] for item in (ALICE, BOB)]
    status, body = batch(client, items)
    assert status == 200, body
    assert (answers + body["contacts"], real_table(conn), recorded_events(conn)) == expected


def test_items_that_change_nothing_record_nothing_and_the_others_their_index(client, conn):
    batch(client, [ALICE, BOB])
    response = client.post(
        "/identify/batch",
        json={"contacts": [BOB, ALICE | {"phoneNumber": "222"}, ALICE, BOB]},
        headers={"X-Request-ID": "rid"},
    )
    assert response.status_code == 200
    with conn.cursor() as cur:
        cur.execute("SELECT request_id, kind FROM contact_event WHERE request_id LIKE 'rid%' ORDER BY id")
        assert cur.fetchall() == [("rid.1", "merged")]


class SchemaPerItem(IdentifyBatchRequest):
    """The batch's schema loading as marshmallow loads it: IdentifyRequest loading each item."""

    load = Schema.load


def loaded(schema, body):
    """("loaded", what schema loads from body) or ("refused", its messages)."""
    try:
        return "loaded", schema.load(body)
    except ValidationError as error:
        return "refused", error.messages


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**21),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        ["a@b.c", " A@B.C ", "x@", "ＪＯＨＮ@shop.in", "123456", "+1 (555) 010-9999", "", " ", "98765 43210"]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
batch_items = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"email": json_values, "phoneNumber": json_values, "other": json_values}
    ),
    json_values,
)
batch_bodies = st.one_of(
    st.fixed_dictionaries({"contacts": st.one_of(st.lists(batch_items, max_size=4), json_values)}),
    json_values,
)


@pytest.mark.parametrize("region", ["", "IN"])
@settings(max_examples=300, deadline=None)
@given(body=batch_bodies)
@example(body={"contacts": [{"email": "a@b.c"}, {"phoneNumber": 12}]})
@example(body={"contacts": [{"email": "a@b.c"}, {"phoneNumber": True}, None, 7, {}]})
def test_items_load_and_are_refused_exactly_as_by_a_schema_per_item(region, body):
    app = Flask(__name__)
    app.config["PHONE_REGION"] = region
    with app.app_context():
        assert loaded(IdentifyBatchRequest(), body) == loaded(SchemaPerItem(), body)


def test_a_later_item_sees_the_earlier_ones(client, conn):
    status, body = batch(client, ORDERS[:2])
    assert status == 200
    assert [answer["secondaryContactIds"] for answer in body["contacts"]] == [[], [2]]
    assert [row[3] for row in real_table(conn)] == [None, 1]


def test_an_invalid_item_refuses_the_batch_keyed_by_index_and_writes_nothing(client, conn):
    status, body = batch(client, [ORDERS[0], {"email": "a@b.c"}, {"phoneNumber": "12x"}, {}, None, 7])
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    assert set(body["error"]["fields"]) == {"2.phoneNumber", "3._schema", "4._schema", "5._schema"}
    assert real_table(conn) == []


def test_a_database_failure_writes_nothing(app, client, conn):
    # The second item's email is longer than the column allows only inside this test's database: the
    # first item has written by then, and the failure must take it back.
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE contact ADD CONSTRAINT short_email CHECK (length(email) < 20)")
    response = client.post("/identify/batch", json={"contacts": [ORDERS[0] | {"email": "a@b.c"}, ORDERS[1]]})
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    assert real_table(conn) == [] and recorded_events(conn) == []


@pytest.mark.parametrize("count", [0, 1001])
def test_outside_1_to_1000_items_the_batch_is_refused_saying_the_limit(client, conn, count):
    status, body = batch(client, [ORDERS[0]] * count)
    assert status == 400
    assert body["error"]["fields"] == {"contacts": ["Give 1 to 1000 contacts; send more in several batches."]}
    assert real_table(conn) == []


def test_1000_items_fit_the_batch_body_limit(client, conn):
    items = [{"email": f"{'x' * 200}{n}@hillvalley.edu", "phoneNumber": f"{n:020d}"} for n in range(1000)]
    status, body = batch(client, items)
    assert status == 200 and len(body["contacts"]) == 1000
    assert len(real_table(conn)) == 1000


def test_the_batch_body_limit_is_its_own_setting(database_url):
    app = make_app(database_url, MAX_BATCH_CONTENT_LENGTH=1024)
    try:
        response = app.test_client().post("/identify/batch", json={"contacts": [ORDERS[0]] * 20})
        assert response.status_code == 413
        assert response.get_json()["error"]["message"] == "The body must be at most 1 KiB."
        assert app.test_client().post("/identify", json={"email": "x" * 2000 + "@a.b"}).status_code == 400
    finally:
        app.extensions["identity_pool"].closeall()


def test_an_item_with_only_blocked_values_refuses_the_batch_naming_it(client, conn):
    entry = {"kind": "phone", "value": "555", "pattern": False, "reason": "test", "added_by": "test"}
    repository.add_blocked_value(conn, entry)
    status, body = batch(client, [ORDERS[0], {"email": None, "phoneNumber": "555"}])
    assert status == 422
    assert body["error"]["code"] == "blocked_value" and "Item 1 " in body["error"]["message"]
    status, body = batch(client, [ORDERS[2]])
    assert status == 200 and body["contacts"][0]["phoneNumbers"] == []
    assert [row[1:3] for row in real_table(conn)] == [("doc@hillvalley.edu", None)]


def test_the_batch_takes_the_same_keys_as_identify(make):
    client = make(IDENTITY_API_KEYS=KEYS).test_client()
    assert batch(client, ORDERS)[0] == 401
    assert batch(client, ORDERS, bearer("wrong-key-0123456789"))[0] == 401
    assert batch(client, ORDERS, bearer("second-key-9876543210"))[0] == 200


def test_against_the_rate_limit_a_batch_counts_as_its_items(make, conn):
    client = make(RATE_LIMIT="5 per day").test_client()
    assert batch(client, ORDERS)[0] == 200
    status, body = batch(client, ORDERS)  # 3 + 3 > 5: refused before anything is written
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert len(real_table(conn)) == 3
    assert client.post("/identify", json=ORDERS[0]).status_code == 429  # the window's 5 are spent


def test_concurrent_batches_with_crossing_values_all_succeed_as_some_order(database_url, conn):
    app = make_app(database_url, DB_POOL_SIZE=8)
    items = [{"email": f"e{n % 7}@x.io", "phoneNumber": str(1000 + n % 5)} for n in range(40)]
    try:
        with ThreadPoolExecutor(6) as pool:
            runs = [pool.submit(batch, app.test_client(), items[k:] + items[:k]) for k in range(0, 40, 4)]
            assert all(run.result()[0] == 200 for run in runs)
    finally:
        app.extensions["identity_pool"].closeall()
    rows = real_table(conn)
    assert [row for row in rows if row[4] == "primary"] == [rows[0]]
    assert all(row[3] == 1 for row in rows[1:])
    assert {row[1] for row in rows} == {f"e{n}@x.io" for n in range(7)}
