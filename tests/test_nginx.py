"""Behind nginx for real: Debian's nginx with deploy/nginx.conf in front of gunicorn as production runs it.

Each test starts a Redis of its own (the rate-limit counts, shared by the 4 workers), gunicorn with
TRUSTED_PROXY_HOPS=1 on the test's database, and nginx with the very file in deploy/, only its
marked addresses (the upstream's servers, here that one gunicorn; where it listens) and, for the
504, one timeout replaced. Clients connect from chosen
loopback addresses, so nginx sees distinct clients while gunicorn only ever sees nginx.
"""

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from servers import HOST, free_port, post_json, send, send_raw, start_gunicorn, start_nginx, start_redis, stop

pytestmark = pytest.mark.slow

LIMIT = 10
KIB_64 = 64 * 1024
# nginx's large_client_header_buffers: a request line or a header line, CRLF included, fits in 4 KiB.
LINE_LIMIT = 4096
LOG_SECONDS = 5
CLIENT_A, CLIENT_B = "127.0.0.2", "127.0.0.3"

LORRAINE = "lorraine@hillvalley.edu"
MCFLY = "mcfly@hillvalley.edu"


@dataclass
class Nginx:
    port: int
    prefix: Path
    log: Path

    def logged(self, request_id):
        """nginx's access-log entry for the request with this id, waiting briefly for it to be written."""
        deadline = time.monotonic() + LOG_SECONDS
        while time.monotonic() < deadline:
            lines = (self.prefix / "access.log").read_text().splitlines()
            entries = [entry for entry in map(json.loads, lines) if entry["request_id"] == request_id]
            if entries:
                return entries[-1]
            time.sleep(0.05)
        pytest.fail(f"nginx logged no request with id {request_id}")


@pytest.fixture
def gunicorn(database_url, tmp_path):
    """gunicorn: 4 workers, a small rate limit counted in Redis, one trusted proxy; yields (process, port)."""
    redis_process, redis_port = start_redis(tmp_path)
    port = free_port()
    settings = {
        "DATABASE_URL": database_url,
        "WEB_CONCURRENCY": 4,
        "RATE_LIMIT": f"{LIMIT} per minute",
        "RATELIMIT_STORAGE_URL": f"redis://{HOST}:{redis_port}/0",
        "TRUSTED_PROXY_HOPS": 1,
    }
    try:
        process, _ = start_gunicorn(tmp_path, port, **settings)
        yield process, port
        stop(process)
    finally:
        stop(redis_process)


@pytest.fixture
def nginx_in_front(tmp_path):
    """Start nginx with deploy/nginx.conf in front of a port, with directives replaced; stopped afterwards."""
    processes, prefixes = [], []

    def started(upstream_port, **directives):
        # Outside pytest's temporary directories, which only root may enter; open to nginx's workers.
        prefix = Path(tempfile.mkdtemp(prefix="identity-nginx-"))
        prefix.chmod(0o755)
        prefixes.append(prefix)
        log = tmp_path / f"{prefix.name}.log"  # nginx's error log, kept after the test
        process, port = start_nginx(prefix, log, upstream_port, **directives)
        processes.append(process)
        return Nginx(port, prefix, log)

    yield started
    for process in processes:
        stop(process)
    for prefix in prefixes:
        shutil.rmtree(prefix)


@pytest.fixture
def nginx(gunicorn, nginx_in_front):
    """nginx in front of the test's gunicorn."""
    return nginx_in_front(gunicorn[1])


def assert_error(answer, status, code):
    """The answer is an error in our exact shape, sent as JSON."""
    got_status, _, body = answer  # send() parsed the body only if it came as application/json
    assert got_status == status and isinstance(body, dict), answer
    assert body["error"]["code"] == code, body
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]


def body_of_size(size):
    """A valid POST /identify body of exactly size bytes: a key the app ignores pads it out."""
    stem = json.dumps({"email": LORRAINE, "pad": ""})
    body = stem[:-2] + "x" * (size - len(stem)) + stem[-2:]
    assert len(body) == size
    return body.encode()


def send_body(port, body, piece, request_id):
    """POST body to /identify: with Content-Length, or chunked in pieces of that many bytes."""
    payload = (body[i : i + piece] for i in range(0, len(body), piece)) if piece else body
    headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
    return send(port, "POST", "/identify", payload, headers)


