"""One JSON error shape for every error: {"error": {"code", "message", "fields"?}}."""

import psycopg2
from flask import Request, current_app, jsonify
from flask.json.provider import DefaultJSONProvider
from marshmallow import ValidationError
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, UnsupportedMediaType

from identity import metrics
from identity.pool import PoolExhausted
from identity.retrying import TooMuchContention

RETRY_AFTER_SECONDS = "1"
# The messages the API documents too (identity/openapi.py).
INVALID_FIELDS = "The request has invalid fields."
DATABASE_UNAVAILABLE = "The database is unavailable; try again shortly."
INTERNAL_ERROR = "Something went wrong on our side."


class MalformedJSON(BadRequest):
    code_name = "malformed_json"
    description = "The body is not valid JSON."


class NotJSON(UnsupportedMediaType):
    code_name = "unsupported_media_type"
    description = "Send the body as JSON, with Content-Type: application/json."


class ApiRequest(Request):
    """A request whose JSON failures raise our own, clearly named errors."""

    def get_data(self, *args, **kwargs):
        """The body; one streamed without Content-Length that exceeds the limit is refused, not cut."""
        data = super().get_data(*args, **kwargs)
        limit = self.max_content_length
        streamed_to_limit = self.content_length is None and limit is not None and len(data) >= limit
        # Werkzeug stops reading at the limit without complaint; one byte more means too large.
        if streamed_to_limit and self.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
        return data

    def on_json_loading_failed(self, e):
        raise NotJSON() if e is None else MalformedJSON()


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, keeping key order, and treating absurd nesting as malformed input."""

    sort_keys = False

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


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
    """A body over MAX_CONTENT_LENGTH, refused before it is read."""
    return error_response(
        413, "payload_too_large", body_limit_message(current_app.config["MAX_CONTENT_LENGTH"])
    )


def body_limit_message(max_bytes):
    """What a 413 says for a body limit of max_bytes."""
    return f"The body must be at most {max_bytes // 1024} KiB."


def http_error(error):
    """Routing, method, media-type, key and rate-limit errors, keeping headers (Allow, Retry-After)."""
    code = getattr(error, "code_name", None) or error.name.lower().replace(" ", "_")
    headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
    return error_response(error.code, code, error.description, headers=headers)


def rate_limit_message(limit):
    """What a 429 says for a limit as the limits library writes it ("5000 per 1 second")."""
    return f"Too many requests: the limit is {limit}."


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
    app.request_class = ApiRequest
    app.json = JSONProvider(app)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(RequestEntityTooLarge, too_large)
    app.register_error_handler(ValidationError, invalid_fields)
    for unavailable in (psycopg2.OperationalError, psycopg2.InterfaceError, PoolExhausted, TooMuchContention):
        app.register_error_handler(unavailable, database_unavailable)
    app.register_error_handler(Exception, unexpected)
