"""Every statement the service runs reads the contact table through an index, on a million rows.

auto_explain reports the plan of each statement as a notice, nested ones too: the statements of
identify_v1() and of the SQL functions it calls, and the foreign-key checks its writes fire. So the
plans checked are the plans the server really ran, not plans of hand-copied statements.
"""

import collections
import itertools
import json

import psycopg2
import pytest
from conftest import drop_database, throwaway_database

from identity import repository
from identity.retrying import retrying

pytestmark = pytest.mark.slow

ROWS = 1_000_000
CUSTOMERS_WITH_SECONDARIES = 100_000  # customers 1..100,000 each have two secondaries
PRIMARIES = ROWS - 2 * CUSTOMERS_WITH_SECONDARIES

# Primary i holds email(i) and phone(i). Its first secondary brings a new email and its phone,
# the second its email and a new phone. Some customers without secondaries were deleted, so the
# partial indexes leave rows out as they do in production. Ids are given, so the sequence is set.
FILL = """
SET session_replication_role = replica;  -- skip 200,000 foreign-key checks of rows built consistent
INSERT INTO contact (id, email, phone_number, linked_id, link_precedence, created_at, updated_at,
                     deleted_at)
SELECT i,
       CASE WHEN i <= %(primaries)s OR mod(i, 2) = 0 THEN 'c' || customer || '@example.com'
            ELSE 'c' || customer || '.' || i || '@example.com' END,
       CASE WHEN i <= %(primaries)s OR mod(i, 2) = 1 THEN (9000000000 + customer)::text
            ELSE (8000000000 + i)::text END,
       nullif(customer, i),
       CASE WHEN i <= %(primaries)s THEN 'primary' ELSE 'secondary' END,
       created, created,
       CASE WHEN i > %(with_secondaries)s AND i <= %(primaries)s AND mod(i, 50) = 0 THEN created END
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT CASE WHEN i <= %(primaries)s THEN i ELSE (i - %(primaries)s + 1) / 2 END AS customer,
                     timestamptz '2020-01-01' + i * interval '1 second' AS created) AS c;
SET session_replication_role = DEFAULT;
SELECT setval(pg_get_serial_sequence('contact', 'id'), %(rows)s);
"""

EXPLAIN_EVERYTHING = [
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_nested_statements = on",
    "SET auto_explain.log_level = 'notice'",
    "SET auto_explain.log_format = 'json'",
]
INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}

# The statements of identify_v1(), each known by a fragment of its text.
STATEMENTS = {
    "identify": "SELECT identify_v3(",
    "fast path": "HAVING count(*) = 1",
    "advisory locks": "pg_advisory_xact_lock(",
    "match again": "array_agg(m.primary_id",
    "insert primary": "'primary')",
    "lock primaries": "FOR UPDATE",
    "pick survivor": "ORDER BY c.created_at, c.id",
    "demote": "SET linked_id = survivor",
    "insert secondary": "survivor, 'secondary')",
    "foreign key check": "FOR KEY SHARE",
    "customer json": "'primaryContatctId'",
}
READ = {"identify", "fast path", "customer json"}
WRITE = READ | {"advisory locks", "match again"}
JOIN = WRITE | {"lock primaries", "pick survivor", "foreign key check"}


def email(customer):
    """The email of a loaded customer's primary."""
    return f"c{customer}@example.com"


def phone(customer):
    """The phone number of a loaded customer's primary."""
    return str(9_000_000_000 + customer)


def new_email(n):
    """An email no loaded row holds."""
    return f"new{n}@example.com"


def new_phone(n):
    """A phone number no loaded row holds."""
    return str(7_000_000_000 + n)


# Each path: the statements it must run, and its request built from fresh customer numbers.
# Values are never reused, so every call of a writing path writes.
PATHS = {
    "known_customer": (READ, lambda fresh: (email(n := next(fresh)), phone(n))),
    "known_email_only": (READ, lambda fresh: (email(next(fresh)), None)),
    "known_phone_only": (READ, lambda fresh: (None, phone(next(fresh)))),
    "new_customer": (WRITE | {"insert primary"}, lambda fresh: (new_email(n := next(fresh)), new_phone(n))),
    "known_email_new_phone": (
        JOIN | {"insert secondary"},
        lambda fresh: (email(n := next(fresh)), new_phone(n)),
    ),
    # The older customer survives; the newer one and both its secondaries are relinked.
    "email_and_phone_of_two_customers": (
        JOIN | {"demote"},
        lambda fresh: (email(next(fresh)), phone(next(fresh))),
    ),
}
# plpgsql and the foreign-key checks plan a statement for its values five times, then may switch
# to a generic plan; "auto" runs that switch as production does, the forced modes pin each kind.
PLAN_CACHE_MODES = ["auto", "force_custom_plan", "force_generic_plan"]
RUNS = 6


