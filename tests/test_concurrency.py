"""Concurrency: every outcome of racing requests equals some one-at-a-time order of the same requests.

The tests fire overlapping requests, through a real gunicorn or straight at the repository on
connections of their own, then hold the final table and every answer against a reference model:
union-find over the requests' identifiers, each request joining its email and its phone number. In
any serial order each component of that model ends as exactly one customer, so the checks below
must hold whatever the interleaving was.
"""

import http.client
import json
import random
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import psycopg2
import pytest
from helpers import all_contacts
from servers import HOST, free_port, start_gunicorn, stop

from identity.settings import DEFAULTS
from identity.db import connect_kwargs
from identity.repository import identify
from identity.retrying import retrying

WORKERS = 4
FIRST_ORDERS = 50
FIRST_ORDER_ROUNDS = 10
STORM_THREADS = 32
STORM_REQUESTS = 600
STORM_GROUPS = 12
GROUP_SIZE = 5
DIRECT_THREADS = 16
CHAINS = 12
CHAIN_LENGTH = 12
# Every race runs straight on PostgreSQL and through PgBouncer in transaction pooling.
pytestmark = pytest.mark.pooled


# The reference model.


def identifiers(email, phone_number):
    """The values a request or a row carries, tagged so that an email never equals a phone number."""
    return [value for value in (("email", email), ("phone", phone_number)) if value[1] is not None]


def components(requests):
    """Union-find over the requests: {identifier: the frozenset of identifiers linked to it}."""
    parent = {}

    def root(identifier):
        while parent.setdefault(identifier, identifier) != identifier:
            identifier = parent[identifier]
        return identifier

    for request in requests:
        first, *rest = [root(identifier) for identifier in identifiers(*request)]
        for other in rest:
            parent[other] = first
    members = defaultdict(set)
    for identifier in parent:
        members[root(identifier)].add(identifier)
    return {identifier: frozenset(members[root(identifier)]) for identifier in parent}


def values_of(rows):
    """Every identifier the rows carry."""
    return frozenset(value for row in rows for value in identifiers(row["email"], row["phone_number"]))


def age(row):
    """Oldest first, ids breaking ties: the order in which the service picks primaries."""
    return row["created_at"], row["id"]


def live_contacts(conn):
    """{id: row} of every row not deleted."""
    return {row["id"]: row for row in all_contacts(conn) if row["deleted_at"] is None}


def customers(rows_by_id):
    """{primary id: its rows}: each primary with the secondaries that name it."""
    grouped = defaultdict(list)
    for row in rows_by_id.values():
        grouped[row["id"] if row["linked_id"] is None else row["linked_id"]].append(row)
    return grouped


# The invariants, each of the final table or of one answer.


def assert_links_name_live_primaries(rows_by_id):
    """Primary exactly when unlinked; a secondary names a live primary: no chain, no dangling link."""
    for row in rows_by_id.values():
        assert (row["linked_id"] is None) == (row["link_precedence"] == "primary"), row
        if row["linked_id"] is not None:
            target = rows_by_id.get(row["linked_id"])
            assert target is not None, f"dangling link: {row}"
            assert target["linked_id"] is None, f"chain: {row} -> {target}"


def assert_no_identical_contacts(rows_by_id):
    """No two rows carry the same email and phone number."""
    pairs = Counter((row["email"], row["phone_number"]) for row in rows_by_id.values())
    assert [pair for pair, count in pairs.items() if count > 1] == [], "identical contacts"


def assert_every_row_brought_a_new_value(rows_by_id):
    """Each row was the first holder of one of its values, as a serial order only inserts such rows."""
    first_holder = {}
    for row in sorted(rows_by_id.values(), key=age):
        for value in identifiers(row["email"], row["phone_number"]):
            first_holder.setdefault(value, row["id"])
    for row in rows_by_id.values():
        holders = {first_holder[value] for value in identifiers(row["email"], row["phone_number"])}
        assert row["id"] in holders, f"row brought nothing new: {row}"


def assert_primaries_are_oldest(grouped):
    """Each customer's primary is its oldest row."""
    for primary_id, rows in grouped.items():
        assert min(rows, key=age)["id"] == primary_id, f"customer {primary_id} has an older row: {rows}"


