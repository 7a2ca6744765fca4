"""`flask import-contacts`: a history of records reconciled chunk by chunk, as /identify would have.

Design (README, "Importing"): the file is read and normalised in Python (identity.import_records),
sorted into the order the records apply, then reconciled a chunk at a time, each chunk one
transaction: its identifiers' advisory locks in ascending key order and its customers' primaries
FOR UPDATE in id order (the lock contract of 0002_identify_v1.sql, so live /identify stays correct
beside it), the customers it touches read in one query, the records replayed in memory with
identify's rules (identity.import_replay), and the result written with COPY. A chunk that finds a
customer merged under it is retried whole. Records already known write nothing, so a second
import, or one re-run after a kill, completes without doubling anything. Events are not recorded
for imported rows (contact_event is for requests; an import is one operator action).
"""

import io
from dataclasses import dataclass, field
from datetime import UTC, datetime

from psycopg2 import errors

from identity.import_replay import Replay
from identity.queries import QUERIES
from identity.retrying import retrying

# A chunk takes up to two advisory locks per record: 1000 records stay well inside the shared lock table
# of a default server (max_locks_per_transaction 64 x max_connections 100 = 6,400 entries).
CHUNK_SIZE = 1000


@dataclass
class Summary:
    """What an import did, as its last line shows."""

    read: int = 0
    rejected: int = 0
    counts: dict = field(default_factory=lambda: {"primaries": 0, "secondaries": 0, "merged": 0})
    seconds: float = 0.0

    def line(self):
        """The summary as one line."""
        rate = self.read / self.seconds if self.seconds else 0.0
        return (
            f"read: {self.read}, rejected: {self.rejected}, primaries created: {self.counts['primaries']}, "
            f"secondaries created: {self.counts['secondaries']}, customers merged: {self.counts['merged']}, "
            f"seconds: {self.seconds:.1f}, records/s: {rate:.0f}"
        )


def reconcile(conn, records, dry_run=False, progress=lambda done: None):
    """Apply the records in order, CHUNK_SIZE per transaction; the counts of what they did."""
    started_at = datetime.now(UTC)
    totals = {"primaries": 0, "secondaries": 0, "merged": 0}
    for start in range(0, len(records), CHUNK_SIZE):
        chunk = records[start : start + CHUNK_SIZE]
        counts = retrying(conn, import_chunk, chunk, started_at, dry_run)
        totals = {name: totals[name] + counts[name] for name in totals}
        progress(start + len(chunk))
    return totals


class CustomerMoved(errors.SerializationFailure):
    """A customer the chunk read was merged before its lock was taken: the chunk starts over."""


def import_chunk(conn, chunk, started_at, dry_run):
    """One chunk in the caller's transaction: lock, read, replay, write; its counts."""
    emails = sorted({r.email for r in chunk if r.email is not None})
    phone_numbers = sorted({r.phone_number for r in chunk if r.phone_number is not None})
    replay = Replay()
    with conn.cursor() as cur:
        cur.execute(QUERIES["import_lock_identifiers"], {"emails": emails, "phone_numbers": phone_numbers})
        replay.load(locked_customers(cur, emails, phone_numbers))
        for record in chunk:
            replay.apply(record.email, record.phone_number, record.created_at or started_at)
        replay.oldest_primaries()
        if dry_run:
            conn.rollback()
        else:
            write(cur, replay)
    return replay.counts


def locked_customers(cur, emails, phone_numbers):
    """The stored rows of the customers holding the values, their primaries locked in id order."""
    cur.execute(QUERIES["import_primaries"], {"emails": emails, "phone_numbers": phone_numbers})
    wanted = sorted(row[0] for row in cur.fetchall())
    cur.execute(QUERIES["import_lock_primaries"], {"ids": wanted})
    if [row[0] for row in cur.fetchall()] != wanted:
        raise CustomerMoved()
    cur.execute(QUERIES["import_customer_rows"], {"ids": wanted})
    return cur.fetchall()


def write(cur, replay):
    """Insert the new rows with ids from the table's sequence, then relink the existing ones."""
    cur.execute(QUERIES["import_new_ids"], {"n": replay.created})
    inserts, relinks = replay.changes([row[0] for row in cur.fetchall()])
    now = datetime.now(UTC)
    contacts = [
        (i, e, p, linked, "secondary" if linked else "primary", at, now) for i, e, p, linked, at in inserts
    ]
    cur.copy_expert(QUERIES["import_copy_contacts"], copy_text(contacts))
    if relinks:
        cur.execute(QUERIES["import_relink_table"])
        cur.copy_expert(QUERIES["import_copy_relinks"], copy_text(relinks))
        cur.execute(QUERIES["import_relink"])


def copy_text(rows):
    """rows in COPY's text format: tab-separated, \\N for null, backslash and control characters escaped."""
    return io.StringIO("".join("\t".join(map(copy_field, row)) + "\n" for row in rows))


def copy_field(value):
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    if any(c in text for c in "\\\t\n\r"):
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text
