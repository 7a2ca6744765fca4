"""Random request sequences through the whole stack, each answer checked against an in-memory model.

The model is the task's rules written plainly in Python: ids 1, 2, 3... in insertion order, the
smallest primary id survives a merge (a single-threaded run creates rows in id order). Every
example starts from an empty table with its identity reset, so answers must match exactly.
"""

from dataclasses import astuple, dataclass

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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


class Model:
    """The contact table and the reconciliation rules, kept as simple as possible."""

    def __init__(self):
        self.rows = []

    def identify(self, email, phone_number):
        """Apply one request; return the answer's "contact" object."""
        matches = [
            row
            for row in self.rows
            if (email is not None and row.email == email)
            or (phone_number is not None and row.phone_number == phone_number)
        ]
        if not matches:
            return self.answer(self.insert(email, phone_number, None))
        survivor, *demoted = sorted({primary_of(row) for row in matches})
        for row in self.rows:
            if primary_of(row) in demoted:
                row.linked_id, row.link_precedence = survivor, "secondary"
        members = self.customer(survivor)
        if (email is not None and email not in {row.email for row in members}) or (
            phone_number is not None and phone_number not in {row.phone_number for row in members}
        ):
            self.insert(email, phone_number, survivor)
        return self.answer(survivor)

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
    with conn.cursor() as cur:
        cur.execute("TRUNCATE contact RESTART IDENTITY")
    model = Model()
    for step, body in enumerate(requests):
        response = client.post("/identify", json=body)
        expected = model.identify(normal_email(body), normal_phone_number(body))
        assert (response.status_code, response.get_json()) == (200, {"contact": expected}), (step, body)
    assert real_table(conn) == model.table()