def assert_customers_are_components(grouped, component_of):
    """One customer per component, holding exactly its values: none lost, none extra, none split."""
    held = Counter(values_of(rows) for rows in grouped.values())
    expected = Counter(set(component_of.values()))
    missing, unexpected = expected - held, held - expected
    assert not missing and not unexpected, (
        f"components with no customer of their own: {list(missing)}; "
        f"customers matching no component: {list(unexpected)}"
    )


def answer_values(answer):
    """The identifiers an answer lists, each listed once."""
    values = [("email", email) for email in answer["emails"]]
    values += [("phone", phone_number) for phone_number in answer["phoneNumbers"]]
    assert len(values) == len(set(values)), f"a value listed twice: {answer}"
    return frozenset(values)


def assert_answer_fits(request, answer, rows_by_id, component_of):
    """The answer showed one state of the request's customer: real rows, their values, oldest first."""
    ids = [answer["primaryContatctId"], *answer["secondaryContactIds"]]
    assert len(set(ids)) == len(ids) and set(ids) <= rows_by_id.keys(), f"unknown rows: {answer}"
    listed = [rows_by_id[contact_id] for contact_id in ids]
    assert answer_values(answer) == values_of(listed), f"values other than its rows': {answer}"
    assert set(identifiers(*request)) <= values_of(listed), f"lacks the values of {request}: {answer}"
    component = component_of[identifiers(*request)[0]]
    assert values_of(listed) <= component, f"reaches outside the component of {request}: {answer}"
    assert min(listed, key=age)["id"] == ids[0], f"primary is not its oldest row: {answer}"


def assert_table_serialisable(rows_by_id, requests):
    """The final table is one that the requests, run one at a time, could have left."""
    assert_links_name_live_primaries(rows_by_id)
    assert_no_identical_contacts(rows_by_id)
    assert_every_row_brought_a_new_value(rows_by_id)
    grouped = customers(rows_by_id)
    assert_primaries_are_oldest(grouped)
    assert_customers_are_components(grouped, components(requests))


def assert_serialisable(rows_by_id, answered):
    """Check the final table and every (request, answer) pair against the reference model."""
    requests = [request for request, _ in answered]
    assert_table_serialisable(rows_by_id, requests)
    component_of = components(requests)
    for request, answer in answered:
        assert_answer_fits(request, answer, rows_by_id, component_of)


# Workloads, and threads to fire them.


def first_orders(round_, distinct_phone_numbers):
    """Orders all bringing one new email, with no phone number or with one new number each."""
    email = f"first{round_}@order.test"
    return [(email, f"5{round_}{i:04d}" if distinct_phone_numbers else None) for i in range(FIRST_ORDERS)]


def storm_requests(rng):
    """Random orders within small groups of values, now and then crossing into the twin group."""
    requests = []
    for _ in range(STORM_REQUESTS):
        group = rng.randrange(STORM_GROUPS)
        # Rare crossings merge two grown customers late, while other requests still touch them.
        phone_group = group ^ 1 if rng.random() < 0.03 else group
        email = f"shopper{group}.{rng.randrange(GROUP_SIZE)}@storm.test"
        phone_number = f"{phone_group + 1}00{rng.randrange(GROUP_SIZE)}"
        shapes = [(email, phone_number), (email, None), (None, phone_number)]
        requests.append(rng.choices(shapes, weights=[6, 1, 1])[0])
    return requests


def chain_requests(rng):
    """Chains a_i/p_i, a_i/p_(i+1), every link sent twice and all shuffled: merge after merge."""
    requests = [
        (f"a{chain}.{i}@chain.test", f"9{chain}{i + step:03d}")
        for chain in range(CHAINS)
        for i in range(CHAIN_LENGTH)
        for step in (0, 1)
    ] * 2
    rng.shuffle(requests)
    return requests


def deal(requests, hands):
    """Split the requests into that many interleaved batches."""
    return [requests[hand::hands] for hand in range(hands)]


def run_together(batches, work):
    """Run work(batch) for each batch in a thread of its own, all released at once; join the results."""
    barrier = threading.Barrier(len(batches))

    def released(batch):
        barrier.wait(timeout=30)
        return work(batch)

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        return [result for results in pool.map(released, batches) for result in results]


