"""What the service tells its operators: JSON log lines with request ids, and Prometheus metrics.

Single-process tests read the metrics of this test process (prometheus_client's own registry), so
they compare values before and after; the gunicorn test reads the sums over four workers.
"""

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from psycopg2.extensions import make_dsn
from servers import free_port, post_json, send, start_gunicorn, stop
from test_errors import fail_with_serialization_failure

from conftest import make_app
from helpers import identify
from identity.retrying import MAX_ATTEMPTS, TooMuchContention, retrying

ACCESS_FIELDS = {"time", "level", "logger", "message", "pid", "request_id", "method", "path", "status"}
ACCESS_FIELDS |= {"duration_ms", "client"}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
GUNICORN_REQUESTS = 200


def json_lines(text):
    """Every line of text parsed as JSON: a line that is not JSON fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def access_lines(lines):
    """The access lines among log lines."""
    return [line for line in lines if line["logger"] == "identity.access"]


def sample(name, **labels):
    """A value of this test process's registry; 0 for a series not yet seen."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text):
    """{(sample name, sorted labels): value} of a /metrics answer."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_line_of_a_request_is_json_with_its_request_id(client, capsys):
    identify(client, "george@x.io", "919191")
    identify(client, "biff@x.io", "717171")
    capsys.readouterr()
    headers = {"X-Request-ID": "checkout-42"}
    response = client.post(
        "/identify", json={"email": "george@x.io", "phoneNumber": "717171"}, headers=headers
    )
    assert response.headers["X-Request-ID"] == "checkout-42"
    merge, access = json_lines(capsys.readouterr().err)
    assert {merge["request_id"], access["request_id"]} == {"checkout-42"}
    assert (merge["logger"], merge["level"], merge["message"]) == (
        "identity.merge",
        "INFO",
        "customers merged",
    )
    assert (merge["survivor"], merge["merged"]) == (1, [2])
    # No value: one may be erased later, and a shipped log line cannot be (issue 13).
    assert not {"email", "phoneNumber"} & set(merge)
    assert "george@x.io" not in json.dumps(merge) and "717171" not in json.dumps(merge)
    assert set(access) == ACCESS_FIELDS
    assert (access["method"], access["path"], access["status"]) == ("POST", "/identify", 200)
    assert access["client"] == "127.0.0.1" and access["pid"] == os.getpid()
    assert access["duration_ms"] > 0
    assert datetime.fromisoformat(access["time"]).utcoffset().total_seconds() == 0


@pytest.mark.parametrize("incoming", [None, "", "has spaces", "x" * 129, "semi;colon", "ünïcode"])
def test_a_missing_or_odd_request_id_is_replaced_by_a_new_one(client, capsys, incoming):
    headers = {} if incoming is None else {"X-Request-ID": incoming}
    first = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    second = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(first) and GENERATED_ID.fullmatch(second) and first != second
    logged = [line["request_id"] for line in access_lines(json_lines(capsys.readouterr().err))]
    assert logged == [first, second]


def test_a_plain_request_id_of_up_to_128_characters_is_kept(client):
    for plain in ["a", "3f2a-b.c_d:9", "x" * 128]:
        assert client.get("/healthz", headers={"X-Request-ID": plain}).headers["X-Request-ID"] == plain


def make_erring_app(database_url):
    """The app with one more route, which fails unexpectedly."""
    app = make_app(database_url)

    @app.get("/explode")
    def explode():
        raise RuntimeError("secret internals")

    return app


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("GET", "/nowhere", None, 404),
        ("GET", "/identify", None, 405),
        ("POST", "/identify", b"x" * (64 * 1024 + 1), 413),
        ("POST", "/identify", b"{", 400),
        ("GET", "/explode", None, 500),
    ],
)
def test_error_answers_have_their_access_line(database_url, capsys, method, path, body, status):
    app = make_erring_app(database_url)
    capsys.readouterr()  # the start's own lines (keys are off) belong to no request
    headers = {"Content-Type": "application/json", "X-Request-ID": f"error-{status}"}
    response = app.test_client().open(path, method=method, data=body, headers=headers)
    assert response.status_code == status
    lines = json_lines(capsys.readouterr().err)
    assert {line["request_id"] for line in lines} == {f"error-{status}"}
    (access,) = access_lines(lines)
    assert (access["method"], access["path"], access["status"]) == (method, path, status)
    app.extensions["identity_pool"].closeall()


def test_an_unexpected_error_is_one_json_line_with_its_trace(database_url, capsys):
    client = make_erring_app(database_url).test_client()
    capsys.readouterr()  # the start's own lines (keys are off) belong to no request
    client.get("/explode", headers={"X-Request-ID": "boom"})
    error, _ = json_lines(capsys.readouterr().err)
    assert (error["level"], error["request_id"], error["message"]) == ("ERROR", "boom", "unhandled error")
    assert "RuntimeError: secret internals" in error["exception"]


def test_a_database_outage_is_logged_counted_and_has_its_access_line(database_url, capsys):
    app = make_app(make_dsn(database_url, port=free_port()))
    capsys.readouterr()  # the start's own lines (keys are off) belong to no request
    before = sample("identity_database_errors_total", kind="OperationalError")
    response = app.test_client().post("/identify", json={"email": "a@x.io"}, headers={"X-Request-ID": "down"})
    assert response.status_code == 503
    warning, access = json_lines(capsys.readouterr().err)
    assert (warning["level"], warning["request_id"]) == ("WARNING", "down")
    assert (access["status"], access["request_id"]) == (503, "down")
    assert sample("identity_database_errors_total", kind="OperationalError") == before + 1


def test_log_level_warning_drops_the_access_lines(database_url, capsys):
    app = make_app(database_url, LOG_LEVEL="WARNING")
    assert app.test_client().get("/healthz").status_code == 200
    assert capsys.readouterr().err == ""
    app.extensions["identity_pool"].closeall()


def test_metrics_count_requests_contacts_and_merges(client):
    before = scraped(client.get("/metrics").get_data(as_text=True))
    identify(client, "george@x.io", "919191")  # a new customer: a primary
    identify(client, "george@x.io", "1")  # a new value: a secondary
    identify(client, "biff@x.io", "717171")  # a primary
    identify(client, "george@x.io", "717171")  # joins the two customers: a merge, nothing inserted
    client.get("/nowhere")
    response = client.get("/metrics")
    assert response.content_type.startswith("text/plain; version=")
    after = scraped(response.get_data(as_text=True))

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("identity_http_requests_total", route="/identify", method="POST", status="200") == 4
    assert grew("identity_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert grew("identity_http_request_duration_seconds_count", route="/identify") == 4
    assert grew("identity_http_request_duration_seconds_bucket", route="/identify", le="+Inf") == 4
    assert grew("identity_contacts_created_total", precedence="primary") == 2
    assert grew("identity_contacts_created_total", precedence="secondary") == 1
    assert grew("identity_merges_total") == 1


def test_a_method_no_route_knows_is_counted_as_other(client):
    before = sample("identity_http_requests_total", route="unmatched", method="other", status="405")
    assert client.open("/identify", method="BREW").status_code == 405
    assert (
        sample("identity_http_requests_total", route="unmatched", method="other", status="405") == before + 1
    )


def test_each_retry_of_a_conflicting_transaction_is_counted(conn):
    conn.autocommit = False
    before = sample("identity_transaction_retries_total")
    assert retrying(conn, fail_with_serialization_failure, 3, []) == 42
    assert sample("identity_transaction_retries_total") == before + 3
    with pytest.raises(TooMuchContention):
        retrying(conn, fail_with_serialization_failure, 100, [])
    # The last conflict is given up on, not retried.
    assert sample("identity_transaction_retries_total") == before + 3 + MAX_ATTEMPTS - 1


@pytest.fixture
def gunicorn(database_url, tmp_path):
    """A real gunicorn with 4 workers (gunicorn.conf.py); yields (process, port, log)."""
    port = free_port()
    process, log = start_gunicorn(tmp_path, port, DATABASE_URL=database_url, WEB_CONCURRENCY=4)
    yield process, port, log
    stop(process)


def metrics_of(port):
    """The scraped /metrics of the server on port."""
    status, _, text = send(port, "GET", "/metrics")
    assert status == 200
    return scraped(text)


def answered_by_worker(port, log):
    """{pid: /identify requests it answered}, from the server's access lines."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    counts = {}
    for line in access_lines(lines):
        if line["path"] == "/identify":
            counts[line["pid"]] = counts.get(line["pid"], 0) + 1
    return counts


@pytest.mark.slow
def test_metrics_add_up_over_all_gunicorn_workers_and_outlive_a_worker(gunicorn):
    process, port, log = gunicorn
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda i: post_json(port, {"email": f"c{i}@x.io"}), range(GUNICORN_REQUESTS)))
    assert [status for status, _, _ in answers] == [200] * GUNICORN_REQUESTS
    by_worker = answered_by_worker(port, log)
    assert sum(by_worker.values()) == GUNICORN_REQUESTS and len(by_worker) > 1, by_worker
    identify_200 = (
        "identity_http_requests_total",
        (("method", "POST"), ("route", "/identify"), ("status", "200")),
    )
    created = ("identity_contacts_created_total", (("precedence", "primary"),))
    for _ in range(8):  # each scrape may be answered by any worker
        assert metrics_of(port)[identify_200] == GUNICORN_REQUESTS
    assert metrics_of(port)[created] == GUNICORN_REQUESTS
    # A worker that dies takes nothing of the totals with it.
    os.kill(next(iter(by_worker)), signal.SIGKILL)
    time.sleep(1)
    assert process.poll() is None
    for _ in range(8):
        assert metrics_of(port)[identify_200] == GUNICORN_REQUESTS
