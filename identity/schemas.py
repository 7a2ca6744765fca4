"""The API's shapes: requests validated and normalised on the way in, answers as the document shows them."""

import re
import unicodedata

import phonenumbers
from flask import current_app, has_app_context
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, pre_load, validates_schema
from marshmallow.validate import Length, OneOf, Range

MAX_EMAIL_LENGTH = 254
PHONE_SEPARATORS = re.compile(r"[\s\-.()]")
PHONE_NUMBER = re.compile(r"\+?[0-9]{1,20}")
# What PhoneNumber accepts, for the document: blank (absent), or separators around an optional + and
# 1 to 20 digits. tests/test_openapi.py checks that it accepts exactly what PhoneNumber does.
PHONE_PATTERN = (
    rf"^\s*$|^{PHONE_SEPARATORS.pattern}*(\+{PHONE_SEPARATORS.pattern}*)?"
    rf"([0-9]{PHONE_SEPARATORS.pattern}*){{1,20}}$"
)
NOT_A_PHONE_NUMBER_TYPE = "Must be a string, a non-negative integer or null."
NEITHER_VALUE = "Give an email, a phoneNumber or both."
NOT_EXACTLY_ONE = "Give exactly one of email and phoneNumber."


def is_forbidden_in_email(char):
    """White space, control characters and lone surrogates (no UTF-8 can carry one) never belong."""
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def folded_email(value):
    """value in NFKC with full case folding, trimmed: one address however its letters were typed.

    NFKC makes compatibility forms one (fullwidth `ｊｏｈｎ`, ligatures) and composes letters written
    decomposed (`e` + U+0301 is `é`); case folding is lower-casing for every script (Greek final
    sigma is sigma, `ß` is `ss`). NFKC runs again after folding, which can leave a sequence decomposed.
    Folding turns the Turkish dotted capital `İ` into `i` + U+0307; no address tells the two apart,
    so the dot goes and `İvan` is `ivan`.
    """
    if value.isascii():
        return value.lower().strip()  # NFKC leaves ASCII as it is, and folding it is lower-casing
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
    return folded.replace("i\u0307", "i").strip()


def phone_region():
    """PHONE_REGION of the running app (empty: numbers are kept as digits, as the task has them)."""
    return current_app.config["PHONE_REGION"] if has_app_context() else ""


def in_e164(number, region):
    """number read as a phone number of region, in E.164 (`+919876543210`); 400 unless it is possible."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_possible_number(parsed):
        raise ValidationError(f"Must be a possible phone number for the region {region}.")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normal_email(value):
    """An email as /identify stores it, None when blank; ValidationError when it is no address.

    A plain function, so a bulk import normalises with this very code without a schema per record.
    """
    if not isinstance(value, str):
        raise ValidationError("Must be a string or null.")
    email = folded_email(value)
    if not email:
        return None
    if len(email) > MAX_EMAIL_LENGTH:
        raise ValidationError(f"Must be at most {MAX_EMAIL_LENGTH} characters.")
    if not is_address(email):
        raise ValidationError("Must be an address with one @, text on both sides, no spaces.")
    return email


# In ASCII the characters is_forbidden_in_email refuses are exactly the controls and the space, so
# one match decides an ASCII address: text, one @, text, none of those (a million: 0.2 s less).
ASCII_ADDRESS = re.compile(r"[^@\x00-\x20\x7f]+@[^@\x00-\x20\x7f]+")


def is_address(email):
    """Whether email has one @, text on both sides, and no character is_forbidden_in_email."""
    if email.isascii():
        return ASCII_ADDRESS.fullmatch(email) is not None
    local, at, domain = email.partition("@")
    return bool(at and local and domain) and "@" not in domain and not any(map(is_forbidden_in_email, email))


def normal_phone_number(value, region=""):
    """A phone number as /identify stores it under region ("" keeps digits), None when blank; else 400."""
    # Most numbers come as bare digits: one match takes them as they are (a million: 0.1 s less).
    number = value if isinstance(value, str) and PHONE_NUMBER.fullmatch(value) else digits_of(value)
    if number is None:
        return None
    return in_e164(number, region) if region else number


def digits_of(value):
    """The digits (and leading +) of a phone number given with separators, or as an integer; None
    when blank; else 400."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not isinstance(value, str):
        raise ValidationError(NOT_A_PHONE_NUMBER_TYPE)
    if not value.strip():
        return None
    number = PHONE_SEPARATORS.sub("", value)
    if not PHONE_NUMBER.fullmatch(number):
        raise ValidationError("Must be 1 to 20 digits, with an optional leading + and separators.")
    return number


