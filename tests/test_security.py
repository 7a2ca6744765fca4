"""Who may call: API keys, rate limits per key or per client address, and trusted proxies.

Rate-limit counts in Redis go to TEST_REDIS_URL when it is set, else to a Redis the tests start
on a free loopback port, under a key prefix of the test's own that the test deletes afterwards.
Tests that stop Redis, or count every command it runs, start one of their own.
"""

import hmac
import json
import os
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from limits.storage import storage_from_string
from servers import HOST, free_port, post_json, start_gunicorn, start_redis, stop

from conftest import make_app
from identity.rate_limit import REDIS_OPTIONS, FailOpen, MemoryCounts

# A window starts at a caller's first request in it: a day's is never crossed by a test.
DAY = 24 * 3600
KEYS = "first-key-0123456789, second-key-9876543210"
FIRST, SECOND = (key.strip() for key in KEYS.split(","))
BODY = {"email": "lorraine@hillvalley.edu"}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """TEST_REDIS_URL when set, else a Redis of the tests' own on a free loopback port, stopped at the end."""
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    process, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://{HOST}:{port}/0"
    stop(process)


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def post(app, headers=None, address="10.0.0.1"):
    """POST /identify from a client address; return the response."""
    return app.test_client().post(
        "/identify", json=BODY, headers=headers, environ_base={"REMOTE_ADDR": address}
    )


def access_lines(text):
    """The JSON access lines among the log lines in text."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == "identity.access"]


# API keys.


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), bearer(FIRST[:-1]), bearer(FIRST + "x"), {"Authorization": f"Basic {FIRST}"}],
    ids=["none", "wrong", "prefix", "longer", "basic"],
)
def test_without_a_valid_key_the_answer_is_a_json_401(make, headers):
    response = post(make(IDENTITY_API_KEYS=KEYS), headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [bearer(FIRST), bearer(SECOND), {"Authorization": f"bearer  {SECOND}"}])
def test_any_configured_key_lets_the_request_in(make, headers):
    assert post(make(IDENTITY_API_KEYS=KEYS), headers).status_code == 200


def test_without_configured_keys_no_key_is_needed(make):
    assert post(make()).status_code == 200


def test_health_is_open_metrics_and_unknown_routes_are_not(make):
    client = make(IDENTITY_API_KEYS=KEYS).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(FIRST)).status_code == 200
    assert client.get("/nowhere").status_code == 401
    assert client.get("/nowhere", headers=bearer(FIRST)).status_code == 404


def compare_digest_calls(app, headers):
    """How many times hmac.compare_digest ran while the app answered one request."""
    calls = []

    def profile(frame, event, arg):
        if event == "c_call" and arg is hmac.compare_digest:
            calls.append(arg)

    sys.setprofile(profile)
    try:
        post(app, headers)
    finally:
        sys.setprofile(None)
    return len(calls)


@pytest.mark.parametrize("headers", [bearer(FIRST), bearer(SECOND), bearer("wrong"), {}])
def test_keys_are_compared_in_constant_time_and_every_one_of_them(make, headers):
    app = make(IDENTITY_API_KEYS=KEYS + ",third-key")
    assert compare_digest_calls(app, headers) == 3


def test_keys_never_reach_the_logs(make, capsys):
    app = make(IDENTITY_API_KEYS=KEYS, RATE_LIMIT="2 per day")
    for headers in [bearer(FIRST), bearer(FIRST), bearer(FIRST), bearer("not-a-key-but-secret")]:
        post(app, headers)
    output = capsys.readouterr()
    assert [line["status"] for line in access_lines(output.err)] == [200, 200, 429, 401]
    for secret in (FIRST, "not-a-key-but-secret"):
        assert secret not in output.err + output.out


# Rate limits.


def assert_rate_limited(response, window_seconds):
    """A JSON 429 that says when to come back."""
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= window_seconds


def test_over_the_limit_a_client_address_gets_a_json_429_with_retry_after(make):
    app = make(RATE_LIMIT="3 per day")
    assert [post(app).status_code for _ in range(3)] == [200] * 3
    assert_rate_limited(post(app), DAY)
    assert post(app, address="10.0.0.2").status_code == 200


def redis_commands(client):
    """{command: times run} since the server's statistics were last reset, but for INFO and CONFIG."""
    stats = client.info("commandstats")
    counted = {name.removeprefix("cmdstat_"): stat["calls"] for name, stat in stats.items()}
    return {name: calls for name, calls in counted.items() if not name.startswith(("info", "config"))}


