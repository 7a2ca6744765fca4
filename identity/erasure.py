"""Erasure on request (GDPR article 17, CCPA): a customer, or one value, behind an admin key.

The work is one SQL function each (sql/migrations/0009_erase_v1.sql), which takes the locks of
/identify, so an erasure racing requests is serialised with them. The log lines say what was erased by
ids and counts, never by value: a log kept elsewhere could not be erased with the rows.
"""

import logging
from dataclasses import asdict

from flask import Blueprint, g
from werkzeug.exceptions import NotFound

from identity import apidoc, db, repository
from identity.api_keys import admin_only
from identity.apidoc import ErrorExample
from identity.errors import DATABASE_DOWN, invalid_request
from identity.logs import log_info
from identity.schemas import NOT_EXACTLY_ONE, ErasureQuery

bp = Blueprint("erasure", __name__)
erasure_log = logging.getLogger("identity.erasure")

# After the task's five requests (tests/test_erasure.py replays these with the admin example key).
GEORGE_ERASED = {"contactIds": [3, 4], "emails": 2, "phoneNumbers": 2, "events": 3}
LORRAINE_SPLIT = {
    "contacts": 2,
    "deleted": 0,
    "events": 2,
    "customers": [
        {
            "primaryContatctId": 1,
            "emails": ["lorraine@hillvalley.edu"],
            "phoneNumbers": [],
            "secondaryContactIds": [],
        },
        {
            "primaryContatctId": 2,
            "emails": ["mcfly@hillvalley.edu"],
            "phoneNumbers": [],
            "secondaryContactIds": [],
        },
    ],
}
NOTHING_ERASED = {"contacts": 0, "deleted": 0, "events": 0, "customers": []}
UNKNOWN_CONTACT = ErrorExample(404, "contact", "Unknown contact", "not_found", "No contact has this id.")


@bp.delete("/contacts/<contact_id:contact_id>")
@admin_only
@apidoc.operation(
    "eraseCustomer",
    "Erase the customer a contact belongs to",
    ["admin"],
    "Every contact of the customer has its email and phone number blanked and is soft-deleted; every "
    "recorded event of it keeps no value. /identify with those values afterwards starts a new customer. "
    "Erasing again answers zero counts. Backups and the WAL still hold the values for a while (README, "
    '"Erasure and unlinking").',
    contact_id={"example": 4},
)
@apidoc.answers(
    "What was erased.",
    "CustomerErased",
    {
        "george": ("George's customer, after the task's requests", GEORGE_ERASED),
        "again": ("Erased already", {"contactIds": [], "emails": 0, "phoneNumbers": 0, "events": 0}),
    },
)
@apidoc.errors(UNKNOWN_CONTACT, DATABASE_DOWN)
def erase_customer(contact_id):
    """Erase every contact and event of the contact's customer."""
    erased = db.run(repository.erase_customer, contact_id, g.request_id)
    if erased is None:
        raise NotFound(UNKNOWN_CONTACT.message)
    log_info(erasure_log, "customer erased", {"contactIds": erased.contact_ids, "events": erased.events})
    return customer_erased(erased)


def customer_erased(erased):
    """The answer for a customer erased (the CLI prints it too)."""
    return {
        "contactIds": erased.contact_ids,
        "emails": erased.emails,
        "phoneNumbers": erased.phone_numbers,
        "events": erased.events,
    }


@bp.delete("/contacts")
@admin_only
@apidoc.operation(
    "eraseValue",
    "Erase an email or a phone number, and re-derive the customers that held it",
    ["admin"],
    "Exactly one of `email` and `phoneNumber`, normalised as /identify does them (a blocked value may be "
    "erased too). The value is blanked on every contact and in every recorded event; a contact left "
    "with no value is soft-deleted. Each customer that held it is then re-derived from what remains: "
    "contacts joined by a value they still share or by a recorded request that carried values of both, "
    "each group a customer whose oldest contact is its primary. So one customer may become several. "
    "Erasing again answers zero counts and no customers.",
)
@apidoc.query(ErasureQuery())
@apidoc.answers(
    "What was erased, and the customers that result.",
    "ValueErased",
    {
        "split": ("phoneNumber=123456 after the task's requests: Lorraine and McFly apart", LORRAINE_SPLIT),
        "again": ("Erased already", NOTHING_ERASED),
    },
)
@apidoc.errors(invalid_request("both", "Both or neither", {"_schema": [NOT_EXACTLY_ONE]}), DATABASE_DOWN)
def erase_value(wanted):
    """Erase the value everywhere and re-derive its customers."""
    email, phone_number = wanted.get("email"), wanted.get("phone_number")
    erased = db.run(repository.erase_value, email, phone_number, g.request_id)
    kind = "email" if email is not None else "phoneNumber"
    primaries = [customer["primaryContatctId"] for customer in erased.customers]
    log_info(erasure_log, "value erased", {"kind": kind, "contacts": erased.contacts, "customers": primaries})
    return asdict(erased)