class Email(fields.Field):
    """An email address: Unicode-normalised and case-folded, trimmed; empty means absent. No DNS checks."""

    def openapi_property(self, _converted):
        """A string; `format` hints at an address, which the service checks only loosely."""
        return {
            "type": "string",
            "format": "email",
            "description": "Trimmed, in Unicode NFKC and case-folded; blank is absent.",
        }

    def _deserialize(self, value, attr, data, **kwargs):
        return normal_email(value)


class PhoneNumber(fields.Field):
    """A phone number as a string or a non-negative integer, stored as an optional + and digits."""

    LARGEST_INTEGER = 10**20 - 1

    def openapi_property(self, converted):
        """A string or a non-negative integer; null on the string branch (3.0 ignores it beside no type)."""
        text = {"type": "string", "pattern": PHONE_PATTERN}
        if converted.pop("nullable", False):
            text["nullable"] = True
        number = {"type": "integer", "minimum": 0, "maximum": self.LARGEST_INTEGER}
        return {
            "anyOf": [text, number],
            "description": (
                "Stored as an optional + and digits; with PHONE_REGION set, in E.164 and refused unless "
                "possible for that region. Blank is absent."
            ),
        }

    def _deserialize(self, value, attr, data, **kwargs):
        return normal_phone_number(value, phone_region())


class IdentifyRequest(Schema):
    """The body of POST /identify; keys other than these two are ignored."""

    class Meta:
        unknown = EXCLUDE

    error_messages = {"type": "The body must be a JSON object."}

    email = Email(allow_none=True, load_default=None)
    phone_number = PhoneNumber(data_key="phoneNumber", allow_none=True, load_default=None)

    @validates_schema
    def needs_an_identifier(self, data, **kwargs):
        """Refuse a request that carries neither value once normalised."""
        if data.get("email") is None and data.get("phone_number") is None:
            raise ValidationError(NEITHER_VALUE)


MAX_BATCH_ITEMS = 1000
BATCH_SIZE = f"Give 1 to {MAX_BATCH_ITEMS} contacts; send more in several batches."


def flat_messages(messages):
    """marshmallow's messages with each item's keyed by its index and field, as "3.phoneNumber"."""
    flat = {}
    for key, inner in messages.items():
        if key == "contacts" and isinstance(inner, dict):
            for i, item in inner.items():
                # An item that is not an object (null, a number) has messages of its own, not by field.
                item = item if isinstance(item, dict) else {"_schema": item}
                flat.update({f"{i}.{name}": text for name, text in item.items()})
        else:
            flat[key] = inner
    return flat


def normal_values(email, phone_number, region):
    """(email, phone number) as IdentifyRequest's fields load them, null staying absent; ValidationError
    as theirs. For callers that load many at once without a schema each (a batch, an import)."""
    return (
        None if email is None else normal_email(email),
        None if phone_number is None else normal_phone_number(phone_number, region),
    )


def loaded_item(item, region):
    """item as IdentifyRequest loads it, by the functions its fields call; None when it is invalid."""
    if not isinstance(item, dict):
        return None
    try:
        email, phone_number = normal_values(item.get("email"), item.get("phoneNumber"), region)
    except ValidationError:
        return None
    if email is None and phone_number is None:
        return None
    return {"email": email, "phone_number": phone_number}


class IdentifyBatchRequest(Schema):
    """The body of POST /identify/batch: the items, each exactly as /identify takes its body."""

    class Meta:
        unknown = EXCLUDE

    error_messages = {"type": "The body must be a JSON object."}

    contacts = fields.List(
        fields.Nested(IdentifyRequest),
        required=True,
        validate=Length(1, MAX_BATCH_ITEMS, error=BATCH_SIZE),
        metadata={"description": f"1 to {MAX_BATCH_ITEMS} items, applied in this order."},
    )

    @pre_load
    def at_most_the_limit(self, data, **kwargs):
        """Refuse an oversized batch before its items are read, with the limit as the only message."""
        items = data.get("contacts") if isinstance(data, dict) else None
        if isinstance(items, list) and len(items) > MAX_BATCH_ITEMS:
            raise ValidationError(BATCH_SIZE, "contacts")
        return data

    def handle_error(self, error, data, **kwargs):
        """An item's messages are keyed by its index and field, as "3.phoneNumber"."""
        raise ValidationError(flat_messages(error.messages)) from error

    def load(self, data, **kwargs):
        """What the schema loads from data; a valid body's items by the plain functions its fields call.

        A schema per item cost about 45 µs (README, "Batches and imports"), most of a batch's time in
        the app. A body the fast way cannot load whole goes to the schema, which alone words the
        messages, so they stay exactly its own.
        """
        items = data.get("contacts") if isinstance(data, dict) and not kwargs else None
        if isinstance(items, list) and 0 < len(items) <= MAX_BATCH_ITEMS:
            region = phone_region()
            loaded = [loaded_item(item, region) for item in items]
            if None not in loaded:
                return {"contacts": loaded}
        return super().load(data, **kwargs)


