"""The admin API: the blocked-value list, behind IDENTITY_ADMIN_KEYS (identity/api_keys.py)."""

from flask import Blueprint
from werkzeug.exceptions import NotFound

from identity import apidoc, blocking, db, repository
from identity.api_keys import admin_key_name
from identity.apidoc import ErrorExample
from identity.errors import DATABASE_DOWN, invalid_request
from identity.json_body import MALFORMED_JSON, NOT_JSON
from identity.schemas import AuditQuery, BlockedValueKey, BlockedValueRequest

bp = Blueprint("admin", __name__, url_prefix="/admin")

# The key of the examples: tests/test_blocking.py replays them with it, so addedBy is what it answers.
EXAMPLE_ADMIN_KEY = "example-admin-key"
EXAMPLE_ADDED_BY = "admin key 9b3a91136feac4a6"  # the start of the key's SHA-256
SUPPORT_PHONE = {
    "id": 1,
    "kind": "phone",
    "value": "18005550100",
    "pattern": False,
    "reason": "The shop's support line, typed in by staff",
    "addedAt": "2026-11-30T09:00:00+00:00",
    "addedBy": EXAMPLE_ADDED_BY,
}
BLOCK_SUPPORT_PHONE = {"kind": "phone", "value": "1-800-555-0100", "reason": SUPPORT_PHONE["reason"]}
NOT_BLOCKED = ErrorExample(
    404, "not_blocked", "Not on the list", "not_found", "The list holds no such value or pattern."
)


@bp.get("/blocked-values")
@apidoc.operation(
    "listBlockedValues",
    "Every blocked value and pattern",
    ["admin"],
    "The version moves on every change; each worker re-reads the list within a second of one.",
)
@apidoc.answers(
    "The list.", "BlockedValueList", {"one": ("One value", {"version": 1, "blockedValues": [SUPPORT_PHONE]})}
)
@apidoc.errors(DATABASE_DOWN)
def list_blocked_values():
    """The whole list, with its version."""
    version, entries = db.run(repository.blocked_values)
    return {"version": version, "blockedValues": entries}


@bp.post("/blocked-values")
@apidoc.operation(
    "blockValue",
    "Block a value or a pattern: it links no customer from now on",
    ["admin"],
    "An exact value is normalised as /identify normalises requests. Rows already stored keep the value, "
    "but it links nothing new. Blocking a value already on the list changes nothing (`added` is false).",
)
@apidoc.json_body(BlockedValueRequest(), {"phone": ("The shop's own phone", BLOCK_SUPPORT_PHONE)})
@apidoc.answers(
    "The entry.",
    "BlockedValueAnswer",
    {"phone": ("Added", {"blockedValue": SUPPORT_PHONE, "added": True})},
)
@apidoc.errors(
    MALFORMED_JSON,
    invalid_request("bad_kind", "An unknown kind", {"kind": ["Must be one of: email, phone."]}),
    NOT_JSON,
    DATABASE_DOWN,
)
def block_value(wanted):
    """Add the value or pattern to the list, recording which admin key did."""
    entry, added = db.run(repository.add_blocked_value, {**wanted, "added_by": admin_key_name()})
    blocking.changed()
    return {"blockedValue": entry, "added": added}


@bp.delete("/blocked-values")
@apidoc.operation(
    "unblockValue",
    "Take a value or a pattern off the list",
    ["admin"],
    "Customers it kept apart stay apart; later requests may link through it again.",
)
@apidoc.query(BlockedValueKey())
@apidoc.answers(
    "The entry removed.", "BlockedValueAnswer", {"phone": ("Removed", {"blockedValue": SUPPORT_PHONE})}
)
@apidoc.errors(
    invalid_request(
        "bad_value", "Not a value of its kind", {"value": ["Nothing is left of it once normalised."]}
    ),
    NOT_BLOCKED,
    DATABASE_DOWN,
)
def unblock_value(wanted):
    """Remove the value or pattern from the list."""
    removed = db.run(repository.remove_blocked_value, wanted)
    blocking.changed()
    if removed is None:
        raise NotFound(NOT_BLOCKED.message)
    return {"blockedValue": removed}


AUDIT_EXAMPLE = {
    "largestCustomers": [
        {"primaryContactId": 1, "contacts": 2, "emails": 2, "phoneNumbers": 1},
        {"primaryContactId": 3, "contacts": 2, "emails": 2, "phoneNumbers": 2},
    ],
    "mostJoiningValues": [
        {"kind": "email", "value": "george@hillvalley.edu", "customersMerged": 1},
        {"kind": "phone", "value": "717171", "customersMerged": 1},
    ],
    "recentRefusedLinks": [],
}


@bp.get("/audit")
@apidoc.operation(
    "audit",
    "Where over-merging would show: largest customers, values that merged the most, recent refused links",
    ["admin"],
    "The largest customers are counted over the whole table: an audit, not a request path.",
)
@apidoc.query(AuditQuery())
@apidoc.answers("The audit.", "Audit", {"george": ("After the task's examples", AUDIT_EXAMPLE)})
@apidoc.errors(
    invalid_request(
        "limit",
        "A limit out of range",
        {"limit": ["Must be greater than or equal to 1 and less than or equal to 1000."]},
    ),
    DATABASE_DOWN,
)
def audit(wanted):
    """The audit, each part at most limit entries long."""
    return db.run(repository.audit, wanted["limit"])
