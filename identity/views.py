"""The HTTP API: validate, call the repository, answer; each operation documented on its view."""

from flask import Blueprint
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

from identity import apidoc, blocking, db, request_log, repository
from identity.apidoc import ErrorExample
from identity.errors import DATABASE_DOWN, PAYLOAD_TOO_LARGE, ROUTE_NOT_FOUND, invalid_request
from identity.json_body import MALFORMED_JSON, NOT_JSON, UNREADABLE_BODY
from identity.schemas import NEITHER_VALUE, NOT_A_PHONE_NUMBER_TYPE, NOT_EXACTLY_ONE
from identity.schemas import CustomerQuery, IdentifyRequest

# contact.id is a bigint: a larger id matches no route, so it never reaches PostgreSQL.
MAX_CONTACT_ID = 2**63 - 1


class ContactId(IntegerConverter):
    """A contact id in a URL: ASCII digits only (`\\d` takes any script's), at most a bigint."""

    regex = r"[0-9]+"
    openapi_schema = {"type": "integer", "minimum": 0, "maximum": MAX_CONTACT_ID}

    def __init__(self, url_map):
        super().__init__(url_map, max=MAX_CONTACT_ID)


bp = Blueprint("api", __name__)
# Before the routes: a rule finds its converters when it is added.
bp.record_once(lambda state: state.app.url_map.converters.update(contact_id=ContactId))


def customer(primary_id, emails, phone_numbers, secondary_ids):
    """An answer in the Customer shape, for the examples."""
    contact = {"primaryContatctId": primary_id, "emails": emails, "phoneNumbers": phone_numbers}
    return {"contact": {**contact, "secondaryContactIds": secondary_ids}}


# The task's examples, which tests/test_openapi.py replays against the service: (summary, body, answer).
LORRAINE = customer(1, ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"], ["123456"], [2])
GEORGE = customer(3, ["george@hillvalley.edu", "biffsucks@hillvalley.edu"], ["919191", "717171"], [4])
IDENTIFY_EXAMPLES = {
    "lorraine": (
        "A first order: a new primary",
        {"email": "lorraine@hillvalley.edu", "phoneNumber": "123456"},
        customer(1, ["lorraine@hillvalley.edu"], ["123456"], []),
    ),
    "mcfly": (
        "A new email with a known phone number: a new secondary",
        {"email": "mcfly@hillvalley.edu", "phoneNumber": "123456"},
        LORRAINE,
    ),
    "known": (
        "One known value: the whole customer, nothing written",
        {"email": None, "phoneNumber": 123456},
        LORRAINE,
    ),
    "george": (
        "George's email with Biff's phone number: Biff's customer (4) is merged into George's (3)",
        {"email": "george@hillvalley.edu", "phoneNumber": "717171"},
        GEORGE,
    ),
}
# Each answer links to the lookup of its customer by the primary's id.
PRIMARY = {
    "primary": {
        "operationId": "contactById",
        "parameters": {"contact_id": "$response.body#/contact/primaryContatctId"},
    }
}


@bp.post("/identify")
@apidoc.operation(
    "identify",
    "Link a checkout's contact details into one customer",
    ["customers"],
    "Contacts sharing an email or a phone number become one customer, its oldest contact the primary; two "
    "customers joined by a request merge into the older. At least one value must remain after "
    "normalisation; other keys are ignored. A blocked value (see /admin/blocked-values) counts as absent. "
    "Always 200 when it succeeds.",
)
@apidoc.json_body(IdentifyRequest(), {name: (s, body) for name, (s, body, _) in IDENTIFY_EXAMPLES.items()})
@apidoc.answers(
    "The consolidated customer, whether the request created, merged or only read.",
    "Customer",
    {name: (s, answer) for name, (s, _, answer) in IDENTIFY_EXAMPLES.items()},
    links=PRIMARY,
)
@apidoc.errors(
    MALFORMED_JSON,
    UNREADABLE_BODY,
    invalid_request("invalid_field", "An invalid field", {"phoneNumber": [NOT_A_PHONE_NUMBER_TYPE]}),
    invalid_request("no_value", "Neither value", {"_schema": [NEITHER_VALUE]}),
    PAYLOAD_TOO_LARGE,
    NOT_JSON,
    blocking.BLOCKED,
    DATABASE_DOWN,
)
def identify(wanted):
    """Link the checkout's contact details into one customer and answer with that customer."""
    wanted = blocking.usable(wanted)
    outcome = db.run(repository.identify, wanted["email"], wanted["phone_number"])
    request_log.record_outcome(outcome, wanted)
    return {"contact": outcome.contact}


NO_CONTACT = ErrorExample(404, "contact", "Unknown contact", "not_found", "No live contact has this id.")


@bp.get("/contacts/<contact_id:contact_id>")
@apidoc.operation(
    "contactById",
    "The customer a contact belongs to, by the id of its primary or of a secondary",
    ["customers"],
    "Writes nothing. A deleted contact, or one of a deleted primary, is not found.",
    contact_id={"example": 2},
)
@apidoc.answers("The customer.", "Customer", {"mcfly": ("Secondary 2", LORRAINE)}, links=PRIMARY)
@apidoc.errors(NO_CONTACT, ROUTE_NOT_FOUND, DATABASE_DOWN)
def contact_by_id(contact_id):
    """The customer the contact belongs to, found by any of its contacts' ids; writes nothing."""
    return found(db.run(repository.customer_of_contact, contact_id), NO_CONTACT)


NO_HOLDER = ErrorExample(
    404, "identifier", "Unknown value", "not_found", "No live contact has this email or phone number."
)


@bp.get("/contacts")
@apidoc.operation(
    "contactByIdentifier",
    "The customer holding an email or a phone number",
    ["customers"],
    "Exactly one of `email` and `phoneNumber`, normalised as /identify does them (send a + as %2B); "
    "other keys are ignored. Writes nothing.",
)
@apidoc.query(CustomerQuery())
@apidoc.answers(
    "The customer.", "Customer", {"mcfly": ("email=mcfly@hillvalley.edu", LORRAINE)}, links=PRIMARY
)
@apidoc.errors(
    invalid_request("both", "Both or neither", {"_schema": [NOT_EXACTLY_ONE]}),
    NO_HOLDER,
    blocking.BLOCKED,
    DATABASE_DOWN,
)
def contact_by_identifier(wanted):
    """The customer holding the email or the phone number in the query string; writes nothing."""
    wanted = blocking.usable(wanted)
    email, phone_number = wanted.get("email"), wanted.get("phone_number")
    return found(db.run(repository.customer_with_identifier, email, phone_number), NO_HOLDER)


def found(customer, not_found):
    """The answer for a lookup, or the 404 not_found describes when it found no customer."""
    if customer is None:
        raise NotFound(not_found.message)
    return {"contact": customer}


@bp.get("/healthz")
@apidoc.operation("healthz", "Alive while the process serves; needs no database", ["operations"])
@apidoc.answers("Alive.", "Status", {"ok": ("Alive", {"status": "ok"})})
def healthz():
    """Alive while the process serves."""
    return {"status": "ok"}


@bp.get("/readyz")
@apidoc.operation("readyz", "Ready while the database answers", ["operations"])
@apidoc.answers("Ready.", "Status", {"ready": ("Ready", {"status": "ready"})})
@apidoc.errors(DATABASE_DOWN)
def readyz():
    """Ready while the database answers."""
    db.run(repository.ping)
    return {"status": "ready"}
