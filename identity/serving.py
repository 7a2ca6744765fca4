"""How gunicorn serves the app: what gunicorn says itself, it says in the app's JSON.

A request gunicorn cannot parse (a bad request line, too many headers, a control byte in a header
value) never reaches the app: gunicorn answers it with an HTML page of its own. JSONErrorsWorker
answers in the app's shape instead, with fixed messages that echo nothing the client sent. And
JSONLogger writes gunicorn's own lines (start, stop, a worker's death, a refusal) as the app writes
its lines. gunicorn.conf.py names both (worker_class, logger_class).
"""

import json

from gunicorn.glogging import Logger
from gunicorn.http import errors as http
from gunicorn.util import write_nonblock
from gunicorn.workers.sync import SyncWorker

from identity.apidoc import ErrorExample
from identity.logs import JSONFormatter

INTERNAL = (500, "Internal Server Error", "internal_error", "Something went wrong on our side.")
# (exception, (status, reason, code, message)), the first that matches wins; the rest of gunicorn's
# parse errors are a 400. A response header gunicorn refuses is the app's fault: a 500.
REFUSALS = (
    ((http.InvalidResponseHeader, http.InvalidResponseHeaderName, http.ConfigurationProblem), INTERNAL),
    (http.LimitRequestLine, (414, "URI Too Long", "request_uri_too_large", "The request line is too long.")),
    (
        http.LimitRequestHeaders,
        (
            431,
            "Request Header Fields Too Large",
            "request_header_fields_too_large",
            "The request has too many header fields, or one too large.",
        ),
    ),
    (
        http.UnsupportedTransferCoding,
        (501, "Not Implemented", "not_implemented", "Only the chunked transfer coding is supported."),
    ),
    (
        http.ExpectationFailed,
        (417, "Expectation Failed", "expectation_failed", "Only 100-continue is expected."),
    ),
    (http.ForbiddenProxyRequest, (403, "Forbidden", "forbidden", "The proxy is not trusted.")),
    (http.ParseException, (400, "Bad Request", "bad_request", "The request is not valid HTTP.")),
)


# A long query string is the one refusal a client can cause with parameters the document allows.
LONG_LINE = next(answer for kind, answer in REFUSALS if kind is http.LimitRequestLine)
REQUEST_LINE_TOO_LONG = ErrorExample(
    LONG_LINE[0],
    LONG_LINE[2],
    "A request line (the query string with it) over 8 KiB, or 4 KiB through nginx, whose message differs",
    LONG_LINE[2],
    LONG_LINE[3],
)


def refusal(error):
    """(status, reason, code, message) of the answer to error."""
    return next((answer for kind, answer in REFUSALS if isinstance(error, kind)), INTERNAL)


def error_answer(status, reason, code, message):
    """The raw HTTP answer: the app's error shape, and the connection closed."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body


class JSONErrorsWorker(SyncWorker):
    """SyncWorker whose own error answers are JSON; everything else is gunicorn's."""

    def handle_error(self, req, client, addr, exc):
        """Log as gunicorn does (a warning for a client's fault, the trace for ours), answer in JSON."""
        status, reason, code, message = refusal(exc)
        if status < 500:
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        else:
            self.log.exception("Error handling request")
        try:
            write_nonblock(client, error_answer(status, reason, code, message))
        except OSError:
            self.log.debug("Failed to send error message.")


class JSONLogger(Logger):
    """gunicorn's logger, its error log (every line but access lines) formatted as JSON.

    Not logconfig_dict: with that setting gunicorn turns its access log on, and builds an access
    line for every request even with nowhere to write it.
    """

    def setup(self, cfg):
        """gunicorn's set-up, then our formatter on the handlers it gave its error log."""
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JSONFormatter())
