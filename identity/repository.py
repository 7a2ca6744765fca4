"""Contacts in PostgreSQL: every function takes a connection first and never commits.

Reconciliation runs as one statement, the versioned `identify_v1` function, so a request costs one
round trip and one short transaction. How it stays correct under races (advisory locks on the
identifiers, then the primaries' row locks in id order, serialization_failure to retry) is explained
in full beside its code, in sql/migrations/0002_identify_v1.sql.
"""

import weakref
from dataclasses import dataclass

from identity.queries import QUERIES


# Connections on which the hot statement is prepared; a closed connection drops out by itself.
PREPARED = weakref.WeakSet()


@dataclass(frozen=True)
class Outcome:
    """What one identify call answered and changed."""

    contact: dict
    created: str | None
    merged: list


def prepare(conn, cur):
    """Prepare the hot statement on this connection, once (PREPARE survives rollbacks)."""
    if conn not in PREPARED:
        cur.execute(QUERIES["prepare_identify"])
        PREPARED.add(conn)


def identify(conn, email, phone_number):
    """Link the contact details into one customer and return the consolidated customer."""
    with conn.cursor() as cur:
        prepare(conn, cur)
        cur.execute(QUERIES["identify"], {"email": email, "phone_number": phone_number})
        contact, created, merged = cur.fetchone()
    return Outcome(contact, created, merged)


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
    with conn.cursor() as cur:
        cur.execute(QUERIES[name], params)
        row = cur.fetchone()
    return None if row is None else row[0]


def blocked_version(conn):
    """The version of the blocked-value list, which every change to it moves."""
    return first_value(conn, "blocked_version", None)


def blocked_values(conn):
    """(version, [entry]) of the whole blocked-value list, read in one snapshot."""
    with conn.cursor() as cur:
        cur.execute(QUERIES["blocked_values"])
        return cur.fetchone()


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
