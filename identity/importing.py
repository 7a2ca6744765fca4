"""`flask import-contacts`: a history of records reconciled chunk by chunk, as /identify would have.

Design (README, "Importing"): the file is read and normalised in Python (identity.import_records)
and sorted into the order the records apply. Before the first chunk, one snapshot tells which of
the file's values the table holds, and the rows of their customers (none at all for an empty
table). Then each chunk is one transaction that takes the table for itself (the gate, sql/import.sql
says why ACCESS EXCLUSIVE), re-reads only the values someone else may have changed since the import
last looked (Watch), replays its records in memory with identify's rules (identity.import_replay)
and streams the new rows and their events into the table with COPY. Records already known write
nothing, so a second import, or one re-run after a kill, completes without doubling anything.
"""

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from psycopg2.errors import LockNotAvailable

from identity.import_replay import Chunk, Model
from identity.queries import QUERIES

# Records per chunk: each holds the table for about a tenth of a second on the benchmark machine
# (README, "Importing"), and a million records take a hundred chunks.
CHUNK_SIZE = 10_000
# The first ANALYZE of a table the import fills (PlannerStatistics).
ANALYZE_AFTER_ROWS = 10_000
# How long a chunk's request for the table may keep the requests queued behind it waiting, and how
# often it asks again (with a random pause of up to a second) before the import gives up.
LOCK_TIMEOUT_MS = 200
LOCK_ATTEMPTS = 300


class TableBusy(Exception):
    """Another transaction kept the contact table for every attempt to take it."""


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
    importer = Importer(conn, datetime.now(UTC), dry_run)
    importer.learn(records)
    for start in range(0, len(records), CHUNK_SIZE):
        chunk = records[start : start + CHUNK_SIZE]
        importer.apply(chunk)
        progress(start + len(chunk))
    return importer.totals


@dataclass
class Watch:
    """Whether anyone else may have written since the import last looked at the table.

    Writing takes a transaction id. When the only id handed out since the import last looked is
    the current chunk's own, and no other transaction was running then or is now, nobody else can
    have written: what the import knows still holds. Otherwise it forgets it all and reads again
    (slower, never wrong). Ids are the whole server's, so any write anywhere counts.
    """

    expected_xid: int | None = None
    clean: bool = False  # no other transaction was running when the import last looked

    def quiet(self, cur):
        """Under the gate: whether nobody else can have written since the last look."""
        cur.execute(QUERIES["import_watch"])
        xid, next_xid, others = cur.fetchone()
        quiet = self.clean and not others and xid == self.expected_xid and next_xid in (xid, xid + 1)
        self.expected_xid, self.clean = xid + 1, not others
        return quiet


@dataclass
class Importer:
    """One import's connection, its model of the table, and its totals."""

    conn: object
    started_at: datetime
    dry_run: bool
    model: Model = field(default_factory=Model)
    watch: Watch = field(default_factory=Watch)
    written_rows: int = 0
    next_analyze: int = ANALYZE_AFTER_ROWS
    totals: dict = field(default_factory=lambda: {"primaries": 0, "secondaries": 0, "merged": 0})

    @property
    def request_prefix(self):
        """The events' request id, less the record's line."""
        return f"import {self.started_at:%Y-%m-%dT%H:%M:%SZ} line "

    def learn(self, records):
        """Read, in one snapshot, the customers holding any of the records' values."""
        emails, phone_numbers = self.model.stale(records)
        with self.conn.cursor() as cur:
            cur.execute(QUERIES["import_snapshot"])
            next_xid, others, has_rows = cur.fetchone()
            rows = customers_holding(cur, emails, phone_numbers) if has_rows else []
        self.conn.rollback()
        self.model.refresh(rows, emails, phone_numbers)
        self.watch = Watch(next_xid, not others)

    def apply(self, records):
        """One chunk in its own transaction, asking again while the table is busy."""
        for _ in range(LOCK_ATTEMPTS):
            try:
                chunk = import_chunk(self.conn, records, self)
            except LockNotAvailable:
                self.conn.rollback()
                time.sleep(random.uniform(0, 1))  # random, so that two importers do not meet again
                continue
            except BaseException:
                self.conn.rollback()
                self.model, self.watch = Model(), Watch()  # the model may hold what never got written
                raise
            self.conn.commit()
            self.model.settle(chunk)
            self.totals = {name: self.totals[name] + chunk.counts[name] for name in self.totals}
            return
        raise TableBusy(f"the contact table stayed busy through {LOCK_ATTEMPTS} attempts to take it")

    def analyze_now(self, rows):
        """Whether the table has doubled since the last ANALYZE (PlannerStatistics' rule)."""
        self.written_rows += rows
        if self.written_rows < self.next_analyze:
            return False
        self.next_analyze = 2 * self.written_rows
        return True