class CustomerQuery(Schema):
    """The query string of GET /contacts: an email or a phoneNumber; other keys are ignored."""

    class Meta:
        unknown = EXCLUDE

    email = Email()
    phone_number = PhoneNumber(data_key="phoneNumber")

    @validates_schema
    def needs_exactly_one_identifier(self, data, **kwargs):
        """Refuse a lookup by both values, or by neither once normalised."""
        if (data.get("email") is None) == (data.get("phone_number") is None):
            raise ValidationError(NOT_EXACTLY_ONE)


class ErasureQuery(CustomerQuery):
    """The query string of DELETE /contacts: the email or the phoneNumber to erase; blocked ones too."""


BLOCKED_KINDS = ("email", "phone")
# As long as the longest email: a DELETE's query string then fits gunicorn's request line, even with
# every character percent-encoded from four bytes of UTF-8.
MAX_PATTERN_LENGTH = MAX_EMAIL_LENGTH


def blocked_form(kind, value, pattern):
    """value as the list holds it: a value normalised as /identify does it, or a checked pattern."""
    if pattern:
        try:
            re.compile(value)
        except re.error as error:
            raise ValidationError(f"Not a regular expression: {error}.", "value") from None
        return value
    try:
        normalised = normal_email(value) if kind == "email" else normal_phone_number(value, phone_region())
    except ValidationError as error:
        raise ValidationError(error.messages, "value") from None
    if normalised is None:
        raise ValidationError("Nothing is left of it once normalised.", "value")
    return normalised


class JSONBoolean(fields.Boolean):
    """true or false, nothing else: marshmallow's Boolean would take 0, 1, "yes" and more."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


PATTERN_DESCRIPTION = "value is a Python regular expression that must match a whole value."


class BlockedValueKey(Schema):
    """Which entry of the blocked-value list: its kind, and its exact value or its pattern."""

    class Meta:
        unknown = EXCLUDE

    kind = fields.String(required=True, validate=OneOf(BLOCKED_KINDS))
    value = fields.String(
        required=True,
        validate=Length(1, MAX_PATTERN_LENGTH),
        metadata={"description": "Normalised as /identify normalises it; a pattern is taken as it is."},
    )
    # In a query string exactly `true` or `false`; the CLI passes booleans.
    pattern = fields.Boolean(
        load_default=False,
        truthy={"true", True},
        falsy={"false", False},
        metadata={"description": PATTERN_DESCRIPTION},
    )

    @post_load
    def in_blocked_form(self, data, **kwargs):
        """The value as the list holds it."""
        return {**data, "value": blocked_form(data["kind"], data["value"], data["pattern"])}


class BlockedValueRequest(BlockedValueKey):
    """A value to block, with the reason."""

    pattern = JSONBoolean(load_default=False, metadata={"description": PATTERN_DESCRIPTION})
    reason = fields.String(required=True, validate=Length(1, 500))


class BlockedValueEntry(Schema):
    """One entry of the blocked-value list."""

    id = fields.Integer(required=True)
    kind = fields.String(required=True, validate=OneOf(BLOCKED_KINDS))
    value = fields.String(required=True)
    pattern = fields.Boolean(required=True)
    reason = fields.String(required=True)
    added_at = fields.DateTime(data_key="addedAt", required=True)
    added_by = fields.String(data_key="addedBy", required=True)


class BlockedValueAnswer(Schema):
    """One entry, added, found or removed."""

    blocked_value = fields.Nested(BlockedValueEntry, data_key="blockedValue", required=True)
    added = fields.Boolean(metadata={"description": "POST only: false when the entry was already there."})


class BlockedValueList(Schema):
    """The whole list and its version, which moves on every change."""

    version = fields.Integer(required=True)
    blocked_values = fields.List(fields.Nested(BlockedValueEntry), data_key="blockedValues", required=True)


class AuditQuery(Schema):
    """How many entries each part of the audit lists."""

    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=10, validate=Range(1, 1000))


class Contact(Schema):
    """A consolidated customer."""

    primary_contact_id = fields.Integer(
        data_key="primaryContatctId",
        required=True,
        metadata={"description": "The primary's id; the key keeps the task's spelling."},
    )
    emails = fields.List(
        fields.String(), required=True, metadata={"description": "Distinct, the primary's first."}
    )
    phone_numbers = fields.List(
        fields.String(),
        data_key="phoneNumbers",
        required=True,
        metadata={"description": "Distinct, normalised, the primary's first."},
    )
    secondary_contact_ids = fields.List(
        fields.Integer(),
        data_key="secondaryContactIds",
        required=True,
        metadata={"description": "Ascending."},
    )


class Customer(Schema):
    """The answer of /identify and of the lookups."""

    contact = fields.Nested(Contact, required=True)


class Customers(Schema):
    """The answer of /identify/batch: each item's customer as /identify answers it, in order."""

    contacts = fields.List(fields.Nested(Contact), required=True)