# A real gunicorn, and HTTP to it.


@pytest.fixture
def server(service_url, tmp_path):
    """A real gunicorn with several workers, serving this test's database; yields (host, port)."""
    port = free_port()
    process, _ = start_gunicorn(tmp_path, port, DATABASE_URL=service_url, WEB_CONCURRENCY=WORKERS)
    try:
        yield (HOST, port)
    finally:
        stop(process)


def post_identify(connection, email, phone_number):
    """POST /identify on the connection; return (status, parsed body)."""
    body = json.dumps({"email": email, "phoneNumber": phone_number})
    connection.request("POST", "/identify", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def post_all(address, requests):
    """POST each request in turn over this thread's own connection; return (request, status, body)."""
    # gunicorn's sync workers close the connection after each answer; http.client reopens it.
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        return [(request, *post_identify(connection, *request)) for request in requests]
    finally:
        connection.close()


def post_together(address, batches):
    """POST every batch from a thread of its own; assert that all answered 200; return (request, contact)."""
    results = run_together(batches, lambda batch: post_all(address, batch))
    failures = [result for result in results if result[1] != 200]
    assert failures == [], f"{len(failures)} of {len(results)} requests failed, e.g. {failures[:3]}"
    return [(request, body["contact"]) for request, _, body in results]


# Direct calls to the repository, as the view makes them but on connections of the test's own.


def identify_or_error(conn, request):
    """The retried identify's Outcome, or the exception it raised (rolled back, so the next can run)."""
    try:
        return retrying(conn, identify, *request)
    except Exception as error:  # kept, not raised, so that the test lists every failure at once
        conn.rollback()
        return error


def identify_all(database_url, requests):
    """Identify each request in turn on a connection of this thread's own; return (request, result)."""
    conn = psycopg2.connect(database_url, **connect_kwargs(DEFAULTS))
    try:
        return [(request, identify_or_error(conn, request)) for request in requests]
    finally:
        conn.close()


def assert_outcomes_account_for_rows(rows_by_id, outcomes):
    """Every row was created by one request; every merged primary is now a secondary, merged once."""
    merged = [primary_id for outcome in outcomes for primary_id in outcome.merged]
    assert merged, "the workload merged no customers, so it tested no racing merges"
    assert len(merged) == len(set(merged)), f"a primary was merged twice: {sorted(merged)}"
    assert all(rows_by_id[primary_id]["linked_id"] is not None for primary_id in merged)
    created = Counter(outcome.created for outcome in outcomes)
    assert created["primary"] == len(customers(rows_by_id)) + len(merged)
    assert created["primary"] + created["secondary"] == len(rows_by_id)


# The tests.


@pytest.mark.slow
@pytest.mark.parametrize(
    "distinct_phone_numbers", [False, True], ids=["same values", "distinct phone numbers"]
)
def test_simultaneous_first_orders_with_one_new_email_make_one_primary(server, conn, distinct_phone_numbers):
    answered = []
    # Several rounds, so that later ones race on a server whose workers have all booted.
    for round_ in range(FIRST_ORDER_ROUNDS):
        requests = first_orders(round_, distinct_phone_numbers)
        answered += post_together(server, deal(requests, FIRST_ORDERS))
    rows_by_id = live_contacts(conn)
    assert_serialisable(rows_by_id, answered)
    primary_of = {row["email"]: row["id"] for row in rows_by_id.values() if row["linked_id"] is None}
    assert len(primary_of) == FIRST_ORDER_ROUNDS == len(customers(rows_by_id))
    assert all(contact["primaryContatctId"] == primary_of[email] for (email, _), contact in answered)
    assert len(rows_by_id) == len({request for request, _ in answered})


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_storm_of_overlapping_merges_through_gunicorn_is_serialisable(server, conn, seed):
    requests = storm_requests(random.Random(seed))
    answered = post_together(server, deal(requests, STORM_THREADS))
    assert_serialisable(live_contacts(conn), answered)


def test_racing_merges_on_direct_connections_are_serialisable(service_url, conn):
    requests = chain_requests(random.Random(4))
    results = run_together(deal(requests, DIRECT_THREADS), lambda batch: identify_all(service_url, batch))
    raised = [(request, result) for request, result in results if isinstance(result, Exception)]
    assert raised == []
    rows_by_id = live_contacts(conn)
    assert_serialisable(rows_by_id, [(request, outcome.contact) for request, outcome in results])
    assert_outcomes_account_for_rows(rows_by_id, [outcome for _, outcome in results])


# The checks themselves must be able to fail: each corruption below breaks one invariant.

A, B, C = "a@bad.test", "b@bad.test", "c@bad.test"
GOOD_ROWS = [(A, "1", None), (B, "1", 1), (C, "2", None)]
GOOD_REQUESTS = [(A, "1"), (B, "1"), (C, "2")]


def table(rows):
    """{id: row} of (email, phone_number, linked_id) rows, given oldest first, with ids 1, 2, ..."""
    start = datetime(2024, 1, 1)
    return {
        contact_id: {
            "id": contact_id,
            "email": email,
            "phone_number": phone_number,
            "linked_id": linked_id,
            "link_precedence": "primary" if linked_id is None else "secondary",
            "created_at": start + timedelta(seconds=contact_id),
        }
        for contact_id, (email, phone_number, linked_id) in enumerate(rows, 1)
    }


def contact(primary_id, emails, phone_numbers, secondary_ids=()):
    """An answer's contact, in the shape POST /identify gives it."""
    return {
        "primaryContatctId": primary_id,
        "emails": emails,
        "phoneNumbers": phone_numbers,
        "secondaryContactIds": list(secondary_ids),
    }


def test_checks_report_two_primaries_for_one_email_in_the_database(conn):
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO contact (email, phone_number, link_precedence) VALUES (%s, '1', 'primary'), "
            "(%s, '2', 'primary')",
            (A, A),
        )
    with pytest.raises(AssertionError, match="no customer of their own"):
        assert_table_serialisable(live_contacts(conn), [(A, "1"), (A, "2")])