def import_chunk(conn, records, importer):
    """One chunk in the caller's transaction, under the gate: read what is stale, replay, write."""
    model = importer.model
    with conn.cursor() as cur:
        cur.execute(QUERIES["import_gate"], {"lock_timeout_ms": LOCK_TIMEOUT_MS})
        if not importer.watch.quiet(cur):
            model.forget()
        emails, phone_numbers = model.stale(records)
        if emails or phone_numbers:
            model.refresh(customers_holding(cur, emails, phone_numbers), emails, phone_numbers)
        cur.execute(QUERIES["import_first_id"])
        (sequence_next,) = cur.fetchone()
        chunk = Chunk(max(sequence_next, model.next_id), importer.started_at, importer.request_prefix)
        model.replay(records, chunk)
        if importer.dry_run:
            cur.execute(QUERIES["import_next_id"], {"next_id": sequence_next})
        else:
            write(cur, model, chunk)
            if importer.analyze_now(chunk.next_id - chunk.first_id):
                cur.execute(QUERIES["import_analyze"])
    return chunk


def customers_holding(cur, emails, phone_numbers):
    """Every live row of the customers holding any of the values, as the table has them now."""
    cur.execute(QUERIES["import_customers_holding"], {"emails": emails, "phone_numbers": phone_numbers})
    return cur.fetchall()


def write(cur, model, chunk):
    """Stream the new rows and the events into the table; relink the existing rows the chunk moved."""
    cur.execute(QUERIES["import_next_id"], {"next_id": chunk.next_id})
    stamp = datetime.now(UTC).isoformat()
    cur.copy_expert(QUERIES["import_copy_contacts"], Lines(contact_lines(model.new_rows(chunk), stamp)))
    cur.copy_expert(QUERIES["import_copy_events"], Lines(event_lines(chunk.events)))
    relinks = model.relinks(chunk)
    if relinks:
        ids, linked_ids = zip(*relinks, strict=True)
        cur.execute(QUERIES["import_relink"], {"ids": list(ids), "linked_ids": list(linked_ids)})


class Lines:
    """A file to COPY from, made line by line as COPY reads it: the server stores while we format."""

    def __init__(self, lines):
        self.lines = lines

    def read(self, size=-1):
        """At least size characters (all that is left when fewer, or when size is negative)."""
        parts, length = [], 0
        for line in self.lines:
            parts.append(line)
            length += len(line)
            if 0 < size <= length:
                break
        return "".join(parts)


# COPY's text format: fields split by tabs, \N is null, and these characters escaped in a value.
NULL = "\\N"
COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_value(value):
    """A text value, or null, in COPY's text format."""
    return NULL if value is None else str(value).translate(COPY_ESCAPES)


def contact_lines(rows, stamp):
    """The new rows (id, email, phone number, linked id, created_at) as COPY's lines for contact."""
    for i, email, phone, linked, at in rows:
        yield (
            f"{i}\t{copy_value(email)}\t{copy_value(phone)}\t{copy_value(linked)}\t"
            f"{'primary' if linked is None else 'secondary'}\t{at.isoformat()}\t{stamp}\n"
        )


def event_lines(events):
    """The events (at, request id, kind, survivor, contact ids, email, phone) as COPY's lines."""
    for at, request, kind, survivor, ids, email, phone in events:
        yield (
            f"{at.isoformat()}\t{copy_value(request)}\t{kind}\t{survivor}\t{{{','.join(map(str, ids))}}}\t"
            f"{copy_value(email)}\t{copy_value(phone)}\n"
        )
