"""What careless and hostile clients get: always the service's own JSON answer, and nothing written.

The bytes a client library would refuse to send go over raw sockets (servers.send_raw), straight
to gunicorn as production starts it; tests/test_nginx.py sends them through nginx too.
"""

import json
import logging
import os
import re
import signal
import time

import pytest
from servers import free_port, send_raw, start_gunicorn, stop

from conftest import make_app
from helpers import all_contacts
from identity import create_app
from identity.settings import BadSetting, from_environment

HOST_HEADER = "Host: evil.example\r\n"


def error_of(answer):
    """(status, code) of an answer that must be an error in the one shape, sent as JSON."""
    status, headers, body = answer
    assert headers["content-type"] == "application/json", answer
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["message"], error
    return status, error["code"]


# The app.


@pytest.mark.parametrize(
    "body",
    [
        '{"x": NaN, "email": "n@e.com"}',
        '{"email": "n@e.com", "phoneNumber": Infinity}',
        '{"email": "n@e.com", "phoneNumber": -Infinity}',
    ],
)
def test_nan_and_infinity_are_not_json(client, conn, body):
    response = client.post("/identify", data=body, content_type="application/json")
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, "malformed_json")
    assert all_contacts(conn) == []


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/identify", "POST"),
        ("/contacts/1", "DELETE, GET, HEAD"),  # DELETE erases the customer (admin key)
        ("/healthz", "GET, HEAD"),
        ("/openapi.json", "GET, HEAD"),
    ],
)
def test_options_is_a_json_405_with_allow(client, path, allow):
    response = client.options(path)
    assert (response.status_code, response.get_json()["error"]["code"]) == (405, "method_not_allowed")
    assert sorted(response.headers["Allow"].split(", ")) == sorted(allow.split(", "))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/contacts//1"),
        ("GET", "//contacts/1"),
        ("POST", "//identify"),
        ("GET", "/healthz/"),
        ("GET", "//docs"),
    ],
)
def test_a_path_with_extra_slashes_is_a_404_never_a_redirect(client, method, path):
    response = client.open(path, method=method, headers={"Host": "evil.example"}, json={"email": "a@b.c"})
    assert (response.status_code, response.get_json()["error"]["code"]) == (404, "not_found")
    assert "Location" not in response.headers


@pytest.mark.parametrize("keys", [",", " ", " , ", "first-key,,second-key", "first-key,"])
def test_api_keys_that_name_an_empty_key_stop_the_start(database_url, keys):
    with pytest.raises(BadSetting, match="IDENTITY_API_KEYS"):
        make_app(database_url, IDENTITY_API_KEYS=keys)


def test_without_api_keys_the_start_says_keys_are_off(database_url, caplog):
    with caplog.at_level(logging.INFO, logger="identity.api_keys"):
        app = make_app(database_url, IDENTITY_API_KEYS="")
    assert any("API keys are off" in record.getMessage() for record in caplog.records)
    assert app.test_client().get("/contacts/1").status_code == 404  # no key asked for


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_POOL_SIZE", "0"),
        ("DB_POOL_SIZE", "four"),
        ("DB_CONNECT_TIMEOUT", "-1"),
        ("DB_STATEMENT_TIMEOUT_MS", "5s"),
        ("MAX_CONTENT_LENGTH", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "not a database url"),
    ],
)
def test_a_setting_that_makes_no_sense_stops_the_start_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(BadSetting, match=name):
        create_app()


def test_settings_come_from_the_environment_converted():
    settings = from_environment({"DB_POOL_SIZE": "7", "LOG_LEVEL": "", "IDENTITY_API_KEYS": "k"})
    assert (settings["DB_POOL_SIZE"], settings["LOG_LEVEL"], settings["IDENTITY_API_KEYS"]) == (
        7,
        "INFO",
        "k",
    )


# gunicorn as production runs it.


@pytest.fixture
def gunicorn(database_url, tmp_path):
    """gunicorn with gunicorn.conf.py and 2 workers; yields (process, port, log)."""
    port = free_port()
    process, log = start_gunicorn(tmp_path, port, DATABASE_URL=database_url, WEB_CONCURRENCY=2)
    yield process, port, log
    stop(process)


def request(head, body=b""):
    """A raw request: the request line and headers given, then Connection: close, then body."""
    return head.encode("latin-1") + b"Connection: close\r\n\r\n" + body


