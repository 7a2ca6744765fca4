"""Contacts in PostgreSQL: every function takes a connection first and never commits.

Reconciliation runs as one statement, the versioned `identify_v3` function, so a request costs one
round trip and one short transaction. How it stays correct under races (advisory locks on the
identifiers, then the primaries' row locks in id order, serialization_failure to retry) is explained
in full in sql/migrations/0002_identify_v1.sql; what v2 adds (events, limits) in 0006_identify_v2.sql;
v3 (0010_identify_v3.sql) checks the limits with a kept plan and answers with one json value.
"""

import functools
from dataclasses import dataclass

from psycopg2.extensions import adapt, register_adapter

from identity.queries import QUERIES


@dataclass(frozen=True)
class Outcome:
    """What one identify call answered and changed."""

    contact: dict
    created: str | None
    merged: list
    refused: str | None = None


@dataclass(frozen=True)
class Limits:
    """The most a customer may hold; None is no limit."""

    max_emails: int | None = None
    max_phone_numbers: int | None = None
    max_contacts: int | None = None


NO_LIMITS = Limits()


class LimitsArgument:
    """The three limits as the statement's `%(limits)s`, their SQL rendered once, not per request.

    psycopg2 renders each integer parameter anew, about 7k instructions a request apiece (README,
    "With blocked values and limits on"); an object of a registered type that keeps its SQL, about 3k.
    """

    def __init__(self, limits):
        self.quoted = b", ".join(adapt(value).getquoted() for value in vars(limits).values())

    def prepare(self, _conn):
        """Nothing to prepare: psycopg2 asks each adapter, and an absent method costs more."""

    def getquoted(self):
        """max_emails, max_phone_numbers, max_contacts, each a number or NULL."""
        return self.quoted


register_adapter(LimitsArgument, lambda argument: argument)
limits_argument = functools.cache(LimitsArgument)


def identify(conn, email, phone_number, request_id=None, limits=NO_LIMITS):
    """Link the contact details into one customer, record what changed, and return the customer."""
    params = {
        "email": email,
        "phone_number": phone_number,
        "request_id": request_id,
        "limits": limits_argument(limits),
    }
    with conn.cursor() as cur:
        cur.execute(QUERIES["identify"], params)
        return Outcome(**cur.fetchone()[0])


def identify_batch(conn, items, request_id=None, limits=NO_LIMITS):
    """[Outcome] of identify for each item in order, as if posted one by one, in one transaction."""
    params = {
        "emails": [item["email"] for item in items],
        "phone_numbers": [item["phone_number"] for item in items],
        "request_id": request_id,
        "limits": limits_argument(limits),
    }
    with conn.cursor() as cur:
        cur.execute(QUERIES["identify_batch"], params)
        return [Outcome(**outcome) for outcome in cur.fetchone()[0]]


def ping(conn):
    """Raise unless the database answers a trivial statement."""
    first_value(conn, "ping", None)


def customer_of_contact(conn, contact_id):
    """The customer a live contact belongs to, as identify answers it; None if there is none."""
    return first_value(conn, "customer_of_contact", {"contact_id": contact_id})


def customer_with_identifier(conn, email, phone_number):
    """The customer holding the email or the phone number (give one); None if none does."""
    return first_value(conn, "customer_with_identifier", {"email": email, "phone_number": phone_number})


def first_value(conn, name, params):
    """The first column of the first row the named statement returns, or None without a row."""
    row = first_row(conn, name, params)
    return None if row is None else row[0]


def blocked_version(conn):
    """The version of the blocked-value list, which every change to it moves."""
    return first_value(conn, "blocked_version", None)


def blocked_values(conn):
    """(version, [entry]) of the whole blocked-value list, read in one snapshot."""
    return first_row(conn, "blocked_values", None)


def add_blocked_value(conn, entry):
    """(the entry, whether it was added): a value already on the list is left as it is."""
    added = first_value(conn, "add_blocked_value", entry)
    return (added, True) if added else (first_value(conn, "find_blocked_value", entry), False)


def remove_blocked_value(conn, entry):
    """The entry removed from the blocked-value list, or None when it was not on it."""
    return first_value(conn, "remove_blocked_value", entry)


def contacts_after(conn, after, batch_size):
    """[(id, email, phone number)] of the next live contacts with ids above after, in id order."""
    with conn.cursor() as cur:
        cur.execute(QUERIES["contacts_after"], {"after": after, "batch_size": batch_size})
        return cur.fetchall()


def renormalise_contact(conn, contact_id, email, phone_number):
    """Rewrite a live contact's values and merge what then shares one: (rewritten, primaries merged)."""
    with conn.cursor() as cur:
        cur.execute(
            QUERIES["renormalise_contact"], {"id": contact_id, "email": email, "phone_number": phone_number}
        )
        contact, merged = cur.fetchone()
    return contact is not None, merged


def customer_history(conn, contact_id):
    """(customer, [event]) of a live contact's customer, oldest event first; None if not live."""
    return first_row(conn, "customer_history", {"contact_id": contact_id})


def customer_evidence(conn, contact_id):
    """(primary id, [contact], [merge event]) of a live contact's customer; None if not live."""
    return first_row(conn, "customer_evidence", {"contact_id": contact_id})


def audit(conn, limit):
    """The largest customers, the values that merged the most, the recent refused links."""
    params = {"limit": limit}
    return {
        "largestCustomers": first_value(conn, "largest_customers", params),
        "mostJoiningValues": first_value(conn, "most_joining_values", params),
        "recentRefusedLinks": first_value(conn, "recent_refused_links", params),
    }


@dataclass(frozen=True)
class CustomerErased:
    """What erasing a customer blanked: its live contacts (primary first) and the values and events."""

    contact_ids: list
    emails: int
    phone_numbers: int
    events: int


@dataclass(frozen=True)
class ValueErased:
    """What erasing a value blanked, and the customers that its holders form now."""

    contacts: int
    deleted: int
    events: int
    customers: list


def erase_customer(conn, contact_id, request_id=None):
    """Erase the customer the contact belongs to; None when no contact has the id (0009_erase_v1.sql)."""
    known, *erased = first_row(conn, "erase_customer", {"contact_id": contact_id, "request_id": request_id})
    return CustomerErased(*erased) if known else None


def erase_value(conn, email, phone_number, request_id=None):
    """Erase the email or the phone number (give one) everywhere and re-derive the customers that held it."""
    params = {"email": email, "phone_number": phone_number, "request_id": request_id}
    return ValueErased(*first_row(conn, "erase_value", params))


def unlink_value(conn, email, phone_number, request_id=None):
    """[customer] its holders form once the email or the phone number (give one) is no evidence."""
    params = {"email": email, "phone_number": phone_number, "request_id": request_id}
    return first_value(conn, "unlink_value", params)


def first_row(conn, name, params):
    """The first row the named statement returns, or None."""
    with conn.cursor() as cur:
        cur.execute(QUERIES[name], params)
        return cur.fetchone()
