"""The API described: an OpenAPI 3.0 document built from the marshmallow schemas, and a docs page.

The operations below are the contract: tests/test_openapi.py checks that every route of the app is
described and every example fits its schema, and schemathesis checks the live service's answers
against it.
Swagger UI's assets come from the swagger-ui-bundle package, so /docs works with no internet.
"""

import copy
import functools

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, render_template
from marshmallow import Schema, fields
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import MethodNotAllowed, NotFound

from identity import DEFAULTS, errors, schemas
from identity.errors import MalformedJSON, NotJSON
from identity.schemas import PHONE_SEPARATORS, CustomerQuery, Email, IdentifyRequest, PhoneNumber
from identity.api_keys import OPEN_PATHS, MissingKey
from identity.rate_limit import UNLIMITED_PATHS
from identity.views import MAX_CONTACT_ID, NO_CONTACT_WITH_ID

bp = Blueprint(
    "openapi",
    __name__,
    template_folder="templates",
    static_folder=str(swagger_ui_path),
    static_url_path="/docs/assets",
)

# Swagger UI 4 renders OpenAPI 3.0 only, so null is `nullable`, not a type.
OPENAPI_VERSION = "3.0.3"
# What PhoneNumber accepts: blank (absent), or separators around an optional + and 1 to 20 digits.
PHONE_PATTERN = (
    rf"^\s*$|^{PHONE_SEPARATORS.pattern}*(\+{PHONE_SEPARATORS.pattern}*)?"
    rf"([0-9]{PHONE_SEPARATORS.pattern}*){{1,20}}$"
)
LARGEST_PHONE_INTEGER = 10**20 - 1

DESCRIPTION = """\
Links a shop's checkout contacts into customers: contacts that share an email or a phone number
belong to one customer, whose oldest contact is its primary.

**Keys.** When the service runs with `IDENTITY_API_KEYS` set, every operation that lists the
`apiKey` scheme needs `Authorization: Bearer <key>` with one of those keys, and answers 401 without
one; unset, nothing needs a key. The health checks never do.

**Errors.** Every error has one shape, `{"error": {"code", "message", "fields"?}}`; `fields` maps each
invalid field (or `_schema`) to its messages and appears on validation errors only. 429 and 503 say
when to try again in `Retry-After`.
"""


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


SCHEMAS = {
    "IdentifyRequest": IdentifyRequest,
    "Contact": Contact,
    "Customer": Customer,
    "ErrorDetail": ErrorDetail,
    "Error": Error,
    "Status": Status,
}


def email_property(self, field, **kwargs):
    """An Email is a string; `format` hints at an address, which the service checks only loosely."""
    if not isinstance(field, Email):
        return {}
    return {"type": "string", "format": "email", "description": "Trimmed and lower-cased; blank is absent."}


def phone_number_property(self, field, ret):
    """A PhoneNumber is a string or a non-negative integer; null goes on the string branch."""
    if not isinstance(field, PhoneNumber):
        return {}
    text = {"type": "string", "pattern": PHONE_PATTERN}
    if ret.pop("nullable", False):  # 3.0 ignores nullable beside no type
        text["nullable"] = True
    number = {"type": "integer", "minimum": 0, "maximum": LARGEST_PHONE_INTEGER}
    return {"anyOf": [text, number], "description": "Stored as an optional + and digits; blank is absent."}


def customer(primary_id, emails, phone_numbers, secondary_ids):
    """An answer in the Customer shape."""
    contact = {"primaryContatctId": primary_id, "emails": emails, "phoneNumbers": phone_numbers}
    return {"contact": {**contact, "secondaryContactIds": secondary_ids}}


def example(summary, value):
    """An OpenAPI example object."""
    return {"summary": summary, "value": value}


def error_example(summary, code, message, invalid=None):
    """An example in the Error shape."""
    detail = {"code": code, "message": message}
    return example(summary, {"error": detail if invalid is None else {**detail, "fields": invalid}})


