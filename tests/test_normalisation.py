"""One person, many spellings: Unicode-equivalent emails are one value; with PHONE_REGION phones are E.164."""

import re
import unicodedata

import pytest
from helpers import all_contacts, identify
from hypothesis import example, given
from hypothesis import strategies as st
from marshmallow import ValidationError

from conftest import make_app
from identity.schemas import folded_email, is_address, is_forbidden_in_email, normal_phone_number
from identity.settings import BadSetting

# Spellings of one address a shopper's keyboard, phone or autofill may send: each pair must be one value.
SAME_EMAIL = [
    ("ren\u00e9e@shop.fr", "rene\u0301e@shop.fr"),  # precomposed (NFC) and decomposed (NFD)
    ("john@shop.in", "\uff4a\uff4f\uff48\uff4e@shop.in"),  # fullwidth letters
    ("john@shop.in", "john\uff20shop\uff0ein"),  # fullwidth @ and dot
    ("\u039d\u0399\u039a\u039f\u03a3@shop.gr", "\u03bd\u03b9\u03ba\u03bf\u03c3@shop.gr"),  # Greek capitals
    ("\u03bd\u03b9\u03ba\u03bf\u03c2@shop.gr", "\u03bd\u03b9\u03ba\u03bf\u03c3@shop.gr"),  # final sigma
    ("\u0130van@shop.tr", "ivan@shop.tr"),  # Turkish dotted capital I
    ("STRASSE@shop.de", "stra\u00dfe@shop.de"),  # sharp s folds to ss
    ("\ufb01nn@shop.fi", "finn@shop.fi"),  # the fi ligature
]
# What must stay apart: different letters, not different spellings of one.
DIFFERENT_EMAILS = [
    ("rene@shop.fr", "ren\u00e9e@shop.fr"),
    ("ivan@shop.tr", "\u0131van@shop.tr"),  # dotless i is a letter of its own
    ("john@shop.in", "j\u043ehn@shop.in"),  # a Cyrillic o looks the same and is not
]
SAME_INDIAN_NUMBER = ["9876543210", "09876543210", "+91 98765 43210", "+91-98765-43210", 9876543210]


@pytest.fixture
def india(database_url):
    app = make_app(database_url, PHONE_REGION="in")
    yield app.test_client()
    app.extensions["identity_pool"].closeall()


@pytest.mark.parametrize(("first", "second"), SAME_EMAIL)
def test_unicode_equivalent_emails_are_one_value(client, conn, first, second):
    status, answer = identify(client, first, "1001")
    assert status == 200
    assert (
        identify(client, second, "2002")[1]["contact"]["primaryContatctId"]
        == (answer["contact"]["primaryContatctId"])
    )
    assert len({row["email"] for row in all_contacts(conn)}) == 1
    assert client.get("/contacts", query_string={"email": second}).status_code == 200


@pytest.mark.parametrize(("first", "second"), DIFFERENT_EMAILS)
def test_different_letters_stay_different_values(client, first, second):
    one = identify(client, first)[1]["contact"]["primaryContatctId"]
    assert identify(client, second)[1]["contact"]["primaryContatctId"] != one


def test_emails_are_stored_folded(client, conn):
    identify(client, "  \uff2a\uff2f\uff28\uff2e@Shop.IN ")
    assert [row["email"] for row in all_contacts(conn)] == ["john@shop.in"]


def test_without_a_region_phone_numbers_stay_as_the_task_has_them(client, conn):
    for number in SAME_INDIAN_NUMBER:
        assert identify(client, None, number)[0] == 200
    assert sorted({row["phone_number"] for row in all_contacts(conn)}) == [
        "+919876543210",
        "09876543210",
        "9876543210",
    ]


def test_with_a_region_one_number_in_every_spelling_is_one_value_in_e164(india, conn):
    answers = [identify(india, None, number) for number in SAME_INDIAN_NUMBER]
    assert {status for status, _ in answers} == {200}
    assert {answer["contact"]["primaryContatctId"] for _, answer in answers} == {1}
    assert [row["phone_number"] for row in all_contacts(conn)] == ["+919876543210"]
    found = india.get("/contacts", query_string={"phoneNumber": "098765 43210"})
    assert found.get_json()["contact"]["phoneNumbers"] == ["+919876543210"]


def test_a_number_of_another_country_keeps_its_own_code(india, conn):
    assert identify(india, None, "+1 415 555 0100")[0] == 200
    assert [row["phone_number"] for row in all_contacts(conn)] == ["+14155550100"]


@pytest.mark.parametrize("number", ["12", "98765432101234567"])
def test_with_a_region_an_impossible_number_is_refused_and_writes_nothing(india, conn, number):
    response = india.post("/identify", json={"email": "a@shop.in", "phoneNumber": number})
    assert response.status_code == 400
    assert response.get_json()["error"]["fields"] == {
        "phoneNumber": ["Must be a possible phone number for the region IN."]
    }
    assert all_contacts(conn) == []


@pytest.mark.parametrize("region", ["XX", "India", "1"])
def test_a_region_that_is_none_stops_the_start(database_url, region):
    with pytest.raises(BadSetting, match="PHONE_REGION"):
        make_app(database_url, PHONE_REGION=region)


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_ascii_takes_a_short_way_to_the_same_folding(value):
    # NFKC, full case folding, NFKC again, the dotted i's dot gone, trimmed: the rule, spelled out.
    full = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
    assert folded_email(value) == full.replace("i\u0307", "i").strip()


# Addresses near the rule's edges (at signs, spaces, controls), and any ASCII text.
ASCII_ADDRESSES = st.lists(st.sampled_from(["a", "b.", "@", " ", "\t", "\x00", "\x7f"]), max_size=8).map(
    "".join
)


@given(ASCII_ADDRESSES | st.text(alphabet=st.characters(max_codepoint=127), max_size=12))
@example("a@b")
@example("a@b@c")
@example("@b")
@example("a@")
@example("a b@c")
@example("a@b\x7f")
def test_ascii_takes_a_short_way_to_the_same_address_rule(value):
    # One @ with text on both sides, no character is_forbidden_in_email: the rule, spelled out.
    local, at, domain = value.partition("@")
    rule = bool(at and local and domain) and "@" not in domain and not any(map(is_forbidden_in_email, value))
    assert is_address(value) == rule


# Phone numbers near the rule's edges: digits, a plus, separators, a letter, blanks, too many digits.
PHONE_PARTS = ["1", "90", "+", " ", "-", "(", ")", ".", "x", "\t"]
PHONE_TEXTS = st.lists(st.sampled_from(PHONE_PARTS), max_size=24).map("".join)


@given(PHONE_TEXTS)
@example("123")
@example("+123")
@example("")
@example("1" * 21)
@example("(555) 01-99")
def test_bare_digits_take_a_short_way_to_the_same_phone_number(value):
    # Blank is absent; else separators dropped, then 1 to 20 digits after an optional +: the rule.
    number = re.sub(r"[\s\-.()]", "", value)
    expected = None if not value.strip() else number if re.fullmatch(r"\+?[0-9]{1,20}", number) else "refused"
    try:
        got = normal_phone_number(value)
    except ValidationError:
        got = "refused"
    assert got == expected
