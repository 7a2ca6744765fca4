"""Each request on the record: its id, its access line and its metrics, and what identify changed."""

import logging
import re
import secrets
import time

from flask import g, request

from identity import metrics
from identity.logs import log_info

# An incoming id is echoed into headers and logs, so only a short, plain one is kept.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Metric labels take a fixed set of values: anything else a client invents counts as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

access_log = logging.getLogger("identity.access")
merge_log = logging.getLogger("identity.merge")


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


def record_outcome(outcome):
    """Count the contact identify created and the customers it merged; log each merge.

    The merge line names contacts, never values: a value may be erased later, and lines already
    shipped to a log store cannot be (the event table holds the values, and erasure blanks them there).
    """
    if outcome.created:
        metrics.CREATED[outcome.created].inc()
    if outcome.merged:
        metrics.MERGES.inc(len(outcome.merged))
        survivor = outcome.contact["primaryContatctId"]
        log_info(merge_log, "customers merged", {"survivor": survivor, "merged": outcome.merged})
    if outcome.refused:
        metrics.REFUSED_LINKS.inc()
        answered = outcome.contact["primaryContatctId"]
        log_info(merge_log, "link refused", {"answered": answered, "reason": outcome.refused})


def init_app(app):
    """Name, time, count and log every request."""
    app.before_request(start_request)
    app.after_request(finish_request)