def test_each_request_takes_one_redis_round_trip_per_limit(make, tmp_path):
    # A Redis of this test's own: it counts every command run on it.
    process, port = start_redis(tmp_path)
    try:
        client = redis.Redis(host=HOST, port=port)
        app = make(RATE_LIMIT="1000 per day;1000 per hour", RATELIMIT_STORAGE_URL=f"redis://{HOST}:{port}/0")
        assert post(app).status_code == 200  # loads limits' counting script into Redis
        client.config_resetstat()
        assert [post(app).status_code for _ in range(5)] == [200] * 5
        # One script call per limit, each a round trip; its INCRBY runs inside Redis (and its EXPIRE
        # only on the first count of a window).
        assert redis_commands(client) == {"evalsha": 10, "incrby": 10}
        assert sorted(int(client.get(key)) for key in client.keys("*")) == [6, 6]
    finally:
        stop(process)


@pytest.mark.parametrize("storage", ["memory://", "unreachable redis"])
def test_counting_in_memory_starts_no_thread_per_request(make, monkeypatch, storage):
    # With Redis unreachable, the counts go to each worker's memory.
    url = f"redis://127.0.0.1:{free_port()}/0" if storage == "unreachable redis" else storage
    app = make(RATE_LIMIT="1000 per second", RATELIMIT_STORAGE_URL=url)
    post(app)
    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda thread: started.append(thread) or start(thread))
    # Spread over more than one sweep interval, so the sweep runs too.
    for _ in range(30):
        assert post(app).status_code == 200
        time.sleep(0.05)
    assert started == []


def test_a_new_window_lets_a_limited_client_in_again(make):
    app = make(RATE_LIMIT="2 per second")
    assert [post(app).status_code for _ in range(3)] == [200, 200, 429]
    time.sleep(1.1)  # a fixed window lasts one second from the caller's first request in it
    assert post(app).status_code == 200


def test_health_and_metrics_are_never_limited(make):
    client = make(RATE_LIMIT="1 per day").test_client()
    for path in ["/healthz", "/readyz", "/metrics"] * 3:
        assert client.get(path).status_code == 200


