"""The HTTP API: validate, call the repository, answer."""

from flask import Blueprint, request
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

from identity import db, observability, repository
from identity.schemas import CustomerQuery, IdentifyRequest

# contact.id is a bigint: a larger id matches no route, so it never reaches PostgreSQL.
MAX_CONTACT_ID = 2**63 - 1
NO_CONTACT_WITH_ID = "No live contact has this id."


class ContactId(IntegerConverter):
    """A contact id in a URL: ASCII digits only (`\\d` takes any script's), at most a bigint."""

    regex = r"[0-9]+"

    def __init__(self, url_map):
        super().__init__(url_map, max=MAX_CONTACT_ID)


bp = Blueprint("api", __name__)
# Before the routes: a rule finds its converters when it is added.
bp.record_once(lambda state: state.app.url_map.converters.update(contact_id=ContactId))
identify_request = IdentifyRequest()
customer_query = CustomerQuery()


@bp.post("/identify")
def identify():
    """Link the checkout's contact details into one customer and answer with that customer."""
    wanted = identify_request.load(request.get_json())
    outcome = db.run(repository.identify, wanted["email"], wanted["phone_number"])
    observability.record_outcome(outcome, wanted)
    return {"contact": outcome.contact}


@bp.get("/contacts/<contact_id:contact_id>")
def contact_by_id(contact_id):
    """The customer the contact belongs to, found by any of its contacts' ids; writes nothing."""
    customer = db.run(repository.customer_of_contact, contact_id)
    return found(customer, NO_CONTACT_WITH_ID)


@bp.get("/contacts")
def contact_by_identifier():
    """The customer holding the email or the phone number in the query string; writes nothing."""
    wanted = customer_query.load(request.args)
    customer = db.run(repository.customer_with_identifier, wanted.get("email"), wanted.get("phone_number"))
    return found(customer, "No live contact has this email or phone number.")


def found(customer, message):
    """The answer for a lookup, or a 404 when it found no customer."""
    if customer is None:
        raise NotFound(message)
    return {"contact": customer}


@bp.get("/healthz")
def healthz():
    """Alive while the process serves."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Ready while the database answers."""
    db.run(repository.ping)
    return {"status": "ready"}