LORRAINE = customer(1, ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"], ["123456"], [2])
GEORGE = customer(3, ["george@hillvalley.edu", "biffsucks@hillvalley.edu"], ["919191", "717171"], [4])
# The task's examples: (summary, request body, answer), one per name.
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

HEADERS = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "Allow": {
        "description": "The methods the route answers.",
        "required": True,
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {"description": "`Bearer`.", "required": True, "schema": {"type": "string"}},
}


def error_response(description, examples, headers=()):
    """A response in the Error shape, with an example of each code it may carry."""
    media = {"schema": "Error", "examples": examples}
    return {
        "description": description,
        "content": {"application/json": media},
        "headers": {name: name for name in headers},
    }


RESPONSES = {
    "InvalidBody": error_response(
        "The body is not JSON, not an object, has an invalid field, or carries no value once normalised.",
        {
            "malformed_json": error_example("Not JSON", "malformed_json", MalformedJSON.description),
            "invalid_field": error_example(
                "An invalid field",
                "invalid_request",
                errors.INVALID_FIELDS,
                {"phoneNumber": [schemas.NOT_A_PHONE_NUMBER_TYPE]},
            ),
            "no_value": error_example(
                "Neither value",
                "invalid_request",
                errors.INVALID_FIELDS,
                {"_schema": [schemas.NEITHER_VALUE]},
            ),
        },
    ),
    "InvalidQuery": error_response(
        "An invalid value, or not exactly one of email and phoneNumber once normalised.",
        {
            "both": error_example(
                "Both or neither",
                "invalid_request",
                errors.INVALID_FIELDS,
                {"_schema": [schemas.NOT_EXACTLY_ONE]},
            ),
        },
    ),
    "Unauthorized": error_response(
        "Only while IDENTITY_API_KEYS is set: no `Authorization: Bearer <key>` with one of those keys.",
        {"unauthorized": error_example("No valid key", "unauthorized", MissingKey.description)},
        ["WWW-Authenticate"],
    ),
    "NotFound": error_response(
        "No live contact matches, or no such route.",
        {
            "contact": error_example("Unknown contact", "not_found", NO_CONTACT_WITH_ID),
            "route": error_example("Unknown route", "not_found", NotFound.description),
        },
    ),
    "MethodNotAllowed": error_response(
        "The route answers other methods only, listed in Allow.",
        {
            "method_not_allowed": error_example(
                "Wrong method", "method_not_allowed", MethodNotAllowed.description
            )
        },
        ["Allow"],
    ),
    "PayloadTooLarge": error_response(
        "The body is over MAX_CONTENT_LENGTH (64 KiB by default), with or without Content-Length.",
        {
            "payload_too_large": error_example(
                "Too large", "payload_too_large", errors.body_limit_message(DEFAULTS["MAX_CONTENT_LENGTH"])
            )
        },
    ),
    "UnsupportedMediaType": error_response(
        "The body is not sent as application/json.",
        {"unsupported_media_type": error_example("Not JSON", "unsupported_media_type", NotJSON.description)},
    ),
    "TooManyRequests": error_response(
        "Over RATE_LIMIT for this key (or this client address, without a valid key).",
        {
            "rate_limited": error_example(
                "Too many", "rate_limited", errors.rate_limit_message("5000 per 1 second")
            )
        },
        ["Retry-After"],
    ),
    "InternalError": error_response(
        "Anything unexpected; logged with its stack trace, nothing of it shown.",
        {"internal_error": error_example("Unexpected", "internal_error", errors.INTERNAL_ERROR)},
    ),
    "DatabaseUnavailable": error_response(
        "The database cannot be reached, timed out, or stayed contended.",
        {
            "database_unavailable": error_example(
                "Database down", "database_unavailable", errors.DATABASE_UNAVAILABLE
            )
        },
        ["Retry-After"],
    ),
}

ALWAYS = {"405": "MethodNotAllowed", "500": "InternalError"}
# A key, or none when IDENTITY_API_KEYS is unset.
KEY_WHEN_SET = [{"apiKey": []}, {}]
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "One of IDENTITY_API_KEYS; needed only when that setting is not empty.",
}


def answer(description, media_type, schema, **extra):
    """A 200 response with one media type."""
    return {"description": description, "content": {media_type: {"schema": schema, **extra}}}


def customer_answer(description, examples):
    """A 200 response carrying a customer, linked to the lookup of that customer by its primary."""
    response = answer(description, "application/json", "Customer", examples=examples)
    primary_id = "$response.body#/contact/primaryContatctId"
    response["links"] = {"primary": {"operationId": "contactById", "parameters": {"contact_id": primary_id}}}
    return response


def path_parameter(name, schema, example_value):
    """A required path parameter."""
    return {"name": name, "in": "path", "required": True, "schema": schema, "example": example_value}


