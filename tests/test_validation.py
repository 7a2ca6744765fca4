"""Input: what is normalised, what is refused, and that a refused request writes nothing."""

import io
import json

import pytest

from helpers import all_contacts

LONGEST_EMAIL = "a" * 240 + "@example.co.uk"  # 254 characters


@pytest.mark.parametrize(
    ("body", "email", "phone"),
    [
        ({"email": " Doc@HillValley.EDU\t"}, "doc@hillvalley.edu", None),
        ({"email": "ÉMILE@Exämple.fr"}, "émile@exämple.fr", None),
        ({"email": LONGEST_EMAIL}, LONGEST_EMAIL, None),
        ({"phoneNumber": "+1 (555) 010-9999"}, None, "+15550109999"),
        ({"phoneNumber": "+1-555-010-9999"}, None, "+15550109999"),
        ({"phoneNumber": "555.010.9999"}, None, "5550109999"),
        ({"phoneNumber": 123456}, None, "123456"),
        ({"phoneNumber": 0}, None, "0"),
        ({"phoneNumber": "+" + "9" * 20}, None, "+" + "9" * 20),
        ({"email": "", "phoneNumber": "42"}, None, "42"),
        ({"email": "a@b", "phoneNumber": "   "}, "a@b", None),
    ],
)
def test_accepted_values_are_stored_normalised(client, conn, body, email, phone):
    response = client.post("/identify", json=body)
    assert response.status_code == 200, response.get_json()
    [row] = all_contacts(conn)
    assert (row["email"], row["phone_number"]) == (email, phone)


REFUSED_FIELDS = [
    ({"email": 123}, "email"),
    ({"email": True}, "email"),
    ({"email": ["a@b.c"]}, "email"),
    ({"email": {"a": "b"}}, "email"),
    ({"email": "no-at-sign"}, "email"),
    ({"email": "two@@x.io"}, "email"),
    ({"email": "a@b@c.io"}, "email"),
    ({"email": "@x.io"}, "email"),
    ({"email": "a@"}, "email"),
    ({"email": "a b@x.io"}, "email"),
    ({"email": "a\u0000b@x.io"}, "email"),
    ({"email": "a\u200bb@x.io"}, "email"),
    ({"email": "\ud800@x.io"}, "email"),  # a lone surrogate: UTF-8 cannot carry it to PostgreSQL
    ({"email": "a" * 241 + "@example.co.uk"}, "email"),
    ({"phoneNumber": True}, "phoneNumber"),
    ({"phoneNumber": False}, "phoneNumber"),
    ({"phoneNumber": 12.5}, "phoneNumber"),
    ({"phoneNumber": 1.0}, "phoneNumber"),
    ({"phoneNumber": -1}, "phoneNumber"),
    ({"phoneNumber": 10**20}, "phoneNumber"),
    ({"phoneNumber": {"n": 1}}, "phoneNumber"),
    ({"phoneNumber": [1]}, "phoneNumber"),
    ({"phoneNumber": "abc"}, "phoneNumber"),
    ({"phoneNumber": "12a"}, "phoneNumber"),
    ({"phoneNumber": "+"}, "phoneNumber"),
    ({"phoneNumber": "()-"}, "phoneNumber"),
    ({"phoneNumber": "++1"}, "phoneNumber"),
    ({"phoneNumber": "1+2"}, "phoneNumber"),
    ({"phoneNumber": "1" * 21}, "phoneNumber"),
    ({"phoneNumber": "١٢٣"}, "phoneNumber"),
    ({"email": "ok@x.io", "phoneNumber": "bad"}, "phoneNumber"),
    ({}, "_schema"),
    ({"email": None, "phoneNumber": None}, "_schema"),
    ({"email": "  ", "phoneNumber": ""}, "_schema"),
    ({"orderId": 7}, "_schema"),
]


@pytest.mark.parametrize(("body", "field"), REFUSED_FIELDS)
def test_invalid_fields_are_refused_and_write_nothing(client, conn, body, field):
    response = client.post("/identify", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert list(error["fields"]) == [field] and error["fields"][field][0]
    assert all_contacts(conn) == []


@pytest.mark.parametrize("body", ["[]", '"a@b.c"', "1", "null", "true"])
def test_a_body_that_is_not_an_object_is_refused(client, conn, body):
    response = client.post("/identify", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["fields"] == {"_schema": ["The body must be a JSON object."]}
    assert all_contacts(conn) == []


@pytest.mark.parametrize("body", ["{", '{"email": }', "{'email': 'a@b'}", b"\xff\xfe{}", "[" * 30000])
def test_malformed_json_is_refused(client, conn, body):
    response = client.post("/identify", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {
        "error": {"code": "malformed_json", "message": "The body is not valid JSON."}
    }
    assert all_contacts(conn) == []


def oversized_body():
    """Valid JSON just over 64 KiB."""
    return json.dumps({"email": "a@b.c", "padding": "x" * (64 * 1024)})


def test_a_body_over_64_kib_is_refused(client, conn):
    response = client.post("/identify", data=oversized_body(), content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert all_contacts(conn) == []


def body_of_size(size):
    """Valid JSON of exactly size bytes."""
    body = json.dumps({"email": "a@b.c", "padding": ""})
    return body[:-2] + "x" * (size - len(body)) + '"}'


def post_chunked(client, body):
    """POST a body as gunicorn hands over a chunked one: no Content-Length, stream terminated."""
    return client.post(
        "/identify",
        input_stream=io.BytesIO(body.encode()),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_64_kib_is_refused_not_cut(client, conn):
    assert post_chunked(client, body_of_size(64 * 1024 + 1)).status_code == 413
    assert all_contacts(conn) == []


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_of_exactly_64_kib_is_read(client, conn, chunked):
    body = body_of_size(64 * 1024)
    if chunked:
        response = post_chunked(client, body)
    else:
        response = client.post("/identify", data=body, content_type="application/json")
    assert response.status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_content_type_other_than_json_is_refused(client, conn, content_type):
    response = client.post("/identify", data='{"email": "a@b.c"}', content_type=content_type)
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert all_contacts(conn) == []