def test_each_key_has_its_own_limit_and_bad_keys_count_against_the_address(make):
    app = make(IDENTITY_API_KEYS=KEYS, RATE_LIMIT="2 per day")
    assert [post(app, bearer(FIRST)).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(post(app, bearer(FIRST), address="10.0.0.7"), DAY)
    assert post(app, bearer(SECOND)).status_code == 200
    # Guessing keys is limited too: by the address the guesses come from.
    assert [post(app, bearer("guess"), address="10.0.0.9").status_code for _ in range(2)] == [401, 401]
    assert_rate_limited(post(app, bearer("guess"), address="10.0.0.9"), DAY)


def test_x_forwarded_for_is_ignored_without_trusted_proxies(make, capsys):
    app = make(RATE_LIMIT="2 per day")
    statuses = [post(app, {"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(3)]
    assert statuses == [200, 200, 429]
    assert {line["client"] for line in access_lines(capsys.readouterr().err)} == {"10.0.0.1"}


@pytest.mark.parametrize("hops, client", [(1, "198.51.100.7"), (2, "203.0.113.5")])
def test_x_forwarded_for_is_honoured_for_exactly_the_trusted_hops(make, capsys, hops, client):
    app = make(RATE_LIMIT="2 per day", TRUSTED_PROXY_HOPS=hops)
    chain = {"X-Forwarded-For": "192.0.2.66, 203.0.113.5, 198.51.100.7"}
    statuses = [post(app, chain).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert {line["client"] for line in access_lines(capsys.readouterr().err)} == {client}
    # Another forwarded client has counts of its own, though every request came from one proxy.
    assert post(app, {"X-Forwarded-For": "192.0.2.66, 203.0.113.9, 198.51.100.9"}).status_code == 200


@pytest.fixture
def redis_prefix(redis_url):
    """A rate-limit key prefix of this test's own in the tests' Redis; its keys are deleted afterwards."""
    prefix = f"identity-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"*{prefix}*"))
    if keys:
        client.delete(*keys)


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "memory"])
def test_counts_are_shared_between_app_instances_through_redis_only(make, redis_url, redis_prefix, shared):
    settings = {
        "RATE_LIMIT": "4 per day",
        "RATELIMIT_STORAGE_URL": redis_url if shared else "memory://",
        "RATELIMIT_KEY_PREFIX": redis_prefix,
    }
    first, second = make(**settings), make(**settings)
    assert [post(app).status_code for app in (first, second, first, second)] == [200] * 4
    assert post(second).status_code == (429 if shared else 200)
    keys = redis.Redis.from_url(redis_url).keys(f"*{redis_prefix}*")
    assert len(keys) == (1 if shared else 0)


def log_lines(text, level):
    """The JSON log lines at level among the lines of text."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == level]


def test_with_redis_unreachable_limits_fail_open_to_each_process(make, capsys, redis_prefix):
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    app = make(RATE_LIMIT="2 per day", RATELIMIT_STORAGE_URL=unreachable, RATELIMIT_KEY_PREFIX=redis_prefix)
    assert [post(app).status_code for _ in range(3)] == [200, 200, 429]
    warnings = log_lines(capsys.readouterr().err, "WARNING")
    # Said once for the outage, not once per request, as a JSON line like every other.
    assert len(warnings) == 1 and "storage unreachable" in warnings[0]["message"].lower()


def test_counts_go_back_to_redis_once_it_answers_again(make, tmp_path, capsys):
    process, port = start_redis(tmp_path)
    url, client = f"redis://{HOST}:{port}/0", redis.Redis(host=HOST, port=port)
    try:
        first, second = (make(RATE_LIMIT="1000 per day", RATELIMIT_STORAGE_URL=url) for _ in range(2))
        assert post(first).status_code == 200
        assert [int(client.get(key)) for key in client.keys("*")] == [1]
        stop(process)
        assert [post(first).status_code for _ in range(3)] == [200] * 3  # failed open
        process, _ = start_redis(tmp_path, port)  # empty: it kept nothing on disk
        await_count_in_redis(first, client)
        # Shared again: both instances count into the one key.
        for app in (second, first, second):
            assert post(app).status_code == 200
        assert [int(client.get(key)) for key in client.keys("*")] == [4]
    finally:
        stop(process)
    # Said once when Redis went away, once when it came back.
    output = capsys.readouterr().err
    warnings = [line["message"] for line in log_lines(output, "WARNING")]
    assert len(warnings) == 1 and warnings[0].startswith("rate-limit storage unreachable")
    back = [line["message"] for line in log_lines(output, "INFO") if line["logger"] == "identity.rate_limit"]
    assert back == ["rate-limit storage answers again: counting there"]


def await_count_in_redis(app, client, seconds=30):
    """Post through app until a count appears in Redis: it is tried again after a pause of its own."""
    deadline = time.monotonic() + seconds
    while not client.keys("*"):
        assert time.monotonic() < deadline, f"the counts did not go back to Redis within {seconds} s"
        assert post(app).status_code == 200
        time.sleep(0.1)
    assert [int(client.get(key)) for key in client.keys("*")] == [1]


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers; yields (its URL, connections accepted)."""
    server = socket.create_server((HOST, 0))
    accepted = []
    threading.Thread(target=lambda: accept_forever(server, accepted), daemon=True).start()
    yield f"redis://{HOST}:{server.getsockname()[1]}/0", accepted
    server.close()
    for connection in accepted:
        connection.close()


def accept_forever(server, accepted):
    """Accept connections on server into accepted until the server is closed."""
    try:
        while True:
            accepted.append(server.accept()[0])
    except OSError:
        pass


class PatientFailOpen(FailOpen):
    """FailOpen with pauses far longer than a test, so when it retries is up to the test."""

    FIRST_PAUSE_SECONDS = 600.0
    LONGEST_PAUSE_SECONDS = 2400.0


def test_a_silent_redis_is_tried_again_after_a_pause_that_doubles(silent_server, caplog):
    url, accepted = silent_server
    storage = PatientFailOpen(storage_from_string(url, wrap_exceptions=True, **REDIS_OPTIONS))
    assert [storage.incr("key", 60) for _ in range(5)] == [1, 2, 3, 4, 5]  # counted locally
    # Only the first waited for Redis (and timed out); the others counted locally at once.
    assert (len(accepted), storage.pause) == (1, 600.0)
    pauses = []
    for _ in range(4):
        storage.retry_at = time.monotonic()  # the pause is over
        storage.incr("key", 60)
        pauses.append(storage.pause)
    assert (len(accepted), pauses) == (5, [1200.0, 2400.0, 2400.0, 2400.0])
    assert storage.get("key") == 9
    # One outage, one warning, however many tries failed.
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert [record.name for record in warnings] == ["identity.rate_limit"]


def test_expired_counts_are_swept_during_a_count():
    storage = MemoryCounts()
    storage.incr("short", 1)
    storage.incr("long", 60)
    time.sleep(MemoryCounts.SWEEP_SECONDS + 0.1)  # past the short window, and time to sweep
    storage.incr("new", 60)
    assert sorted(storage.counts) == ["long", "new"]
    assert (storage.get("short"), storage.get("long")) == (0, 1)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("RATE_LIMIT", "lots"),
        ("RATE_LIMIT", ""),
        ("RATE_LIMIT", "5 per fortnight"),
        ("RATE_LIMIT", "0 per second"),
        ("RATE_LIMIT", "10/second;0/hour"),
        ("RATELIMIT_STORAGE_URL", "memcached://127.0.0.1:11211"),
        ("RATELIMIT_STORAGE_URL", "redis+sentinel://127.0.0.1:26379/primary"),
        ("RATELIMIT_STORAGE_URL", "async+memory://"),
        ("RATELIMIT_STORAGE_URL", "127.0.0.1:6379"),
        ("RATELIMIT_STORAGE_URL", "redis://127.0.0.1:port/0"),
        ("TRUSTED_PROXY_HOPS", -1),
    ],
)
def test_a_setting_that_makes_no_sense_stops_the_app_at_start(database_url, setting, value):
    with pytest.raises(ValueError, match=f"^{setting} ") as refused:
        make_app(database_url, **{setting: value})
    assert repr(value) in str(refused.value)


@pytest.mark.slow
def test_four_gunicorn_workers_share_one_limit_through_redis(database_url, tmp_path, redis_url, redis_prefix):
    port = free_port()
    settings = {"RATE_LIMIT": "20 per minute", "RATELIMIT_STORAGE_URL": redis_url}
    settings.update(RATELIMIT_KEY_PREFIX=redis_prefix, DATABASE_URL=database_url, WEB_CONCURRENCY=4)
    process, _ = start_gunicorn(tmp_path, port, **settings)
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(lambda _: post_json(port, BODY), range(30)))
    finally:
        stop(process)
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 20 + [429] * 10
    assert all(1 <= int(headers["Retry-After"]) <= 60 for status, headers, _ in answers if status == 429)


def test_with_several_limits_in_rate_limit_the_tightest_applies(make):
    app = make(RATE_LIMIT="2 per day;100 per second")
    assert [post(app).status_code for _ in range(2)] == [200] * 2
    assert_rate_limited(post(app), DAY)