def fill(database_url):
    """Load the contacts, then give the planner the statistics of a table that has settled."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True  # VACUUM cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(
                FILL, {"rows": ROWS, "primaries": PRIMARIES, "with_secondaries": CUSTOMERS_WITH_SECONDARIES}
            )
            # Vacuumed as well as analyzed, so autovacuum cannot change the plans halfway through.
            cur.execute("VACUUM (ANALYZE) contact")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def big_database_url(server_url, template_database):
    """A migrated database of this module's own, with ROWS contacts, vacuumed and analyzed."""
    name, url = throwaway_database(server_url, template_database)
    try:
        fill(url)
        yield url
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def fresh():
    """Customer numbers no test has used yet; customers up to 100,000 have secondaries."""
    return itertools.count(1)


def explaining_connection(database_url, *settings):
    """A connection whose every statement, nested ones too, reports its plan as a notice."""
    conn = psycopg2.connect(database_url)
    conn.notices = collections.deque()  # psycopg2 keeps only the last 50 in its default list
    with conn.cursor() as cur:
        for statement in EXPLAIN_EVERYTHING + list(settings):
            cur.execute(statement)
    conn.commit()  # a rolled-back SET would be undone
    return conn


def run_explained(conn, work, *args):
    """Run work as the service does, in a committed transaction; return the plans it ran."""
    conn.notices.clear()
    retrying(conn, work, *args)
    return [json.loads(notice.partition("plan:\n")[2]) for notice in conn.notices if "plan:\n" in notice]


def nodes(node):
    """A plan node and every node below it."""
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def unindexed_scans(plan):
    """The nodes of a plan that read the contact table other than through an index."""
    return [
        node
        for node in nodes(plan["Plan"])
        if node.get("Relation Name") == "contact"
        and node["Node Type"] != "ModifyTable"
        and node["Node Type"] not in INDEX_SCANS
    ]


def indexes(plans):
    """The names of the indexes the plans use."""
    return {node["Index Name"] for plan in plans for node in nodes(plan["Plan"]) if "Index Name" in node}


def statements(plans):
    """The names, from STATEMENTS, of the statements the plans belong to."""
    return {name for plan in plans for name, text in STATEMENTS.items() if text in plan["Query Text"]}


def render(node, depth=0):
    """A plan node and its children as indented lines, like EXPLAIN's text."""
    words = [node["Node Type"]]
    if "Relation Name" in node:
        words.append(f"on {node['Relation Name']} {node.get('Alias', '')}")
    if "Index Name" in node:
        words.append(f"using {node['Index Name']}")
    words += [f"{key}: {node[key]}" for key in ("Index Cond", "Recheck Cond", "Filter") if key in node]
    lines = ["  " * depth + " ".join(words)]
    for child in node.get("Plans", []):
        lines += render(child, depth + 1)
    return lines


def describe(plans):
    """The plans' statements and plan trees, for an assertion message."""
    return "\n\n".join(
        "\n".join([" ".join(plan["Query Text"].split()), *render(plan["Plan"])]) for plan in plans
    )


def expected_indexes(email_value, phone_value):
    """The indexes a request with these values must use: its lookups, then the walk to secondaries."""
    lookups = {
        "contact_email_live_idx": email_value is not None,
        "contact_phone_number_live_idx": phone_value is not None,
    }
    return {"contact_pkey", "contact_linked_id_idx"} | {name for name, used in lookups.items() if used}


@pytest.mark.parametrize("mode", PLAN_CACHE_MODES)
@pytest.mark.parametrize("path", PATHS)
def test_identify_reads_contacts_only_through_indexes(big_database_url, fresh, path, mode):
    """Each path of identify_v1(), under each kind of cached plan, scans contact only through indexes."""
    must_run, request = PATHS[path]
    conn = explaining_connection(big_database_url, f"SET plan_cache_mode = {mode}")
    try:
        for _ in range(RUNS):
            values = request(fresh)
            plans = run_explained(conn, repository.identify, *values)
            offenders = [plan for plan in plans if unindexed_scans(plan)]
            assert not offenders, f"{values} scanned contact without an index:\n{describe(offenders)}"
            # Proof that the nested statements were seen, not just the outer SELECT.
            assert must_run <= statements(plans), f"{values} ran:\n{describe(plans)}"
            assert expected_indexes(*values) <= indexes(plans), f"{values} ran:\n{describe(plans)}"
    finally:
        conn.close()


