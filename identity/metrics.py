"""Prometheus metrics, summed over every gunicorn worker when scraped.

prometheus_client chooses its mode when first imported: with PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py
sets it) each worker writes its values to files there and /metrics adds them up; without it (the Flask
test client, the debug server) the process's own registry answers.
"""

import os

from flask import Response, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from identity import apidoc

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# Request latency is mostly one to twenty milliseconds; the buckets are dense there.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "identity_http_requests",
    "HTTP requests answered, by route, method and status.",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "identity_http_request_duration_seconds", "Time to answer, by route.", ["route"], buckets=LATENCY_BUCKETS
)
CONTACTS_CREATED = Counter("identity_contacts_created", "Contacts inserted, by precedence.", ["precedence"])
CREATED = {precedence: CONTACTS_CREATED.labels(precedence) for precedence in ("primary", "secondary")}
MERGES = Counter("identity_merges", "Customers merged into an older one (primaries demoted).")
REFUSED_LINKS = Counter("identity_refused_links", "Links refused because a customer would pass a limit.")
TRANSACTION_RETRIES = Counter(
    "identity_transaction_retries", "Transactions run again after a serialization failure or a deadlock."
)
DATABASE_ERRORS = Counter(
    "identity_database_errors", "Requests answered 503 because of the database, by exception.", ["kind"]
)


# (route, method, status) -> its counter and histogram: labels() validates and locks on every call,
# and the label values are few, so each pair is looked up once. Threads racing to add a pair only
# look it up twice: labels() hands both the same series.
_request_series = {}


def observe_request(route, method, status, seconds):
    """Count one answered request and its latency."""
    series = _request_series.get((route, method, status))
    if series is None:
        series = _request_series[route, method, status] = (
            REQUESTS.labels(route, method, status),
            DURATION.labels(route),
        )
    series[0].inc()
    series[1].observe(seconds)


def registry():
    """What to expose: every worker's files in multiprocess mode, else this process's registry."""
    if not MULTIPROCESS:
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)
    return collected


@apidoc.operation("metrics", "Prometheus metrics, in its text exposition format", ["operations"])
@apidoc.answers("The metrics.", {"type": "string"}, media_type="text/plain")
def metrics():
    """Every metric, in the exposition format the scraper asks for (Prometheus text by default)."""
    encode, content_type = choose_encoder(request.headers.get("Accept"))
    return Response(encode(registry()), content_type=content_type)


def init_app(app):
    """Serve GET /metrics."""
    app.add_url_rule("/metrics", "metrics", metrics)
