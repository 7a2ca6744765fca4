"""`flask import-contacts`: a history of records reconciled chunk by chunk, as /identify would have.

Design (README, "Importing"): the file is read and normalised in Python (identity.import_records),
sorted into the order the records apply, then reconciled a chunk at a time, each chunk one
transaction: its identifiers' advisory locks in ascending key order and its customers' primaries
FOR UPDATE in id order (the lock contract of 0002_identify_v1.sql, so live /identify stays correct
beside it) with their rows read, all in one call (0011_import_customers_v1.sql); then the records
replayed in memory with identify's rules (identity.import_replay), and the rows and their events
written with COPY. A chunk that finds a customer merged under it is retried whole. Records already
known write nothing, so a second import, or one re-run after a kill, completes without doubling
anything.
"""

import io
from dataclasses import dataclass, field
from datetime import UTC, datetime

from identity.import_replay import Replay
from identity.queries import QUERIES
from identity.retrying import retrying

# A chunk takes up to two advisory locks per record: 2000 records (at most 4,000 locks) stay inside
# the shared lock table of a default server (max_locks_per_transaction 64 x max_connections 100 =
# 6,400 entries), with room for the requests served beside it.
CHUNK_SIZE = 2000
# The first ANALYZE of a table the import fills (PlannerStatistics).
ANALYZE_AFTER_ROWS = 10_000


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
    statistics = PlannerStatistics(conn)
    for start in range(0, len(records), CHUNK_SIZE):
        chunk = records[start : start + CHUNK_SIZE]
        counts = retrying(conn, import_chunk, chunk, started_at, dry_run)
        totals = {name: totals[name] + counts[name] for name in totals}
        if not dry_run:
            statistics.written(counts["primaries"] + counts["secondaries"])
        progress(start + len(chunk))
    return totals


@dataclass
class PlannerStatistics:
    """ANALYZE the table each time the import has doubled what it wrote since the last one.

    Without statistics of the rows it writes, the planner takes a table the import fills for the
    empty one it was (autovacuum may be off, or late), and the chunks' lookups turn to scans: a
    million records into an empty table ran at a third of the speed. Doubling keeps the ANALYZEs
    few (about a dozen for a million rows).
    """

    conn: object
    rows: int = 0
    next_analyze: int = ANALYZE_AFTER_ROWS

    def written(self, rows):
        """Note rows written; ANALYZE when the total passes the next mark."""
        self.rows += rows
        if self.rows >= self.next_analyze:
            with self.conn.cursor() as cur:
                cur.execute(QUERIES["import_analyze"])
            self.conn.commit()
            self.next_analyze = 2 * self.rows


def import_chunk(conn, chunk, started_at, dry_run):
    """One chunk in the caller's transaction: lock and read its customers, replay, write; its counts."""
    emails = sorted({r.email for r in chunk if r.email is not None})
    phone_numbers = sorted({r.phone_number for r in chunk if r.phone_number is not None})
    replay = Replay()
    with conn.cursor() as cur:
        cur.execute(QUERIES["import_durability"])
        cur.execute(QUERIES["import_customers"], {"emails": emails, "phone_numbers": phone_numbers})
        replay.load(cur.fetchall())
        for record in chunk:
            request_id = f"import {started_at:%Y-%m-%dT%H:%M:%SZ} line {record.line}"
            replay.apply(record.email, record.phone_number, record.created_at or started_at, request_id)
        replay.oldest_primaries()
        if dry_run:
            conn.rollback()
        else:
            write(cur, replay)
    return replay.counts


def write(cur, replay):
    """Insert the new rows with ids from the table's sequence and their events; relink the existing rows."""
    cur.execute(QUERIES["import_new_ids"], {"n": replay.created})
    inserts, relinks, events = replay.changes([row[0] for row in cur.fetchall()])
    cur.copy_expert(QUERIES["import_copy_contacts"], contact_lines(inserts, datetime.now(UTC)))
    cur.copy_expert(QUERIES["import_copy_events"], event_lines(events))
    if relinks:
        ids, linked_ids = zip(*relinks, strict=True)
        cur.execute(QUERIES["import_relink"], {"ids": list(ids), "linked_ids": list(linked_ids)})


# COPY's text format: fields split by tabs, \N is null, and these characters escaped in a value.
NULL = "\\N"
COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_value(value):
    """A text value, or null, in COPY's text format."""
    return NULL if value is None else str(value).translate(COPY_ESCAPES)


def contact_lines(inserts, now):
    """The new rows (id, email, phone number, linked id, created_at) as COPY's input for contact.

    Formatted line by line with one f-string, not field by field: at a million rows the import's
    Python time is a large share of its whole.
    """
    stamp = now.isoformat()
    return io.StringIO(
        "".join(
            f"{i}\t{copy_value(email)}\t{copy_value(phone)}\t{copy_value(linked)}\t"
            f"{'primary' if linked is None else 'secondary'}\t{at.isoformat()}\t{stamp}\n"
            for i, email, phone, linked, at in inserts
        )
    )


def event_lines(events):
    """The events (at, request id, kind, survivor, contact ids, email, phone) as COPY's input."""
    return io.StringIO(
        "".join(
            f"{at.isoformat()}\t{copy_value(request)}\t{kind}\t{survivor}\t{{{','.join(map(str, ids))}}}\t"
            f"{copy_value(email)}\t{copy_value(phone)}\n"
            for at, request, kind, survivor, ids, email, phone in events
        )
    )
