"""Reading a request's JSON body: the body limit for streamed bodies, and JSON failures as our own errors."""

from flask import Request
from flask.json.provider import DefaultJSONProvider
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from identity.apidoc import ErrorExample


class MalformedJSON(BadRequest):
    code_name = "malformed_json"
    description = "The body is not valid JSON."


class UnreadableBody(BadRequest):
    code_name = "malformed_body"
    description = "The body could not be read: its chunked framing is broken or it ended early."


class NotJSON(UnsupportedMediaType):
    code_name = "unsupported_media_type"
    description = "Send the body as JSON, with Content-Type: application/json."


MALFORMED_JSON = ErrorExample(
    400, "malformed_json", "Not JSON", MalformedJSON.code_name, MalformedJSON.description
)
UNREADABLE_BODY = ErrorExample(
    400, "malformed_body", "A broken chunked body", UnreadableBody.code_name, UnreadableBody.description
)
NOT_JSON = ErrorExample(415, "unsupported_media_type", "Not JSON", NotJSON.code_name, NotJSON.description)


class ApiRequest(Request):
    """A request whose JSON failures raise our own, clearly named errors."""

    def get_data(self, *args, **kwargs):
        """The body; one streamed without Content-Length that exceeds the limit is refused, not cut."""
        try:
            data = super().get_data(*args, **kwargs)
        except (ParseException, OSError) as error:
            # The server's reader found the framing broken (gunicorn: an invalid chunk size) or the
            # client gone mid-body: the request's fault, not ours.
            raise UnreadableBody() from error
        limit = self.max_content_length
        streamed_to_limit = self.content_length is None and limit is not None and len(data) >= limit
        # Werkzeug stops reading at the limit without complaint; one byte more means too large.
        if streamed_to_limit and self.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
        return data

    def on_json_loading_failed(self, e):
        raise NotJSON() if e is None else MalformedJSON()


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON as RFC 8259 has it, keeping key order; absurd nesting is malformed input."""

    sort_keys = False

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, parse_constant=refuse_constant, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def refuse_constant(name):
    """Python's json takes NaN, Infinity and -Infinity; JSON has no such values."""
    raise ValueError(f"{name} is not JSON")


def init_app(app):
    """Read bodies with ApiRequest and JSON with JSONProvider."""
    app.request_class = ApiRequest
    app.json = JSONProvider(app)
