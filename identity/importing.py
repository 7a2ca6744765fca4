"""`flask import-contacts`: a history of records reconciled chunk by chunk, as /identify would have.

Design (README, "Importing"): the file is read and normalised in Python (identity.import_records),
sorted into the order the records apply, then reconciled a chunk at a time, each chunk one
transaction: its identifiers' advisory locks in ascending key order and its customers' primaries
FOR UPDATE in id order (the lock contract of 0002_identify_v1.sql, so live /identify stays correct
beside it) with their rows read, all in one call (0012_import_customers_v1.sql; a customer merged
meanwhile makes that call start over); then the records replayed in memory with identify's rules
(identity.import_replay), and the rows and their events written with COPY. Records already known
write nothing, so a second import, or one re-run after a kill, completes without doubling anything.
"""

import io
from concurrent.futures import ThreadPoolExecutor
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


def reconcile(conns, records, dry_run=False, progress=lambda done: None):
    """Apply the records in order, CHUNK_SIZE per transaction; the counts of what they did.

    Two connections take turns, one chunk ahead: while a chunk is replayed and written on one, the
    next chunk's identifiers and customers are locked and read on the other, so the database's
    lookups, Python's replay and the database's writes overlap. The order stays the records' order:
    the next chunk asks for its locks only once this chunk holds all of its own, so where the two
    share a value or a customer the next waits for this one's commit and then reads what it wrote,
    exactly as a request would (sql/migrations/0002_identify_v1.sql). New ids come from the sequence
    in chunk order, as the writes are made in turn.
    """
    started_at = datetime.now(UTC)
    totals = {"primaries": 0, "secondaries": 0, "merged": 0}
    statistics = PlannerStatistics()
    chunks = [records[start : start + CHUNK_SIZE] for start in range(0, len(records), CHUNK_SIZE)]
    with ThreadPoolExecutor(max_workers=1) as lookahead:
        pending = lookahead.submit(locked_customers, conns[0], chunks[0]) if chunks else None
        for n, chunk in enumerate(chunks):
            conn, stored = conns[n % 2], pending.result()
            if n + 1 < len(chunks):
                pending = lookahead.submit(locked_customers, conns[(n + 1) % 2], chunks[n + 1])
            counts = import_chunk(conn, chunk, stored, started_at, dry_run)
            totals = {name: totals[name] + counts[name] for name in totals}
            statistics.written(conn, 0 if dry_run else counts["primaries"] + counts["secondaries"])
            progress(n * CHUNK_SIZE + len(chunk))
    return totals


@dataclass
class PlannerStatistics:
    """ANALYZE the table each time the import has doubled what it wrote since the last one.

    Without statistics of the rows it writes, the planner takes a table the import fills for the
    empty one it was (autovacuum may be off, or late), and the chunks' lookups turn to scans: a
    million records into an empty table ran at a third of the speed. Doubling keeps the ANALYZEs
    few (about a dozen for a million rows).
    """

    rows: int = 0
    next_analyze: int = ANALYZE_AFTER_ROWS

    def written(self, conn, rows):
        """Note rows written; ANALYZE on conn, which has just committed, when the total passes the mark."""
        self.rows += rows
        if self.rows >= self.next_analyze:
            with conn.cursor() as cur:
                cur.execute(QUERIES["import_analyze"])
            conn.commit()
            self.next_analyze = 2 * self.rows


def locked_customers(conn, chunk):
    """In a new transaction on conn, left open: the chunk's values and customers locked; their rows."""
    emails = sorted({r.email for r in chunk if r.email is not None})
    phone_numbers = sorted({r.phone_number for r in chunk if r.phone_number is not None})
    return retrying(conn, customer_rows, emails, phone_numbers, commit=False)


def customer_rows(conn, emails, phone_numbers):
    """The customers holding the values, locked as identify locks them: their rows."""
    with conn.cursor() as cur:
        cur.execute(QUERIES["import_durability"])
        cur.execute(QUERIES["import_customers"], {"emails": emails, "phone_numbers": phone_numbers})
        return cur.fetchall()


def import_chunk(conn, chunk, stored, started_at, dry_run):
    """Replay the chunk over its locked customers' rows, write and commit (roll back on a dry run)."""
    replay = Replay()
    replay.load(stored)
    for record in chunk:
        request_id = f"import {started_at:%Y-%m-%dT%H:%M:%SZ} line {record.line}"
        replay.apply(record.email, record.phone_number, record.created_at or started_at, request_id)
    replay.oldest_primaries()
    if dry_run:
        conn.rollback()
        return replay.counts
    with conn.cursor() as cur:
        write(cur, replay)
    conn.commit()
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
