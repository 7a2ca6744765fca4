"""Contacts in PostgreSQL: every function takes a connection first and never commits.

Reconciliation runs as one statement, the `identify` function in sql/functions/identify.sql, so a
request costs one round trip and one short transaction. Its concurrency control:

* Fast path. One statement, one snapshot: if the contacts that match belong to one customer that
  already holds every value the request carries, the answer is read from that snapshot and nothing
  is locked or written. A read of one consistent snapshot is a valid place in a serial order.
* First orders. Row locks cannot guard rows that do not exist yet, so a request that may write
  first takes transaction-level advisory locks on its email and phone number (keys hashed from the
  values, the smaller key first, so two requests never hold one key each while waiting for the
  other's). Until it commits, no other request can insert a row with those values; fifty requests
  with one new email queue, and only the first inserts a primary.
* Merges. Every change to a customer is made while holding its primary's row lock. After the
  advisory locks, a fresh snapshot finds the customers again and their primaries are locked
  `FOR UPDATE` in id order, so racing merges queue instead of deadlocking. If a primary was demoted
  while we waited, it fails the re-checked WHERE clause; rather than lock its new primary out of
  order, the function raises serialization_failure and the caller retries the whole transaction.
* Advisory locks are always taken before row locks, and each kind in a fixed order, so no cycle of
  waits can form; a deadlock the server still reports is retried like a serialization failure.
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
