"""One JSON error shape for every error: {"error": {"code", "message", "fields"?}}."""

import psycopg2
from flask import current_app, jsonify, request
from psycopg2.errors import ReadOnlySqlTransaction
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from identity import metrics
from identity.settings import DEFAULTS
from identity.apidoc import ErrorExample
from identity.pool import PoolExhausted
from identity.retrying import TooMuchContention

RETRY_AFTER_SECONDS = "1"
INVALID_FIELDS = "The request has invalid fields."
DATABASE_UNAVAILABLE = "The database is unavailable; try again shortly."
INTERNAL_ERROR = "Something went wrong on our side."


def body_limit_message(max_bytes):
    """What a 413 says for a body limit of max_bytes."""
    return f"The body must be at most {max_bytes // 1024} KiB."


def invalid_request(name, summary, fields):
    """An example of a 400 for invalid fields, with marshmallow's messages by field."""
    return ErrorExample(400, name, summary, "invalid_request", INVALID_FIELDS, fields)


# The errors documented for every route (identity/openapi.py) or for the routes that may give them.
PAYLOAD_TOO_LARGE = ErrorExample(
    413,
    "payload_too_large",
    "Over MAX_CONTENT_LENGTH",
    "payload_too_large",
    body_limit_message(DEFAULTS["MAX_CONTENT_LENGTH"]),
)
DATABASE_DOWN = ErrorExample(
    503,
    "database_unavailable",
    "The database cannot be reached, is failing over, timed out or stayed contended",
    "database_unavailable",
    DATABASE_UNAVAILABLE,
    headers=("Retry-After",),
)
ROUTE_NOT_FOUND = ErrorExample(404, "route", "No such route", "not_found", NotFound.description)
METHOD_NOT_ALLOWED = ErrorExample(
    405,
    "method_not_allowed",
    "A method the route does not answer",
    "method_not_allowed",
    MethodNotAllowed.description,
    headers=("Allow",),
)
UNEXPECTED = ErrorExample(500, "internal_error", "Anything unexpected", "internal_error", INTERNAL_ERROR)


def error_response(status, code, message, fields=None, headers=None):
    """The JSON error answer every handler returns."""
    body = {"code": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    response = jsonify(error=body)
    response.status_code = status
    response.headers.extend(headers or {})
    return response


def too_large(error):
    """A body over the route's limit (MAX_CONTENT_LENGTH, or MAX_BATCH_CONTENT_LENGTH), refused unread."""
    return error_response(413, "payload_too_large", body_limit_message(request.max_content_length))


def http_error(error):
    """Routing, method, media-type, key and rate-limit errors, keeping headers (Allow, Retry-After)."""
    code = getattr(error, "code_name", None) or error.name.lower().replace(" ", "_")
    headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
    return error_response(error.code, code, error.description, headers=headers)


def invalid_fields(error):
    """marshmallow's field messages, keyed by the names the client sent."""
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    return error_response(400, "invalid_request", INVALID_FIELDS, messages)


def database_unavailable(error):
    """The database cannot be reached or is too busy: tell the client when to try again."""
    current_app.logger.warning("database unavailable: %s", str(error).strip())
    metrics.DATABASE_ERRORS.labels(type(error).__name__).inc()
    headers = {"Retry-After": RETRY_AFTER_SECONDS}
    return error_response(503, "database_unavailable", DATABASE_UNAVAILABLE, headers=headers)


def unexpected(error):
    """Anything else: log the stack trace, show the client nothing of it."""
    current_app.logger.exception("unhandled error")
    return error_response(500, "internal_error", INTERNAL_ERROR)


def init_app(app):
    """Register the handlers on the app, so routing's own 404 and 405 use them too."""
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(RequestEntityTooLarge, too_large)
    app.register_error_handler(ValidationError, invalid_fields)
    # A server that turned read-only is a standby now, mid-failover: as unavailable as one gone away.
    unavailable = (psycopg2.OperationalError, psycopg2.InterfaceError, ReadOnlySqlTransaction)
    for error in (*unavailable, PoolExhausted, TooMuchContention):
        app.register_error_handler(error, database_unavailable)
    app.register_error_handler(Exception, unexpected)
