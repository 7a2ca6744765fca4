"""Random request sequences through the whole stack, each answer checked against an in-memory model.

The model is the task's rules written plainly in Python: ids 1, 2, 3... in insertion order, the
smallest primary id survives a merge (a single-threaded run creates rows in id order). It knows
blocked values, limits per customer, the events each change records, and erasure, unlinking and the
re-derivation of customers they make (issue 13). Every example starts from an empty table with its
identity reset, so answers must match exactly.
"""

from dataclasses import astuple, dataclass

import pytest
from conftest import make_app
from helpers import recorded_events
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from identity import blocking, db, repository

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
    deleted: bool = False


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
        # [kind, survivor, contact ids, email, phone number, reason], as contact_event records them.
        self.events = []
        self.blocked, self.limits = set(blocked), limits

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
            self.events.append(["merged", survivor, [survivor, *demoted], email, phone_number, None])
        if not knows_all:
            new_id = self.insert(email, phone_number, survivor)
            self.events.append(["created", survivor, [new_id, survivor], email, phone_number, None])
        return self.answer(survivor)

    def matching(self, email, phone_number):
        """The primaries of the customers holding either value, oldest (smallest id) first."""
        return sorted(
            {
                primary_of(row)
                for row in self.live()
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
        self.events.append(["refused", survivor, [survivor, *customers], email, phone_number, reason])
        return survivor

    def new_customer(self, email, phone_number):
        """A new primary, recorded; returns its id."""
        new_id = self.insert(email, phone_number, None)
        self.events.append(["created", new_id, [new_id], email, phone_number, None])
        return new_id

    def insert(self, email, phone_number, linked_id):
        """Add a row with the next id; return that id."""
        precedence = "primary" if linked_id is None else "secondary"
        self.rows.append(Contact(len(self.rows) + 1, email, phone_number, linked_id, precedence))
        return len(self.rows)

    def live(self):
        """The rows not erased."""
        return [row for row in self.rows if not row.deleted]

    def customer(self, primary_id):
        """The primary, then its secondaries in creation (= id) order; live rows only."""
        members = [row for row in self.live() if primary_of(row) == primary_id]
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

    # Erasure and unlinking (issue 13).

    def erase_customer(self, contact_id):
        """DELETE /contacts/{id}: the answer, or None for an unknown id."""
        if not 1 <= contact_id <= len(self.rows):
            return None
        if self.rows[contact_id - 1].deleted:
            return {"contactIds": [], "emails": 0, "phoneNumbers": 0, "events": 0}
        primary = primary_of(self.rows[contact_id - 1])
        members = [row for row in self.rows if primary_of(row) == primary]
        emails, phone_numbers = held(members, "email"), held(members, "phone_number")
        erased = [row for row in members if not row.deleted or row.email or row.phone_number]
        for row in erased:
            row.email = row.phone_number = None
            row.deleted = True
        ids = sorted((row.id for row in erased), key=lambda i: (i != primary, i))
        events = self.blank_values(emails, phone_numbers, set(ids))
        self.events.append(["erased", primary, ids, None, None, "customer erased"])
        return {
            "contactIds": ids,
            "emails": len(emails),
            "phoneNumbers": len(phone_numbers),
            "events": events,
        }

    def erase_value(self, kind, value):
        """DELETE /contacts?email= or ?phoneNumber=: the answer."""
        field = FIELDS[kind]
        primaries = self.matching(*pair(kind, value))
        holders = [row for row in self.rows if getattr(row, field) == value]
        deleted = 0
        for row in holders:
            setattr(row, field, None)
            if row.email is None and row.phone_number is None and not row.deleted:
                row.deleted, deleted = True, deleted + 1
        events = self.blank_events(lambda e: e[3 if kind == "email" else 4] == value, field=kind)
        reason = "email erased" if kind == "email" else "phone number erased"
        tops = self.rederive(primaries, None, "erased", reason)
        customers = [self.answer(top) for top in tops]
        return {"contacts": len(holders), "deleted": deleted, "events": events, "customers": customers}

    def unlink(self, kind, value):
        """`blocked add VALUE --unlink`: the value blocked, its customers re-derived; the customers."""
        self.blocked.add(value)
        primaries = self.matching(*pair(kind, value))
        reason = "email unlinked" if kind == "email" else "phone number unlinked"
        return [self.answer(top) for top in self.rederive(primaries, (kind, value), "unlinked", reason)]

    def blank_values(self, emails, phone_numbers, ids):
        """Blank the values in events, and every value of refused links naming ids; how many changed."""
        count = 0
        for event in self.events:
            refused = event[0] == "refused" and bool(set(event[2]) & ids)
            blanked = [
                None if value in erased or refused else value
                for value, erased in ((event[3], emails), (event[4], phone_numbers))
            ]
            count += blanked != event[3:5]
            event[3:5] = blanked
        return count

    def blank_events(self, chosen, field=None):
        """Blank the values (or only field's) of the chosen events that carry one; how many."""
        count = 0
        for event in self.events:
            if (event[3] is not None or event[4] is not None) and chosen(event):
                count += 1
                event[3] = None if field in (None, "email") else event[3]
                event[4] = None if field in (None, "phone") else event[4]
        return count

    def rederive(self, primaries, unlinked, kind, reason):
        """Each customer's live rows regrouped by what still joins them; the primaries, ascending."""
        parent = {row.id: row.id for row in self.live() if primary_of(row) in primaries}
        for a, b in self.evidence(parent, unlinked):
            parent[find(parent, a)] = find(parent, b)
        old = {node: primary_of(self.rows[node - 1]) for node in parent}
        top = {node: min(n for n in parent if find(parent, n) == find(parent, node)) for node in parent}
        for node, first in top.items():
            row = self.rows[node - 1]
            row.linked_id = None if first == node else first
            row.link_precedence = "primary" if first == node else "secondary"
        for primary in primaries:
            others = sorted({top[n] for n in parent if old[n] == primary} - {primary})
            self.events.append([kind, primary, [primary, *others], None, None, reason])
        return sorted(set(top.values()))

    def evidence(self, nodes, unlinked):
        """Pairs of rows (of one old customer) joined by a shared value or a recorded request's pair."""
        rows = [self.rows[node - 1] for node in nodes]

        def holding(field, value):
            if value is None or (FIELD_KINDS[field], value) == unlinked:
                return []
            return [row for row in rows if getattr(row, field) == value]

        for row in rows:
            for field in FIELDS.values():
                for other in holding(field, getattr(row, field)):
                    if primary_of(row) == primary_of(other):
                        yield row.id, other.id
        for kind, _, _, email, phone_number, _ in self.events:
            if kind in ("created", "merged"):
                for a in holding("email", email):
                    for b in holding("phone_number", phone_number):
                        if primary_of(a) == primary_of(b):
                            yield a.id, b.id


FIELDS = {"email": "email", "phone": "phone_number"}
FIELD_KINDS = {"email": "email", "phone_number": "phone"}


def pair(kind, value):
    """(email, phone number) with value in its place."""
    return (value, None) if kind == "email" else (None, value)


def held(rows, field):
    """The distinct non-null values of field among rows."""
    return {getattr(row, field) for row in rows} - {None}


def find(parent, node):
    """The root of node in the union-find parent."""
    while parent[node] != node:
        node = parent[node]
    return node


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


def real_table(conn):
    """The contact table's compared columns, in id order."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, email, phone_number, linked_id, link_precedence, deleted_at IS NOT NULL"
            " FROM contact ORDER BY id"
        )
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
    assert recorded_events(conn) == [tuple(event) for event in model.events]


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


# Erasures, unlinks and merges (issue 13), through the admin API; each compared like the requests.

VALUES = [("email", email) for email in EMAILS] + [("phone", number) for number in PHONE_NUMBERS]
ERASER_KEY = "model-eraser-key"
ERASER = {"Authorization": f"Bearer {ERASER_KEY}"}
identify_steps = bodies.map(lambda body: ("identify", body))
operations = st.one_of(
    identify_steps,
    identify_steps,
    identify_steps,
    st.tuples(st.just("erase_value"), st.sampled_from(VALUES)),
    st.tuples(st.just("erase_customer"), st.integers(1, 12)),
    st.tuples(st.just("unlink"), st.sampled_from(VALUES)),
)
operation_sequences = st.integers(1, 30).flatmap(lambda n: st.lists(operations, min_size=n, max_size=n))
# Lorraine and McFly joined by their phone number, George and Biff by a request's pair; then each link
# is taken away: the phone number unlinked, George's email erased.
SPLITS = [
    ("identify", {"email": "doc@hv.edu", "phoneNumber": "123456"}),
    ("identify", {"email": "marty@hv.edu", "phoneNumber": "123456"}),
    *[("identify", body) for body in GEORGE_AND_BIFF],
    ("unlink", ("phone", "123456")),
    ("erase_value", ("email", "george@hv.edu")),
    ("identify", {"email": "george@hv.edu", "phoneNumber": "919191"}),
    ("erase_customer", 4),
    ("erase_customer", 4),
    ("erase_customer", 99),
]


@pytest.fixture
def eraser_app(database_url):
    app = make_app(database_url, IDENTITY_ADMIN_KEYS=ERASER_KEY)
    yield app
    app.extensions["identity_pool"].closeall()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=operation_sequences)
@example(steps=SPLITS)
def test_erasures_unlinks_and_merges_match_the_model(eraser_app, conn, steps):
    with conn.cursor() as cur:
        cur.execute("TRUNCATE contact, contact_event, blocked_value RESTART IDENTITY")
    with eraser_app.app_context():
        blocking.changed()  # the truncated list is read again at the next request
    model, client = Model(), eraser_app.test_client()
    for step, (name, argument) in enumerate(steps):
        assert STEPS[name](eraser_app, client, model, argument), (step, steps)
    assert real_table(conn) == model.table(), steps
    assert recorded_events(conn) == [tuple(event) for event in model.events], steps


def identify_step(_app, client, model, body):
    """POST /identify; whether it answered as the model does."""
    response = client.post("/identify", json=body)
    expected = model.identify(normal_email(body), normal_phone_number(body))
    if expected is None:
        return (response.status_code, response.get_json()["error"]["code"]) == (422, "blocked_value")
    return (response.status_code, response.get_json()) == (200, {"contact": expected})


def erase_value_step(_app, client, model, kind_and_value):
    """DELETE /contacts?email= or ?phoneNumber=; whether it answered as the model does."""
    kind, value = kind_and_value
    key = "email" if kind == "email" else "phoneNumber"
    response = client.delete("/contacts", query_string={key: value}, headers=ERASER)
    return (response.status_code, response.get_json()) == (200, model.erase_value(kind, value))


def erase_customer_step(_app, client, model, contact_id):
    """DELETE /contacts/{id}; whether it answered as the model does."""
    response = client.delete(f"/contacts/{contact_id}", headers=ERASER)
    expected = model.erase_customer(contact_id)
    if expected is None:
        return response.status_code == 404
    return (response.status_code, response.get_json()) == (200, expected)


def unlink_step(app, client, model, kind_and_value):
    """Block the value through the admin API, then unlink it as `blocked add --unlink` does."""
    kind, value = kind_and_value
    body = {"kind": kind, "value": value, "reason": "model"}
    assert client.post("/admin/blocked-values", json=body, headers=ERASER).status_code == 200
    with app.app_context():
        customers = db.run(repository.unlink_value, *pair(kind, value), "model")
    return customers == model.unlink(kind, value)


STEPS = {
    "identify": identify_step,
    "erase_value": erase_value_step,
    "erase_customer": erase_customer_step,
    "unlink": unlink_step,
}