PATHS = {
    "/identify": {
        "post": {
            "operationId": "identify",
            "tags": ["customers"],
            "summary": "Link a checkout's contact details into one customer",
            "description": (
                "Contacts sharing an email or a phone number become one customer, its oldest contact the "
                "primary; two customers joined by a request merge into the older. At least one value must "
                "remain after normalisation; other keys are ignored. Always 200 when it succeeds."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": "IdentifyRequest",
                        "examples": {
                            name: example(s, body) for name, (s, body, _) in IDENTIFY_EXAMPLES.items()
                        },
                    }
                },
            },
            "responses": {
                "200": customer_answer(
                    "The consolidated customer, whether the request created, merged or only read.",
                    {name: example(s, reply) for name, (s, _, reply) in IDENTIFY_EXAMPLES.items()},
                ),
                "400": "InvalidBody",
                "413": "PayloadTooLarge",
                "415": "UnsupportedMediaType",
                "503": "DatabaseUnavailable",
                **ALWAYS,
            },
        }
    },
    "/contacts/{contact_id}": {
        "get": {
            "operationId": "contactById",
            "tags": ["customers"],
            "summary": "The customer a contact belongs to, by the id of its primary or of a secondary",
            "description": "Writes nothing. A deleted contact, or one of a deleted primary, is not found.",
            "parameters": [
                path_parameter("contact_id", {"type": "integer", "minimum": 0, "maximum": MAX_CONTACT_ID}, 2)
            ],
            "responses": {
                "200": customer_answer("The customer.", {"mcfly": example("Secondary 2", LORRAINE)}),
                "404": "NotFound",
                "503": "DatabaseUnavailable",
                **ALWAYS,
            },
        }
    },
    "/contacts": {
        "get": {
            "operationId": "contactByIdentifier",
            "tags": ["customers"],
            "summary": "The customer holding an email or a phone number",
            "description": (
                "Exactly one of `email` and `phoneNumber`, normalised as /identify does them (send a + as "
                "%2B); other keys are ignored. Writes nothing."
            ),
            "parameters": [{"in": "query", "schema": CustomerQuery}],
            "responses": {
                "200": customer_answer(
                    "The customer.", {"mcfly": example("email=mcfly@hillvalley.edu", LORRAINE)}
                ),
                "400": "InvalidQuery",
                "404": "NotFound",
                "503": "DatabaseUnavailable",
                **ALWAYS,
            },
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "tags": ["operations"],
            "summary": "Alive while the process serves; needs no database",
            "responses": {
                "200": answer("Alive.", "application/json", "Status", example={"status": "ok"}),
                **ALWAYS,
            },
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "tags": ["operations"],
            "summary": "Ready while the database answers",
            "responses": {
                "200": answer("Ready.", "application/json", "Status", example={"status": "ready"}),
                "503": "DatabaseUnavailable",
                **ALWAYS,
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "tags": ["operations"],
            "summary": "Prometheus metrics, in its text exposition format",
            "responses": {"200": answer("The metrics.", "text/plain", {"type": "string"}), **ALWAYS},
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "tags": ["documentation"],
            "summary": "This document",
            "responses": {"200": answer("OpenAPI 3.0.", "application/json", {"type": "object"}), **ALWAYS},
        }
    },
    "/docs": {
        "get": {
            "operationId": "docs",
            "tags": ["documentation"],
            "summary": "Swagger UI for this document; needs no internet",
            "responses": {"200": answer("The page.", "text/html", {"type": "string"}), **ALWAYS},
        }
    },
    "/docs/assets/{filename}": {
        "get": {
            "operationId": "docsAsset",
            "tags": ["documentation"],
            "summary": "Swagger UI's files, from the swagger-ui-bundle package",
            "parameters": [path_parameter("filename", {"type": "string"}, "swagger-ui.css")],
            "responses": {
                "200": answer("The file.", "*/*", {"type": "string", "format": "binary"}),
                "404": "NotFound",
                **ALWAYS,
            },
        }
    },
}


@functools.cache
def build_document():
    """The OpenAPI document, built once per process."""
    plugin = MarshmallowPlugin()
    info = {"description": DESCRIPTION}
    spec = APISpec("identity", "0.1.0", OPENAPI_VERSION, plugins=[plugin], info=info)
    plugin.converter.add_attribute_function(email_property)
    plugin.converter.add_attribute_function(phone_number_property)
    spec.components.security_scheme("apiKey", SECURITY_SCHEME)
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    # apispec resolves references in place; the constants stay as written.
    headers, responses, paths = copy.deepcopy((HEADERS, RESPONSES, PATHS))
    for name, header in headers.items():
        spec.components.header(name, header)
    for name, response in responses.items():
        spec.components.response(name, response)
    for path, operations in paths.items():
        spec.path(path, operations={method: guarded(path, op) for method, op in operations.items()})
    return spec.to_dict()


def guarded(path, operation):
    """The operation with what identity.security enforces on its path: keys (401), a rate limit (429)."""
    responses = operation["responses"]
    if path not in OPEN_PATHS:
        operation["security"] = KEY_WHEN_SET
        responses["401"] = "Unauthorized"
    if path not in UNLIMITED_PATHS:
        responses["429"] = "TooManyRequests"
    operation["responses"] = dict(sorted(responses.items()))
    return operation


@bp.get("/openapi.json")
def document():
    """The OpenAPI document."""
    return build_document()


@bp.get("/docs")
def docs():
    """Swagger UI, reading /openapi.json, with every asset served from this app."""
    return render_template("docs.html")
