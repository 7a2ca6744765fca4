"""Request validation: normalise the contact details and refuse what cannot be one."""

import re
import unicodedata

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validates_schema

MAX_EMAIL_LENGTH = 254
PHONE_SEPARATORS = re.compile(r"[\s\-.()]")
PHONE_NUMBER = re.compile(r"\+?[0-9]{1,20}")
# The messages the API documents too (identity/openapi.py).
NOT_A_PHONE_NUMBER_TYPE = "Must be a string, a non-negative integer or null."
NEITHER_VALUE = "Give an email, a phoneNumber or both."
NOT_EXACTLY_ONE = "Give exactly one of email and phoneNumber."


def is_forbidden_in_email(char):
    """White space, control characters and lone surrogates (no UTF-8 can carry one) never belong."""
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")


class Email(fields.Field):
    """An email address: trimmed, lower-cased; empty means absent. No DNS checks."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("Must be a string or null.")
        email = value.strip().lower()
        if not email:
            return None
        if len(email) > MAX_EMAIL_LENGTH:
            raise ValidationError(f"Must be at most {MAX_EMAIL_LENGTH} characters.")
        local, at, domain = email.partition("@")
        if not (at and local and domain) or "@" in domain or any(map(is_forbidden_in_email, email)):
            raise ValidationError("Must be an address with one @, text on both sides, no spaces.")
        return email


class PhoneNumber(fields.Field):
    """A phone number as a string or a non-negative integer, stored as an optional + and digits."""

    def _deserialize(self, value, attr, data, **kwargs):
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
