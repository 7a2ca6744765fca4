"""The HTTP API: validate, call the repository, answer; each operation documented on its view."""

import functools

from flask import Blueprint, current_app, g, request
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

from identity import apidoc, blocking, db, explain, rate_limit, request_log, repository
from identity.apidoc import ErrorExample
from identity.errors import DATABASE_DOWN, PAYLOAD_TOO_LARGE, ROUTE_NOT_FOUND, invalid_request
from identity.json_body import MALFORMED_JSON, NOT_JSON, UNREADABLE_BODY
from identity.schemas import NEITHER_VALUE, NOT_A_PHONE_NUMBER_TYPE, NOT_EXACTLY_ONE
from identity.blocking import BlockedValue, blocked_item_message
from identity.schemas import BATCH_SIZE, MAX_BATCH_ITEMS, CustomerQuery, IdentifyBatchRequest, IdentifyRequest

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
bp.record_once(lambda state: state.app.extensions.update(identity_limits=limits_of(state.app.config)))


def limits_of(config):
    """The limits per customer the settings ask for; 0 is none."""
    return repository.Limits(
        config["MAX_EMAILS_PER_CUSTOMER"] or None,
        config["MAX_PHONE_NUMBERS_PER_CUSTOMER"] or None,
        config["MAX_CONTACTS_PER_CUSTOMER"] or None,
    )


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
    limits = current_app.extensions["identity_limits"]
    outcome = db.run(repository.identify, wanted["email"], wanted["phone_number"], g.request_id, limits)
    request_log.record_outcome(outcome)
    return {"contact": outcome.contact}


# Three of the task's orders in one batch, as a fresh install answers it (tests/test_openapi.py replays it).
BATCH_BODY = {
    "contacts": [
        {"email": "lorraine@hillvalley.edu", "phoneNumber": "123456"},
        {"email": "mcfly@hillvalley.edu", "phoneNumber": "123456"},
        {"email": None, "phoneNumber": 123456},
    ]
}
BATCH_ANSWER = {
    "contacts": [
        IDENTIFY_EXAMPLES["lorraine"][2]["contact"],
        LORRAINE["contact"],
        LORRAINE["contact"],
    ]
}
BATCH_ERROR = {"1.phoneNumber": ["Must be 1 to 20 digits, with an optional leading + and separators."]}
BATCH_BLOCKED = ErrorExample(
    422, "blocked_item", "An item with only blocked values", BlockedValue.code_name, blocked_item_message(2)
)


def batch_body_limit(view):
    """The view reads up to MAX_BATCH_CONTENT_LENGTH; every other route MAX_CONTENT_LENGTH.

    Set in the view's own wrapper, before its body is read: as a hook it ran on every request of
    the blueprint, which cost each POST /identify about 1% of its instructions (README, "Speed").
    """

    @functools.wraps(view)
    def limited(*args, **kwargs):
        request.max_content_length = current_app.config["MAX_BATCH_CONTENT_LENGTH"]
        return view(*args, **kwargs)

    return limited


@bp.post("/identify/batch")
@batch_body_limit
@apidoc.operation(
    "identifyBatch",
    "Link many checkouts' contact details, in order, in one transaction",
    ["customers"],
    f"1 to {MAX_BATCH_ITEMS} items, each taken as /identify takes its body and answered as /identify "
    "would answer it had the items been posted one by one in this order: a later item sees what the "
    "earlier ones wrote. All or nothing: an invalid item refuses the batch with its errors keyed by "
    "index and field (`1.phoneNumber`), an item left with only blocked values refuses it with 422, and "
    "a database failure writes nothing. Against the rate limit a batch counts as its number of items. "
    "The body may be up to MAX_BATCH_CONTENT_LENGTH bytes.",
)
@apidoc.json_body(IdentifyBatchRequest(), {"orders": ("Three orders of one customer", BATCH_BODY)})
@apidoc.answers(
    "Each item's customer, in the items' order.", "Customers", {"orders": ("Three orders", BATCH_ANSWER)}
)
@apidoc.errors(
    MALFORMED_JSON,
    UNREADABLE_BODY,
    invalid_request("invalid_item", "An invalid item", BATCH_ERROR),
    invalid_request("too_many", "More items than the limit", {"contacts": [BATCH_SIZE]}),
    PAYLOAD_TOO_LARGE,
    NOT_JSON,
    BATCH_BLOCKED,
    DATABASE_DOWN,
)
def identify_batch(wanted):
    """Link each item's contact details in order, in one transaction, and answer with each customer."""
    blocklist = blocking.current_blocklist()
    items = [usable_item(blocklist, index, item) for index, item in enumerate(wanted["contacts"])]
    rate_limit.charge(len(items) - 1)
    limits = current_app.extensions["identity_limits"]
    outcomes = db.run(repository.identify_batch, items, g.request_id, limits)
    for outcome in outcomes:
        request_log.record_outcome(outcome)
    return {"contacts": [outcome.contact for outcome in outcomes]}