@pytest.mark.parametrize(
    "rows, requests, complaint",
    [
        ([(A, "1", None)], [(A, "1"), (A, "2")], "no customer of their own"),
        ([(A, "1", None), (B, "1", 1), (C, None, 2)], [(A, "1"), (B, "1"), (C, "1")], "chain"),
        ([(A, "1", None), (B, "1", 3)], [(A, "1"), (B, "1")], "dangling link"),
        ([(A, "1", None), (A, "1", 1)], [(A, "1")], "identical contacts"),
        ([(A, "1", None), (A, None, 1)], [(A, "1"), (A, None)], "brought nothing new"),
        ([(B, "1", 2), (A, "1", None)], [(A, "1"), (B, "1")], "has an older row"),
    ],
    ids=["lost value", "chain", "dangling", "identical", "nothing new", "young primary"],
)
def test_checks_report_a_table_no_serial_order_leaves(rows, requests, complaint):
    with pytest.raises(AssertionError, match=complaint):
        assert_table_serialisable(table(rows), requests)


def test_checks_accept_what_a_serial_order_gives():
    answers = [contact(1, [A], ["1"]), contact(1, [A, B], ["1"], [2]), contact(3, [C], ["2"])]
    assert_serialisable(table(GOOD_ROWS), list(zip(GOOD_REQUESTS, answers, strict=True)))


@pytest.mark.parametrize(
    "asked, answer, complaint",
    [
        ((A, "1"), contact(1, [A, A], ["1"]), "listed twice"),
        ((A, "1"), contact(1, [A, B], ["1"]), "other than its rows"),
        ((B, "1"), contact(1, [A], ["1"]), "lacks the values"),
        ((A, "1"), contact(1, [A, C], ["1", "2"], [3]), "outside the component"),
        ((A, "1"), contact(2, [B, A], ["1"], [1]), "not its oldest"),
    ],
    ids=["value twice", "value of no row", "lost value", "other component", "young primary"],
)
def test_checks_report_an_answer_no_serial_order_gives(asked, answer, complaint):
    with pytest.raises(AssertionError, match=complaint):
        assert_answer_fits(asked, answer, table(GOOD_ROWS), components(GOOD_REQUESTS))