CHUNKED = (
    "POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
)
# (what, raw request, status, code): what gunicorn would answer with an HTML page of its own.
MALFORMED = [
    ("a lower-case method", request("get /healthz HTTP/1.1\r\n" + HOST_HEADER), 400, "bad_request"),
    (
        "a raw non-ASCII byte in the path",
        request("GET /heal\xffthz HTTP/1.1\r\n" + HOST_HEADER),
        400,
        "bad_request",
    ),
    (
        "a control byte in a header value",
        request("GET /healthz HTTP/1.1\r\nX-A: a\x01b\r\n" + HOST_HEADER),
        400,
        "bad_request",
    ),
    (
        "two Content-Types",
        request(
            "POST /identify HTTP/1.1\r\n" + HOST_HEADER + "Content-Type: application/json\r\n"
            "Content-Type: text/plain\r\nContent-Length: 2\r\n",
            b"{}",
        ),
        400,
        "bad_request",
    ),
    (
        "101 header fields",
        request("GET /healthz HTTP/1.1\r\n" + HOST_HEADER + "".join(f"X-{i}: {i}\r\n" for i in range(100))),
        431,
        "request_header_fields_too_large",
    ),
    (
        "Transfer-Encoding: identity",
        request("POST /identify HTTP/1.1\r\n" + HOST_HEADER + "Transfer-Encoding: identity\r\n", b"{}"),
        400,
        "bad_request",
    ),
    (
        "an unknown transfer coding",
        request("POST /identify HTTP/1.1\r\n" + HOST_HEADER + "Transfer-Encoding: br\r\n", b"{}"),
        501,
        "not_implemented",
    ),
    (
        "an expectation other than 100-continue",
        request(
            "POST /identify HTTP/1.1\r\n" + HOST_HEADER + "Expect: 200-ok\r\nContent-Length: 2\r\n", b"{}"
        ),
        417,
        "expectation_failed",
    ),
    ("a broken chunk size", request(CHUNKED, b"zz\r\n{}\r\n0\r\n\r\n"), 400, "malformed_body"),
    ("a chunk without its end", request(CHUNKED, b"2\r\n{}XX0\r\n\r\n"), 400, "malformed_body"),
]


@pytest.mark.slow
def test_gunicorn_answers_what_it_cannot_parse_in_the_json_shape_and_writes_nothing(gunicorn, conn):
    _, port, log = gunicorn
    answers = {what: error_of(send_raw(port, raw)) for what, raw, _, _ in MALFORMED}
    assert answers == {what: (status, code) for what, _, status, code in MALFORMED}
    assert all_contacts(conn) == []
    assert "unhandled error" not in log.read_text()  # the app saw broken bodies as the client's fault


@pytest.mark.slow
def test_a_query_string_too_long_for_gunicorn_is_its_documented_414(gunicorn):
    _, port, _ = gunicorn
    status, headers, body = send_raw(
        port, request("GET /contacts?email=" + "a" * 9000 + " HTTP/1.1\r\n" + HOST_HEADER)
    )
    document = json.loads(send_raw(port, request("GET /openapi.json HTTP/1.1\r\n" + HOST_HEADER))[2])
    documented = document["paths"]["/contacts"]["get"]["responses"]["414"]["content"]["application/json"]
    assert (status, headers["content-type"]) == (414, "application/json")
    assert json.loads(body) == documented["examples"]["request_uri_too_large"]["value"]


def log_lines(log):
    """Every line of a log file, each of which must be one JSON object."""
    return [json.loads(line) for line in log.read_text().splitlines()]


def wait_for(log, pattern, count):
    """Wait until count log messages match pattern; return their matches."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [m for m in (re.search(pattern, line["message"]) for line in log_lines(log)) if m]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    pytest.fail(f"no {count} lines matching {pattern!r} in:\n{log.read_text()}")


@pytest.mark.slow
def test_gunicorns_own_lines_are_json_across_start_refusal_worker_restart_and_shutdown(gunicorn):
    process, port, log = gunicorn
    assert error_of(send_raw(port, request("get /healthz HTTP/1.1\r\n")))[0] == 400
    first_worker = int(wait_for(log, r"Booting worker with pid: (\d+)", 2)[0][1])
    os.kill(first_worker, signal.SIGKILL)
    wait_for(log, r"Booting worker with pid: (\d+)", 3)  # the master replaced it
    stop(process)
    text = log.read_text()
    assert "Logging error" not in text and "Traceback" not in text, text
    lines = log_lines(log)
    messages = [line["message"] for line in lines if line["logger"] == "gunicorn.error"]
    for expected in (
        "Starting gunicorn",
        "Invalid request from ip=",
        "was sent SIGKILL",
        "Shutting down: Master",
    ):
        assert any(expected in message for message in messages), (expected, messages)
    assert all(isinstance(line["pid"], int) for line in lines)


@pytest.mark.slow
def test_gunicorn_does_not_start_with_api_keys_that_name_an_empty_key(database_url, tmp_path):
    port = free_port()
    with pytest.raises(pytest.fail.Exception, match="IDENTITY_API_KEYS"):
        start_gunicorn(tmp_path, port, DATABASE_URL=database_url, IDENTITY_API_KEYS=",")