EVENT_KINDS = ("created", "merged", "refused", "linked", "erased", "unlinked", "rederived")


class Event(Schema):
    """A recorded change: a new contact, a merge, a link refused by a limit, an erasure or a re-derivation."""

    at = fields.DateTime(required=True)
    request_id = fields.String(data_key="requestId", metadata={"description": "X-Request-ID of the request."})
    kind = fields.String(required=True, validate=OneOf(EVENT_KINDS))
    survivor_id = fields.Integer(
        data_key="survivorId",
        required=True,
        metadata={
            "description": "The customer's primary after it; for erased, unlinked, rederived and linked, "
            "the primary it had before."
        },
    )
    contact_ids = fields.List(
        fields.Integer(),
        data_key="contactIds",
        required=True,
        metadata={
            "description": "The contacts involved: a new contact, the survivor, the primaries merged; for "
            "a customer erased its contacts; for a re-derivation the old primary, then the others its "
            "contacts now have; for linked the primary and the secondaries linked before events."
        },
    )
    email = fields.String(metadata={"description": "The request's email."})
    phone_number = fields.String(
        data_key="phoneNumber", metadata={"description": "The request's phone number."}
    )
    reason = fields.String(
        metadata={"description": "For a refused link the limit; for the kinds of issue 13 what happened."}
    )


class History(Schema):
    """A customer and how it came to be."""

    contact = fields.Nested(Contact, required=True)
    events = fields.List(fields.Nested(Event), required=True, metadata={"description": "Oldest first."})


class PathContact(Schema):
    """A contact on a path."""

    id = fields.Integer(required=True)
    email = fields.String(allow_none=True, required=True)
    phone_number = fields.String(data_key="phoneNumber", allow_none=True, required=True)


class PathStep(Schema):
    """A contact, or the evidence linking the contacts before and after it."""

    contact = fields.Nested(PathContact)
    evidence = fields.Dict(
        metadata={
            "description": "`kind`: `shared email` or `shared phoneNumber` (with the value), `request` (the "
            "email and phone number a request carried, its id and time), or `linked before events`."
        }
    )


class Path(Schema):
    """The shortest chain of evidence between two contacts of one customer."""

    primary_contact_id = fields.Integer(data_key="primaryContactId", required=True)
    path = fields.List(fields.Nested(PathStep), required=True)


class CustomerErased(Schema):
    """What erasing a customer blanked; zero counts when it was erased already."""

    contact_ids = fields.List(
        fields.Integer(), data_key="contactIds", required=True, metadata={"description": "Primary first."}
    )
    emails = fields.Integer(required=True, metadata={"description": "Distinct emails blanked."})
    phone_numbers = fields.Integer(
        data_key="phoneNumbers", required=True, metadata={"description": "Distinct phone numbers blanked."}
    )
    events = fields.Integer(required=True, metadata={"description": "Recorded events left with no value."})


class ValueErased(Schema):
    """What erasing a value blanked, and the customers its holders form now."""

    contacts = fields.Integer(required=True, metadata={"description": "Contacts that held the value."})
    deleted = fields.Integer(
        required=True, metadata={"description": "Of those, left with no value: deleted."}
    )
    events = fields.Integer(required=True, metadata={"description": "Recorded events that carried it."})
    customers = fields.List(
        fields.Nested(Contact),
        required=True,
        metadata={"description": "Re-derived from what remains, by primary id; empty when none held it."},
    )


class Audit(Schema):
    """Where over-merging would show: the largest customers, the values that merged the most, refusals."""

    largest_customers = fields.List(fields.Dict(), data_key="largestCustomers", required=True)
    most_joining_values = fields.List(fields.Dict(), data_key="mostJoiningValues", required=True)
    recent_refused_links = fields.List(fields.Nested(Event), data_key="recentRefusedLinks", required=True)


class ErrorDetail(Schema):
    """What went wrong: a stable code for programs, a message for people."""

    code = fields.String(required=True)
    message = fields.String(required=True)
    invalid = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        data_key="fields",
        metadata={"description": "Validation errors only: messages by field name, or `_schema`."},
    )


class Error(Schema):
    """The one shape of every error."""

    error = fields.Nested(ErrorDetail, required=True)


class Status(Schema):
    """A health answer."""

    status = fields.String(required=True)
