"""Random request sequences through the whole stack, each answer checked against an in-memory model.

The model is the task's rules written plainly in Python: ids 1, 2, 3... in insertion order, the
smallest primary id survives a merge (a single-threaded run creates rows in id order). It knows
blocked values, limits per customer and the events each change records. Every
example starts from an empty table with its identity reset, so answers must match exactly.
"""

from dataclasses import astuple, dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import make_app

EMAILS = ["doc@hv.edu", "marty@hv.edu", "george@hv.edu", "biff@hv.edu"]
# "+15550199" and "15550199" differ: the leading + is part of the number.
PHONE_NUMBERS = ["123456", "919191", "717171", "+15550199", "15550199"]
PHONE_SEPARATORS = ["", "", " ", "-", ".", "(", ")"]  # "" twice: most gaps stay empty


@dataclass
class Contact:
    """One row of the model's table, fields in the order the test reads the real one."""

    id: int
    email: str | None
    phone_number: str | None
    linked_id: int | None
    link_precedence: str


@dataclass(frozen=True)
class Limits:
    """The most a customer may hold; None is no limit."""

    emails: int | None = None
    phone_numbers: int | None = None
    contacts: int | None = None


class Model:
    """The contact table, its events and the reconciliation rules, kept as simple as possible."""

    def __init__(self, blocked=frozenset(), limits=Limits()):
        self.rows = []
        # (kind, survivor, contact ids, email, phone number, reason), as contact_event records them.
        self.events = []
        self.blocked, self.limits = blocked, limits

    def identify(self, email, phone_number):
        """Apply one request; return the answer's "contact" object, or None when it is refused (422)."""
        email, phone_number = (None if v in self.blocked else v for v in (email, phone_number))
        if email is None and phone_number is None:
            return None
        customers = self.matching(email, phone_number)
        if not customers:
            return self.answer(self.new_customer(email, phone_number))
        knows_all = self.knows_all(customers, email, phone_number)
        if len(customers) == 1 and knows_all:
            return self.answer(customers[0])
        reason = self.passed_limit(customers, email, phone_number, knows_all)
        if reason:
            return self.answer(self.refuse(customers, email, phone_number, reason))
        survivor, *demoted = customers
        for row in self.rows:
            if primary_of(row) in demoted:
                row.linked_id, row.link_precedence = survivor, "secondary"
        if demoted:
            self.events.append(("merged", survivor, [survivor, *demoted], email, phone_number, None))
        if not knows_all:
            new_id = self.insert(email, phone_number, survivor)
            self.events.append(("created", survivor, [new_id, survivor], email, phone_number, None))
        return self.answer(survivor)

    def matching(self, email, phone_number):
        """The primaries of the customers holding either value, oldest (smallest id) first."""
        return sorted(
            {
                primary_of(row)
                for row in self.rows
                if (email is not None and row.email == email)
                or (phone_number is not None and row.phone_number == phone_number)
            }
        )

    def knows_all(self, customers, email, phone_number):
        """Whether the customers together already hold every value the request carries."""
        rows = [row for primary in customers for row in self.customer(primary)]
        return (email is None or email in {r.email for r in rows}) and (
            phone_number is None or phone_number in {r.phone_number for r in rows}
        )

    def passed_limit(self, customers, email, phone_number, knows_all):
        """The limit joining the customers (and adding a row) would pass, worded as recorded; or None."""
        rows = [row for primary in customers for row in self.customer(primary)]
        emails = {r.email for r in rows if r.email is not None} | ({email} - {None})
        phone_numbers = {r.phone_number for r in rows if r.phone_number is not None} | (
            {phone_number} - {None}
        )
        for limit, count, what in (
            (self.limits.emails, len(emails), "emails"),
            (self.limits.phone_numbers, len(phone_numbers), "phone numbers"),
            (self.limits.contacts, len(rows) + (not knows_all), "contacts"),
        ):
            if limit is not None and count > limit:
                return f"at most {limit} {what} per customer"
        return None

    def refuse(self, customers, email, phone_number, reason):
        """The request as its email alone; the refused link recorded. Returns the customer answered."""
        holders = self.matching(email, None)
        survivor = holders[0] if holders else self.new_customer(email, None)
        self.events.append(("refused", survivor, [survivor, *customers], email, phone_number, reason))
        return survivor

    def new_customer(self, email, phone_number):
        """A new primary, recorded; returns its id."""
        new_id = self.insert(email, phone_number, None)
        self.events.append(("created", new_id, [new_id], email, phone_number, None))
        return new_id

    def insert(self, email, phone_number, linked_id):
        """Add a row with the next id; return that id."""
        precedence = "primary" if linked_id is None else "secondary"
        self.rows.append(Contact(len(self.rows) + 1, email, phone_number, linked_id, precedence))
        return len(self.rows)

    def customer(self, primary_id):
        """The primary, then its secondaries in creation (= id) order."""
        members = [row for row in self.rows if primary_of(row) == primary_id]
        return sorted(members, key=lambda row: (row.id != primary_id, row.id))

    def answer(self, primary_id):
        """The consolidated customer as POST /identify shows it."""
        members = self.customer(primary_id)
        return {
            "primaryContatctId": primary_id,
            "emails": distinct(row.email for row in members),
            "phoneNumbers": distinct(row.phone_number for row in members),
            "secondaryContactIds": [row.id for row in members if row.id != primary_id],
        }

    def table(self):
        """The rows as tuples, in id order."""
        return [astuple(row) for row in self.rows]