def test_identify_through_nginx_gives_the_tasks_answer(nginx):
    first = post_json(nginx.port, {"email": LORRAINE, "phoneNumber": "123456"})
    assert first[0] == 200 and first[1].get_content_type() == "application/json"
    assert first[2]["contact"]["emails"] == [LORRAINE]
    second = post_json(nginx.port, {"email": MCFLY, "phoneNumber": "123456"})
    assert second[:1] + second[2:] == (
        200,
        {
            "contact": {
                "primaryContatctId": 1,
                "emails": [LORRAINE, MCFLY],
                "phoneNumbers": ["123456"],
                "secondaryContactIds": [2],
            }
        },
    )


def test_the_request_id_is_the_clients_or_else_nginxs(nginx):
    given = post_json(nginx.port, {"email": LORRAINE}, headers={"X-Request-ID": "checkout-42"})
    assert given[1]["X-Request-ID"] == "checkout-42"
    assert nginx.logged("checkout-42")["status"] == 200
    made = post_json(nginx.port, {"email": LORRAINE}, headers={"X-Request-ID": "not a plain id"})
    # The app names a request without an id of its own; this one must carry nginx's.
    assert nginx.logged(made[1]["X-Request-ID"])["uri"] == "/identify"


def test_rate_limit_counts_the_client_address_nginx_forwards(nginx):
    body = {"email": LORRAINE, "phoneNumber": "123456"}
    assert [post_json(nginx.port, body, source=CLIENT_A)[0] for _ in range(LIMIT)] == [200] * LIMIT
    assert_error(post_json(nginx.port, body, source=CLIENT_A), 429, "rate_limited")
    # A client naming another address is still counted as itself: nginx replaces the header.
    for claimed in (CLIENT_B, "203.0.113.7", f"203.0.113.7, {CLIENT_B}"):
        spoofed = post_json(nginx.port, body, source=CLIENT_A, headers={"X-Forwarded-For": claimed})
        assert_error(spoofed, 429, "rate_limited")
    # gunicorn sees every request come from nginx, yet another client is not limited.
    assert post_json(nginx.port, body, source=CLIENT_B)[0] == 200


# Chunked in 1-byte pieces, the framing outgrows nginx's memory buffer: it spills to a temporary file.
@pytest.mark.parametrize("piece", [None, 4096, 1], ids=["content-length", "chunked", "chunked bytewise"])
def test_a_64_kib_body_reaches_the_app_and_one_byte_more_is_refused_by_nginx(nginx, piece):
    at_limit = send_body(nginx.port, body_of_size(KIB_64), piece, "at-limit")
    assert at_limit[0] == 200 and at_limit[2]["contact"]["emails"] == [LORRAINE]
    assert nginx.logged("at-limit")["upstream_status"] == "200"
    over = send_body(nginx.port, body_of_size(KIB_64 + 1), piece, "over-limit")
    assert_error(over, 413, "payload_too_large")
    assert nginx.logged("over-limit")["upstream_status"] == "", "the app, not nginx, refused the body"
    spilled = "buffered to a temporary file" in nginx.log.read_text()
    assert spilled == (piece == 1), "only bodies sent in tiny chunks should leave nginx's memory"


def batch_of_size(size):
    """A valid POST /identify/batch body of exactly size bytes, padded by a key the app ignores."""
    stem = json.dumps({"contacts": [{"email": LORRAINE}], "pad": ""})
    body = stem[:-2] + "x" * (size - len(stem)) + stem[-2:]
    assert len(body) == size
    return body.encode()


def test_a_batch_body_up_to_its_own_limit_reaches_the_app_and_one_byte_more_is_refused(nginx):
    headers = {"Content-Type": "application/json", "X-Request-ID": "batch-at-limit"}
    at_limit = send(nginx.port, "POST", "/identify/batch", batch_of_size(512 * 1024), headers)
    assert at_limit[0] == 200 and at_limit[2]["contacts"][0]["emails"] == [LORRAINE]
    over = send(nginx.port, "POST", "/identify/batch", batch_of_size(512 * 1024 + 1), headers)
    assert_error(over, 413, "payload_too_large")
    assert "buffered to a temporary file" not in nginx.log.read_text()


def get_with_line(nginx, where, length):
    """GET /healthz with its request line, or else one header line, exactly length bytes long."""
    if where == "request line":
        return send(nginx.port, "GET", "/healthz?" + "x" * (length - len("GET /healthz? HTTP/1.1\r\n")))
    return send(nginx.port, "GET", "/healthz", headers={"X-Pad": "x" * (length - len("X-Pad: \r\n"))})