def usable_item(blocklist, index, item):
    """item with its blocked values made absent; 422 naming its index when it carried only those."""
    try:
        return blocking.usable_under(blocklist, item)
    except BlockedValue:
        raise BlockedValue(blocked_item_message(index)) from None


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
    return found(db.read(repository.customer_of_contact, contact_id), NO_CONTACT)


# The task's George example, as history and path answer it (tests/test_explain.py replays them).
GEORGE_HISTORY = {
    "contact": GEORGE["contact"],
    "events": [
        {
            "at": "2026-11-30T09:00:00+00:00",
            "requestId": "3f2a9c1e",
            "kind": "created",
            "survivorId": 3,
            "contactIds": [3],
            "email": "george@hillvalley.edu",
            "phoneNumber": "919191",
        },
        {
            "at": "2026-11-30T09:01:00+00:00",
            "requestId": "77b0d4aa",
            "kind": "created",
            "survivorId": 4,
            "contactIds": [4],
            "email": "biffsucks@hillvalley.edu",
            "phoneNumber": "717171",
        },
        {
            "at": "2026-11-30T09:02:00+00:00",
            "requestId": "c04e18f7",
            "kind": "merged",
            "survivorId": 3,
            "contactIds": [3, 4],
            "email": "george@hillvalley.edu",
            "phoneNumber": "717171",
        },
    ],
}
GEORGE_PATH = {
    "primaryContactId": 3,
    "path": [
        {"contact": {"id": 3, "email": "george@hillvalley.edu", "phoneNumber": "919191"}},
        {
            "evidence": {
                "kind": "request",
                "email": "george@hillvalley.edu",
                "phoneNumber": "717171",
                "requestId": "c04e18f7",
                "at": "2026-11-30T09:02:00+00:00",
            }
        },
        {"contact": {"id": 4, "email": "biffsucks@hillvalley.edu", "phoneNumber": "717171"}},
    ],
}


@bp.get("/contacts/<contact_id:contact_id>/history")
@apidoc.operation(
    "customerHistory",
    "How a contact's customer came to be: every recorded new contact, merge and refused link",
    ["customers"],
    "Oldest first. Events are recorded from the release that added them on; contacts older than that "
    "show in the customer but have no event. Writes nothing.",
    contact_id={"example": 4},
)
@apidoc.answers("The customer and its events.", "History", {"george": ("George's customer", GEORGE_HISTORY)})
@apidoc.errors(NO_CONTACT, ROUTE_NOT_FOUND, DATABASE_DOWN)
def customer_history(contact_id):
    """The customer of the contact and every recorded event of its contacts, oldest first."""
    found = db.read(repository.customer_history, contact_id)
    if found is None:
        raise NotFound(NO_CONTACT.message)
    customer, events = found
    return {"contact": customer, "events": events}


NOT_ONE_CUSTOMER = ErrorExample(
    404, "apart", "Not one customer", "not_found", "The two contacts are not live contacts of one customer."
)


@bp.get("/contacts/<contact_id:contact_id>/path/<contact_id:other_id>")
@apidoc.operation(
    "evidencePath",
    "Why two contacts are one customer: the shortest chain of evidence between them",
    ["customers"],
    "Contacts alternate with the evidence that links them: a value both hold, or a request that carried "
    "an email of one and a phone number of the other. Writes nothing.",
    contact_id={"example": 3},
    other_id={"example": 4},
)
@apidoc.answers("The path.", "Path", {"george": ("George to Biff", GEORGE_PATH)})
@apidoc.errors(NOT_ONE_CUSTOMER, ROUTE_NOT_FOUND, DATABASE_DOWN)
def evidence_path(contact_id, other_id):
    """The shortest chain of evidence from one contact to the other, when they are one customer."""
    found = db.read(repository.customer_evidence, contact_id)
    path = found and explain.shortest_path(found[1], found[2], contact_id, other_id)
    if not path:
        raise NotFound(NOT_ONE_CUSTOMER.message)
    return {"primaryContactId": found[0], "path": path}


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
    return found(db.read(repository.customer_with_identifier, email, phone_number), NO_HOLDER)


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