def primary_of(row):
    """The id of the primary a row belongs to."""
    return row.linked_id or row.id


def distinct(values):
    """The non-null values, each once, in first-seen order."""
    return list(dict.fromkeys(value for value in values if value is not None))


def normal_email(body):
    """The request's email as the service should store it, or None."""
    return (body.get("email") or "").strip().lower() or None


def normal_phone_number(body):
    """The request's phone number as the service should store it, or None."""
    value = body.get("phoneNumber")
    if value is None:
        return None
    return "".join(char for char in str(value) if char.isdigit() or char == "+") or None


def email_forms(email):
    """The same address as a client might type it."""
    return st.sampled_from([email, email.upper(), f"  {email} ", email.title()])


def phone_number_forms(number):
    """The same number with separators sprinkled in, or as a JSON integer when it is all digits."""
    separated = st.lists(
        st.sampled_from(PHONE_SEPARATORS), min_size=len(number) + 1, max_size=len(number) + 1
    ).map(lambda seps: seps[0] + "".join(char + sep for char, sep in zip(number, seps[1:], strict=True)))
    if number.isdigit():
        return st.one_of(st.just(number), separated, st.just(int(number)))
    return st.one_of(st.just(number), separated)


emails = st.sampled_from(EMAILS).flatmap(email_forms)
phone_numbers = st.sampled_from(PHONE_NUMBERS).flatmap(phone_number_forms)
absent = st.sampled_from([None, "", "   "])  # an optional key may also be left out entirely
bodies = st.one_of(
    st.fixed_dictionaries({"email": emails, "phoneNumber": phone_numbers}),
    st.fixed_dictionaries({"email": emails}, optional={"phoneNumber": absent}),
    st.fixed_dictionaries({"phoneNumber": phone_numbers}, optional={"email": absent}),
)

# Lengths drawn uniformly: st.lists alone mostly makes short lists, and merges need a few requests.
request_sequences = st.integers(1, 25).flatmap(lambda n: st.lists(bodies, min_size=n, max_size=n))

GEORGE_AND_BIFF = [
    {"email": "george@hv.edu", "phoneNumber": "919191"},
    {"email": "biff@hv.edu", "phoneNumber": "717171"},
    {"email": "george@hv.edu", "phoneNumber": "717171"},
]
# Customer 2 gains a secondary before it is merged into 1; that secondary must follow it.
MERGE_RELINKS_SECONDARIES = [
    {"email": "doc@hv.edu", "phoneNumber": "123456"},
    {"email": "marty@hv.edu", "phoneNumber": "919191"},
    {"email": "biff@hv.edu", "phoneNumber": "919191"},
    {"email": "biff@hv.edu", "phoneNumber": "123456"},
    {"email": "george@hv.edu", "phoneNumber": 919191},
]


def real_events(conn):
    """The recorded events' compared columns, in order."""
    with conn.cursor() as cur:
        columns = "kind, survivor_id, contact_ids, email, phone_number, reason"
        cur.execute(f"SELECT {columns} FROM contact_event ORDER BY id")
        return [tuple(row) for row in cur.fetchall()]


def real_table(conn):
    """The contact table's compared columns, in id order."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, email, phone_number, linked_id, link_precedence FROM contact ORDER BY id")
        return cur.fetchall()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=request_sequences)
@example(requests=GEORGE_AND_BIFF)
@example(requests=MERGE_RELINKS_SECONDARIES)
def test_every_answer_and_the_final_table_match_the_model(client, conn, requests):
    replay(client, conn, Model(), requests)


def replay(client, conn, model, requests):
    """Post each request from an empty table; hold every answer, the table and the events to the model."""
    with conn.cursor() as cur:
        cur.execute("TRUNCATE contact, contact_event RESTART IDENTITY")
    for step, body in enumerate(requests):
        response = client.post("/identify", json=body)
        expected = model.identify(normal_email(body), normal_phone_number(body))
        if expected is None:
            assert (response.status_code, response.get_json()["error"]["code"]) == (422, "blocked_value")
        else:
            assert (response.status_code, response.get_json()) == (200, {"contact": expected}), (step, body)
    assert real_table(conn) == model.table()
    assert real_events(conn) == [tuple(event) for event in model.events]


# Blocked values and tight limits, so that refusals and blocked requests are common.
BLOCKED = frozenset({"biff@hv.edu", "+15550199"})
LIMITS = Limits(emails=2, phone_numbers=2, contacts=3)


@pytest.fixture
def guarded_client(database_url):
    app = make_app(
        database_url,
        IDENTITY_ADMIN_KEYS="model-admin-key",
        MAX_EMAILS_PER_CUSTOMER=LIMITS.emails,
        MAX_PHONE_NUMBERS_PER_CUSTOMER=LIMITS.phone_numbers,
        MAX_CONTACTS_PER_CUSTOMER=LIMITS.contacts,
    )
    client = app.test_client()
    for value in BLOCKED:
        kind = "email" if "@" in value else "phone"
        body = {"kind": kind, "value": value, "reason": "model"}
        assert client.post("/admin/blocked-values", json=body, headers=ADMIN).status_code == 200
    yield client
    app.extensions["identity_pool"].closeall()


ADMIN = {"Authorization": "Bearer model-admin-key"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=request_sequences)
@example(requests=GEORGE_AND_BIFF)
@example(requests=MERGE_RELINKS_SECONDARIES)
def test_with_blocked_values_and_limits_answers_table_and_events_match_the_model(
    guarded_client, conn, requests
):
    replay(guarded_client, conn, Model(BLOCKED, LIMITS), requests)