def test_ping_reads_no_table(big_database_url):
    """The readiness check's statement touches no table at all."""
    conn = explaining_connection(big_database_url)
    try:
        plans = run_explained(conn, repository.ping)
    finally:
        conn.close()
    assert len(plans) == 1
    assert not [node for node in nodes(plans[0]["Plan"]) if "Relation Name" in node], describe(plans)


def test_the_check_sees_sequential_scans_in_nested_statements(big_database_url):
    """With index scans disabled the check fails, so it can fail, and it looks inside identify_v1()."""
    settings = ["SET enable_indexscan = off", "SET enable_indexonlyscan = off", "SET enable_bitmapscan = off"]
    conn = explaining_connection(big_database_url, *settings)
    try:
        plans = run_explained(conn, repository.identify, email(1), phone(1))
    finally:
        conn.close()
    offenders = [plan for plan in plans if unindexed_scans(plan)]
    assert {"fast path", "customer json"} <= statements(offenders), describe(plans)
    assert {node["Node Type"] for plan in offenders for node in unindexed_scans(plan)} == {"Seq Scan"}


# The lookups of GET /contacts: (the repository function, its arguments for a fresh customer number,
# the indexes it must use); a secondary of customer n has the id PRIMARIES + 2n.
LOOKUPS = {
    "primary id": (repository.customer_of_contact, lambda n: (n,), {"contact_pkey"}),
    "secondary id": (repository.customer_of_contact, lambda n: (PRIMARIES + 2 * n,), {"contact_pkey"}),
    "email": (repository.customer_with_identifier, lambda n: (email(n), None), {"contact_email_live_idx"}),
    "phone number": (
        repository.customer_with_identifier,
        lambda n: (None, phone(n)),
        {"contact_phone_number_live_idx"},
    ),
}


@pytest.mark.parametrize("mode", PLAN_CACHE_MODES)
@pytest.mark.parametrize("lookup", LOOKUPS)
def test_lookups_read_contacts_only_through_indexes(big_database_url, fresh, lookup, mode):
    """Each lookup, under each kind of cached plan, finds its customer through indexes only."""
    work, arguments, must_use = LOOKUPS[lookup]
    conn = explaining_connection(big_database_url, f"SET plan_cache_mode = {mode}")
    try:
        for _ in range(RUNS):
            values = arguments(next(fresh))
            plans = run_explained(conn, work, *values)
            offenders = [plan for plan in plans if unindexed_scans(plan)]
            assert not offenders, f"{values} scanned contact without an index:\n{describe(offenders)}"
            # The customer was found and read: its secondaries were walked to through linked_id.
            assert must_use | {"contact_linked_id_idx"} <= indexes(plans), f"{values} ran:\n{describe(plans)}"
    finally:
        conn.close()


# The batch's own statements (0012_identify_batch_v3.sql), each known by a fragment of its text.
BATCH_STATEMENTS = {
    "batch plan": "first_change AS",
    "lock customers": "ORDER BY c.id\n          FOR UPDATE",
    "customers' json": "WITH ORDINALITY AS w (id, n)",
}


def batch_of_every_path(fresh):
    """One item of each path of PATHS, and an item that changes nothing after one that merges its customer."""
    items = [request(fresh) for _, request in PATHS.values()]
    merging, older = items[-1], next(fresh)
    items += [(email(older), merging[1]), (email(older), phone(older))]
    return [{"email": mail, "phone_number": number} for mail, number in items]


def test_the_batch_reads_contacts_only_through_indexes(big_database_url, fresh):
    """A batch's statements, and identify_v3's inside it, scan contact only through indexes."""
    conn = explaining_connection(big_database_url)
    try:
        for _ in range(RUNS):
            items = batch_of_every_path(fresh)
            plans = run_explained(conn, repository.identify_batch, items)
            offenders = [plan for plan in plans if unindexed_scans(plan)]
            assert not offenders, f"{items} scanned contact without an index:\n{describe(offenders)}"
            texts = " ".join(plan["Query Text"] for plan in plans)
            assert all(text in texts for text in BATCH_STATEMENTS.values()), describe(plans)
            # identify_v3 is called as an expression, which auto_explain does not see; its statements are.
            assert (JOIN - {"identify"}) | {"insert primary", "insert secondary", "demote"} <= statements(
                plans
            )
    finally:
        conn.close()
