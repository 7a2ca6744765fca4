"""What the service tells its operators: JSON log lines, a request id, an access line per request, metrics."""

import functools
import json
import logging
import os
import re
import secrets
import sys
import time

from flask import g, has_request_context, request

from identity import metrics

# An incoming id is echoed into headers and logs, so only a short, plain one is kept.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Metric labels take a fixed set of values: anything else a client invents counts as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Built once: json.dumps with default= would build an encoder for every line.
encode = json.JSONEncoder(default=str).encode

access_log = logging.getLogger("identity.access")
merge_log = logging.getLogger("identity.merge")


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    def format(self, record):
        line = {
            "time": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        if has_request_context():
            line["request_id"] = g.get("request_id")
        line.update(getattr(record, "fields", ()))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return encode(line)


def utc_timestamp(seconds):
    """seconds since the epoch in ISO 8601, UTC, to the millisecond (as datetime.isoformat gives it)."""
    whole = int(seconds)
    return f"{utc_second(whole)}.{int((seconds - whole) * 1000):03d}+00:00"


@functools.lru_cache(maxsize=4)
def utc_second(whole_seconds):
    """The date and time to the second, formatted once per second: datetime's way for every line
    cost half as much as encoding all the rest of it (callgrind)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole_seconds))


class StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each line, so a redirected stderr is followed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass  # StreamHandler.__init__ assigns a stream; the property above stays in charge


def configure_logging(level):
    """Send every log line of the process to stderr as JSON, at level; a second call replaces the first."""
    # No line shows a thread or multiprocessing name, so logging need not look them up for every
    # record (the logging HOWTO's "Optimization"). Process ids stay: gunicorn's own lines show them.
    logging.logThreads = logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(JSONFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())


def start_request():
    """Name the request (the caller's sane X-Request-ID, else a new one) and start its clock."""
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if SANE_REQUEST_ID.fullmatch(incoming) else secrets.token_hex(16)
    g.started = time.perf_counter()


def finish_request(response):
    """Echo the request id, count the request, and write its access line."""
    seconds = time.perf_counter() - g.started
    response.headers["X-Request-ID"] = g.request_id
    rule, method = request.url_rule, request.method
    route = rule.rule if rule else "unmatched"
    known_method = method if method in KNOWN_METHODS else "other"
    metrics.observe_request(route, known_method, response.status_code, seconds)
    fields = {"method": method, "path": request.path, "status": response.status_code}
    fields.update(duration_ms=round(seconds * 1000, 3), client=request.remote_addr)
    log_info(access_log, "request", fields)
    return response


def log_info(logger, message, fields):
    """Log message with fields at INFO, as logger.info would but for finding the caller's source line."""
    # logger.info searches the stack for the line that called it, for every record; no line shows it.
    if logger.isEnabledFor(logging.INFO):
        record = logger.makeRecord(
            logger.name, logging.INFO, "", 0, message, (), None, extra={"fields": fields}
        )
        logger.handle(record)


def record_outcome(outcome, wanted):
    """Count the contact identify created and the customers it merged; log each merge."""
    if outcome.created:
        metrics.CREATED[outcome.created].inc()
    if outcome.merged:
        metrics.MERGES.inc(len(outcome.merged))
        survivor = outcome.contact["primaryContatctId"]
        joined_by = {"email": wanted["email"], "phoneNumber": wanted["phone_number"]}
        log_info(merge_log, "customers merged", {"survivor": survivor, "merged": outcome.merged, **joined_by})


def init_app(app):
    """Log as JSON at LOG_LEVEL, time and count every request, and serve /metrics."""
    configure_logging(app.config["LOG_LEVEL"])
    app.before_request(start_request)
    app.after_request(finish_request)
    metrics.init_app(app)
