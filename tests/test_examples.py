"""The task's own examples, exactly."""

from helpers import all_contacts, identify

LORRAINE = {
    "primaryContatctId": 1,
    "emails": ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"],
    "phoneNumbers": ["123456"],
    "secondaryContactIds": [2],
}


def test_second_email_with_known_phone_number_becomes_a_secondary(client, conn):
    assert identify(client, "lorraine@hillvalley.edu", "123456") == (
        200,
        {
            "contact": {
                "primaryContatctId": 1,
                "emails": ["lorraine@hillvalley.edu"],
                "phoneNumbers": ["123456"],
                "secondaryContactIds": [],
            }
        },
    )
    assert identify(client, "mcfly@hillvalley.edu", "123456") == (200, {"contact": LORRAINE})
    rows = all_contacts(conn)
    assert [(r["id"], r["link_precedence"], r["linked_id"]) for r in rows] == [
        (1, "primary", None),
        (2, "secondary", 1),
    ]


def test_any_one_known_value_answers_with_the_whole_customer(client, conn):
    identify(client, "lorraine@hillvalley.edu", "123456")
    identify(client, "mcfly@hillvalley.edu", "123456")
    for body in (
        {"email": None, "phoneNumber": "123456"},
        {"email": "lorraine@hillvalley.edu", "phoneNumber": None},
        {"email": "mcfly@hillvalley.edu"},
        {"email": "mcfly@hillvalley.edu", "phoneNumber": "123456"},
    ):
        response = client.post("/identify", json=body)
        assert (response.status_code, response.get_json()) == (200, {"contact": LORRAINE}), body
    assert len(all_contacts(conn)) == 2


def test_request_joining_two_primaries_demotes_the_newer_and_creates_nothing(client, conn):
    identify(client, "george@hillvalley.edu", "919191")
    identify(client, "biffsucks@hillvalley.edu", "717171")
    assert identify(client, "george@hillvalley.edu", "717171") == (
        200,
        {
            "contact": {
                "primaryContatctId": 1,
                "emails": ["george@hillvalley.edu", "biffsucks@hillvalley.edu"],
                "phoneNumbers": ["919191", "717171"],
                "secondaryContactIds": [2],
            }
        },
    )
    rows = all_contacts(conn)
    assert len(rows) == 2
    biff = rows[1]
    assert (biff["link_precedence"], biff["linked_id"]) == ("secondary", 1)
    assert biff["updated_at"] > biff["created_at"]