@pytest.mark.parametrize(
    "where, status, code",
    [("request line", 414, "request_uri_too_large"), ("header line", 400, "request_header_fields_too_large")],
)
def test_the_longest_line_nginx_takes_reaches_the_app_and_a_longer_one_is_a_json_error(
    nginx, where, status, code
):
    longest = get_with_line(nginx, where, LINE_LIMIT)
    assert (longest[0], longest[2]) == (200, {"status": "ok"}), "gunicorn refused what nginx passed on"
    assert_error(get_with_line(nginx, where, LINE_LIMIT + 1), status, code)


def test_a_request_that_is_not_http_is_a_json_400(nginx):
    status, headers, body = send_raw(nginx.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert (status, headers["content-type"]) == (400, "application/json")
    assert json.loads(body) == {"error": {"code": "bad_request", "message": "The request is not valid HTTP."}}


def raw(head, body=b""):
    """A raw request to nginx: the request line and headers given, then Connection: close, then body."""
    return head.encode("latin-1") + b"Host: identity.example\r\nConnection: close\r\n\r\n" + body


# (what, raw request, status, code, Allow): nginx's own refusals, and gunicorn's passed through.
REFUSED = [
    ("TRACE /identify", raw("TRACE /identify HTTP/1.1\r\n"), 405, "method_not_allowed", "POST"),
    ("TRACE /healthz", raw("TRACE /healthz HTTP/1.1\r\n"), 405, "method_not_allowed", "GET, HEAD"),
    (
        "Transfer-Encoding: identity",
        raw("POST /identify HTTP/1.1\r\nTransfer-Encoding: identity\r\n", b"{}"),
        501,
        "not_implemented",
        None,
    ),
    (
        "Transfer-Encoding: gzip, chunked",
        raw("POST /identify HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        501,
        "not_implemented",
        None,
    ),
    ("an HTTP/2.0 request line", raw("GET /healthz HTTP/2.0\r\n"), 505, "http_version_not_supported", None),
    (
        "a control byte in a header value",
        raw("GET /healthz HTTP/1.1\r\nX-A: a\x01b\r\n"),
        400,
        "bad_request",
        None,
    ),
    ("a raw non-ASCII byte in the path", raw("GET /heal\xffthz HTTP/1.1\r\n"), 400, "bad_request", None),
    (
        "two Content-Types",
        raw(
            "POST /identify HTTP/1.1\r\nContent-Type: application/json\r\nContent-Type: text/plain\r\n"
            "Content-Length: 2\r\n",
            b"{}",
        ),
        400,
        "bad_request",
        None,
    ),
    (
        "101 header fields",
        raw("GET /healthz HTTP/1.1\r\n" + "".join(f"X-{i}: {i}\r\n" for i in range(100))),
        431,
        "request_header_fields_too_large",
        None,
    ),
    (
        "a broken chunk size",
        raw(
            "POST /identify HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            b"zz\r\n{}\r\n0\r\n\r\n",
        ),
        400,
        "bad_request",
        None,
    ),
]


def test_every_refusal_through_nginx_is_json_in_the_one_shape(nginx):
    answers = {}
    for what, request, _, _, _ in REFUSED:
        status, headers, body = send_raw(nginx.port, request)
        assert headers.get("content-type") == "application/json", (what, status, body)
        error = json.loads(body)["error"]
        assert set(error) == {"code", "message"}, (what, error)
        answers[what] = (status, error["code"], headers.get("allow"))
    assert answers == {what: (status, code, allow) for what, _, status, code, allow in REFUSED}


def test_gunicorn_down_is_a_json_502_with_retry_after(gunicorn, nginx):
    assert post_json(nginx.port, {"email": LORRAINE})[0] == 200
    stop(gunicorn[0])
    answer = post_json(nginx.port, {"email": LORRAINE})
    assert_error(answer, 502, "bad_gateway")
    assert answer[1]["Retry-After"] == "1"


def test_gunicorn_too_slow_is_a_json_504_with_retry_after(gunicorn, nginx_in_front, database_url):
    nginx = nginx_in_front(gunicorn[1], proxy_read_timeout="1s")
    assert post_json(nginx.port, {"email": LORRAINE, "phoneNumber": "123456"})[0] == 200
    # A merge must lock its customer's primary: hold that lock, and the app cannot answer.
    blocker = psycopg2.connect(database_url)
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT id FROM contact WHERE id = 1 FOR UPDATE")
        started = time.monotonic()
        answer = post_json(nginx.port, {"email": MCFLY, "phoneNumber": "123456"})
        waited = time.monotonic() - started
    finally:
        blocker.close()
    assert_error(answer, 504, "gateway_timeout")
    assert answer[1]["Retry-After"] == "1"
    # nginx's 1 s, not the app's 5 s statement timeout (which would answer 503).
    assert waited < 4
