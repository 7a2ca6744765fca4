"""`flask import-contacts`: a history of records reconciled chunk by chunk, as /identify would have.

Design (README, "Importing"): the file is read and normalised in Python (identity.import_records)
and sorted into the order the records apply. One snapshot then reads the customers holding any of
the file's values into a model of the table (identity.import_replay). While the import runs alone,
each chunk is replayed ahead on that model and written by a thread under the gate (ACCESS
EXCLUSIVE, sql/import.sql says why), once transaction ids show nobody else wrote since the last
look (Watch). From the first sign of another writer on, chunks go in the careful way: each one's
customers locked and read as identify locks them, then replayed and written; once enough careful
chunks in a row saw nobody else write, the import learns the table afresh and replays ahead
again (go_ahead_again). Records already
known write nothing, so a second import, or one re-run after a kill, completes without doubling
anything. With --lock-tables (the operator's choice: every request waits) the whole import is one
transaction holding the tables, and into an empty table their indexes are built once at the end.
"""

import contextlib
import io
import itertools
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from psycopg2.errors import DeadlockDetected, LockNotAvailable

from identity.import_replay import Chunk, Model
from identity.queries import QUERIES
from identity.retrying import retrying

# Records per chunk: a chunk replayed ahead holds the table only to write (about 60 ms on the
# benchmark machine, README "Importing"), and a million records take a hundred chunks.
CHUNK_SIZE = 10_000
# Chunks applied the careful way, beside other writers: 2,000 records take at most 4,000 advisory
# locks, inside a default server's shared lock table (max_locks_per_transaction 64 x
# max_connections 100 = 6,400 entries), with room for the requests served beside them.
CAREFUL_CHUNK_SIZE = 2_000
# Careful chunks in a row during which nobody else wrote, after which the import learns the table
# afresh and replays ahead again (a report that held the table a moment need not slow all the rest);
# twice as many after each return, so that sparse traffic cannot make it learn the table over and over.
CALM_CHUNKS = 3
# The first ANALYZE of a table careful chunks fill (Importer.analyze_now).
ANALYZE_AFTER_ROWS = 10_000
# How long a chunk replayed ahead may wait for the table, keeping the requests queued behind its
# request waiting too; past it (a long report holds the table) the careful way takes over.
LOCK_TIMEOUT_MS = 200
# COPY sends the chunk's text in pieces this large: each piece is a moment the writer thread needs
# the GIL, which the replaying thread may hold for up to the switch interval (quick_turns).
COPY_PIECE = 1 << 20
SWITCH_INTERVAL = 0.0001


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


def reconcile(conn, records, dry_run=False, progress=lambda done: None, creations=True, hold=False):
    """Apply the records in order, a chunk per transaction; (the counts of what they did, the chunks
    replayed ahead and applied the careful way). Each new contact is recorded as an event unless
    creations is false (merges always are).

    While one chunk is being written (by a thread, which waits on the server with the GIL released),
    the next is replayed ahead, on the model as the written one leaves it. If the writer finds that
    someone else wrote in between, both are applied again, and every chunk after them, the careful
    way (import_chunk). With hold (--lock-tables) the whole import is one transaction holding the
    tables (apply_held). A dry run replays it all on the snapshot learnt at the start.
    """
    importer = Importer(conn, datetime.now(UTC), creations)
    if hold and not dry_run:
        importer.hold_tables(records)
        importer.apply_held(records, progress)
        return importer.totals, importer.ways
    importer.learn(records)
    if dry_run:
        importer.replay_all(records, progress)
    else:
        importer.apply_all(records, progress)
        importer.analyze_if_grown()
    return importer.totals, importer.ways


class TablesInUse(Exception):
    """--lock-tables could not take the tables within LOCK_TIMEOUT_MS."""


@dataclass
class Watch:
    """Whether anyone else may have written since the import last looked at the table.

    Writing takes a transaction id. When the only id handed out since the import last looked is
    the current chunk's own, and no other transaction was running then or is now, nobody else can
    have written: what the import knows still holds. Otherwise the careful way takes over (slower,
    never wrong). Ids are the whole server's, so any write anywhere counts.
    """

    expected_xid: int | None = None
    clean: bool = False  # no other transaction was running when the import last looked

    def quiet(self, xid, next_xid, others):
        """Whether nobody else can have written since the last look, from what the gate saw."""
        quiet = self.clean and not others and xid == self.expected_xid and next_xid in (xid, xid + 1)
        self.expected_xid, self.clean = xid + 1, not others
        return quiet


@dataclass
class Importer:
    """One import's connection, its model of the table, and its totals."""

    conn: object
    started_at: datetime
    creations: bool  # whether each new contact is recorded as an event (merges always are)
    model: Model = field(default_factory=Model)
    watch: Watch = field(default_factory=Watch)
    careful: bool = False  # from the first sign of another writer on, chunks go the careful way...
    calm_chunks: int = 0  # ...until enough careful chunks in a row saw nobody else write (calm_needed)
    returns: int = 0  # times the import went back to replaying ahead
    last_look: tuple | None = None  # (next transaction id, anyone running) after the last careful chunk
    written_rows: int = 0
    analyzed_rows: int = 0  # written when the import last ran ANALYZE
    totals: dict = field(default_factory=lambda: {"primaries": 0, "secondaries": 0, "merged": 0})
    ways: dict = field(default_factory=lambda: {"ahead": 0, "careful": 0})  # chunks, by how they went in

    @property
    def chunk_size(self):
        """Records in the next chunk: fewer once chunks are applied the careful way."""
        return min(CHUNK_SIZE, CAREFUL_CHUNK_SIZE) if self.careful else CHUNK_SIZE

    @property
    def event_source(self):
        """(the time of records without createdAt, the events' request id less the record's line, whether
        new contacts are recorded)."""
        return self.started_at, f"import {self.started_at:%Y-%m-%dT%H:%M:%SZ} line ", self.creations

    def learn(self, records):
        """A fresh model, in one snapshot, of the customers holding any of the records' values (model_of),
        and the transaction ids the gate will compare with (Watch)."""
        with self.conn.cursor() as cur:
            cur.execute(QUERIES["import_snapshot"])
            next_xid, others, has_rows, next_id = cur.fetchone()
            self.model = model_of(cur, records, has_rows, next_id)
        self.conn.rollback()
        self.watch = Watch(next_xid, not others)

    def hold_tables(self, records):
        """Take both tables for the import's one transaction, then model what they hold (model_of); into
        a table with no live row, the indexes that enforce nothing are set aside (sql/import.sql)."""
        with self.conn.cursor() as cur:
            try:
                cur.execute(QUERIES["import_hold"], {"lock_timeout_ms": LOCK_TIMEOUT_MS})
            except (LockNotAvailable, DeadlockDetected):
                self.conn.rollback()
                raise TablesInUse(
                    f"could not take the tables within {LOCK_TIMEOUT_MS} ms: another transaction holds them"
                    " (a long report?); run again, or import without --lock-tables"
                ) from None
            has_rows, next_id = cur.fetchone()
            self.model = model_of(cur, records, has_rows, next_id)
            if not has_rows:
                cur.execute(QUERIES["import_set_aside"])

    def apply_held(self, records, progress):
        """Every chunk replayed ahead and written in the held transaction, the writer a chunk behind;
        then the indexes built again and one commit (finish_held), while the records and the model are
        freed (half a second for a million records, hidden behind the build): records is left empty."""
        total = len(records)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-writer") as writer, quick_turns():
            in_flight = None  # the write of the chunk before
            for start in range(0, total, CHUNK_SIZE):
                chunk = self.replay_ahead(records[start : start + CHUNK_SIZE])
                if in_flight:
                    self.count(in_flight.result(), "ahead")
                in_flight = writer.submit(write_held, self.conn, chunk, self)
                progress(start)
            if in_flight:
                self.count(in_flight.result(), "ahead")
            last_id = self.model.next_id - 1 if self.written_rows else None
            finished = writer.submit(finish_held, self.conn, last_id)
            release(records)
            self.model = Model()
            finished.result()
        progress(total)

    def apply_all(self, records, progress):
        """Every chunk, each replayed ahead while the one before is written, else the careful way."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-writer") as writer, quick_turns():
            in_flight = None  # (records, the write's future)
            start = 0
            while start < len(records):
                if self.careful and self.calm_chunks >= self.calm_needed:
                    self.go_ahead_again(records[start:])
                batch = records[start : start + self.chunk_size]
                start += len(batch)
                ahead = None if self.careful else self.replay_ahead(batch)
                if in_flight and not self.written(*in_flight):
                    ahead = None  # replayed on what the table turned out not to be
                if ahead is None:
                    self.apply(batch)
                    in_flight = None
                else:
                    in_flight = (batch, writer.submit(write_chunk, self.conn, ahead, self))
                progress(start - len(batch))
            if in_flight:
                self.written(*in_flight)
        progress(len(records))

    def replay_ahead(self, records):
        """The chunk replayed on the model as the chunks before it leave it, ids following theirs."""
        first = self.model.next_id
        chunk = replayed(self.model, records, Chunk(first, itertools.count(first), *self.event_source))
        self.model.settle(chunk)  # as if written: the next chunk is replayed on top of it
        return chunk

    def written(self, records, write):
        """Whether the write in flight went in as replayed; if not, the records are applied again."""
        try:
            chunk = write.result()
        except BaseException:
            self.go_careful()
            raise
        if chunk is None:
            self.go_careful()
            self.apply(records)
            return False
        self.count(chunk, "ahead")
        return True

    def go_careful(self):
        """Roll back; drop the model, which holds what was replayed but never written; be careful."""
        self.conn.rollback()
        self.model, self.careful = Model(), True

    @property
    def calm_needed(self):
        """Calm careful chunks in a row before the import goes back to replaying ahead: 3, 6, 12..."""
        return CALM_CHUNKS << self.returns

    def go_ahead_again(self, records):
        """Learn the table afresh for the records left, and replay ahead again if nobody else was running
        then; the gate checks every chunk as before, and the first sign of another writer ends it."""
        self.calm_chunks, self.last_look = 0, None
        self.returns += 1
        self.learn(records)
        self.careful = not self.watch.clean

    def apply(self, records):
        """Records applied the careful way, a chunk at a time, each followed by a look at who else writes."""
        for start in range(0, len(records), self.chunk_size):
            chunk = retrying(self.conn, import_chunk, records[start : start + self.chunk_size], self)
            self.count(chunk, "careful")
            self.calm_chunks = self.calm_chunks + 1 if self.calm_since_last_look() else 0

    def calm_since_last_look(self):
        """Whether nobody else wrote since the last look, before the chunk just written: no one was
        running at either look, and no transaction id but the chunk's own was handed out."""
        with self.conn.cursor() as cur:
            cur.execute(QUERIES["import_look"])
            look = cur.fetchone()
        self.conn.rollback()
        last, self.last_look = self.last_look, look
        return last is not None and not last[1] and not look[1] and look[0] - last[0] <= 1

    def replay_all(self, records, progress):
        """A dry run: every chunk replayed on the model of the table learnt at the start."""
        for start in range(0, len(records), CHUNK_SIZE):
            self.count(self.replay_ahead(records[start : start + CHUNK_SIZE]), "ahead")
            progress(start)
        progress(len(records))

    def count(self, chunk, way):
        """Add what a written chunk did to the totals, and the way it went in."""
        self.totals = {name: self.totals[name] + chunk.counts[name] for name in self.totals}
        self.ways[way] += 1

    def analyze_if_grown(self):
        """ANALYZE, in a transaction of its own, if rows were written since the last one."""
        if self.written_rows > self.analyzed_rows:
            with self.conn.cursor() as cur:
                cur.execute(QUERIES["import_analyze"])
            self.conn.commit()

    def analyze_now(self, rows):
        """Note rows written; whether a careful chunk should ANALYZE, the table doubled since the last.

        The careful way reads the table per chunk and needs the planner to know it has grown (with
        autovacuum off or late, its lookups became scans: a third of the speed). Chunks written
        ahead read nothing: their import runs one ANALYZE at the end (about 0.1 s at 400,000 rows).
        """
        self.written_rows += rows
        if not self.careful or self.written_rows < max(ANALYZE_AFTER_ROWS, 2 * self.analyzed_rows):
            return False
        self.analyzed_rows = self.written_rows
        return True


@contextlib.contextmanager
def quick_turns():
    """The GIL handed over within SWITCH_INTERVAL, not the default 5 ms: the writer thread needs it a
    moment per statement and per COPY piece, and the server idles while it waits (a million records
    into an empty table: 10.6 s -> 8.2 s of reconciling, README "Importing")."""
    default = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(default)


def import_chunk(conn, records, importer):
    """One chunk in the caller's transaction, the careful way, beside other writers: its customers
    locked and read as identify locks them (0011_import_customers_v1.sql), replayed on a model of
    them alone, written with ids from the sequence."""
    model = Model()
    with conn.cursor() as cur:
        cur.execute(QUERIES["import_customers"], value_params(records))
        model.load(cur.fetchall())
        # Ascending, and above every row read; those the chunk does not use are never used.
        cur.execute(QUERIES["import_new_ids"], {"n": len(records)})
        ids = [row[0] for row in cur.fetchall()]
        chunk = replayed(model, records, Chunk(ids[0], iter(ids), *importer.event_source))
        store(cur, chunk, importer)
    return chunk


def replayed(model, records, chunk):
    """The chunk, its records replayed on the model and its rows and events made COPY's input."""
    model.replay(records, chunk)
    chunk.lines = (contact_text(model, chunk), event_text(chunk.events))
    return chunk


def write_chunk(conn, chunk, importer):
    """The writer thread: a chunk replayed ahead, written and committed; None, rolled back, if the
    table was not the import's to take within lock_timeout, or it was replayed on what is no longer
    so (someone else wrote, or took ids, since). Either way the careful way takes over."""
    with conn.cursor() as cur:
        try:
            cur.execute(QUERIES["import_gate"], {"lock_timeout_ms": LOCK_TIMEOUT_MS})
        except LockNotAvailable:
            conn.rollback()
            return None
        xid, next_xid, others, sequence_next = cur.fetchone()
        if not importer.watch.quiet(xid, next_xid, others) or sequence_next > chunk.first_id:
            conn.rollback()
            return None
        if chunk.new_ids:
            cur.execute(QUERIES["import_last_id"], {"last_id": chunk.new_ids[-1]})
        store(cur, chunk, importer)
    conn.commit()
    return chunk


def write_held(conn, chunk, importer):
    """The writer thread, --lock-tables: a chunk written in the held transaction, not committed."""
    with conn.cursor() as cur:
        store(cur, chunk, importer)
    return chunk


def finish_held(conn, last_id):
    """The writer thread, --lock-tables: the indexes set aside built again, the sequence moved past
    last_id (None: no new row), the planner told what the table now holds, and the one commit."""
    with conn.cursor() as cur:
        if last_id is not None:
            cur.execute(QUERIES["import_last_id"], {"last_id": last_id})
        cur.execute(QUERIES["import_rebuild"])
        cur.execute(QUERIES["import_analyze"])
    conn.commit()


def release(records):
    """Empty the list a chunk at a time: between the pieces the writer thread can take the GIL to send
    its statement (freeing a million records at once would hold it for half a second)."""
    while records:
        del records[-CHUNK_SIZE:]


def model_of(cur, records, has_rows, next_id):
    """A model of the table with the customers holding any of the records' values, as it has them now;
    a table with no live row holds none of them, so the empty model already knows it all. New ids start
    at next_id, the sequence's next, or past every row loaded."""
    model = Model()
    if has_rows:
        cur.execute(QUERIES["import_customers_holding"], value_lines(records))
        model.load(cur.fetchall())
    model.next_id = max(model.next_id, next_id)
    return model


def value_lines(records):
    """The records' distinct emails and phone numbers, each kind one text of a value a line, as
    import_customers_holding takes them. No normal value holds a line break: an email has no white
    space, a phone number only digits and a +."""
    return {kind: "\n".join(values) for kind, values in value_params(records).items()}


def value_params(records):
    """The records' distinct emails and phone numbers, as the import's queries take them."""
    emails = {record.email for record in records if record.email is not None}
    phone_numbers = {record.phone_number for record in records if record.phone_number is not None}
    return {"emails": list(emails), "phone_numbers": list(phone_numbers)}


def store(cur, chunk, importer):
    """Stream the chunk's rows and events into the table and relink the rows it moved.

    A COPY with nothing to send is not sent: a file imported again makes neither rows nor events,
    and with --events merges most chunks record no event.
    """
    for query, text in zip(("import_copy_contacts", "import_copy_events"), chunk.lines, strict=True):
        if text:
            cur.copy_expert(QUERIES[query], io.StringIO(text), COPY_PIECE)
    if chunk.relinks:
        ids, linked_ids = zip(*chunk.relinks, strict=True)
        cur.execute(QUERIES["import_relink"], {"ids": list(ids), "linked_ids": list(linked_ids)})
    if importer.analyze_now(len(chunk.new_ids)):
        cur.execute(QUERIES["import_analyze"])


# COPY's text format: fields split by tabs, \N is null, and these characters escaped in a value.
NULL = "\\N"
COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_value(value):
    """A text value, or null, in COPY's text format; a value needing no escape (most) is not rebuilt."""
    if value is None:
        return NULL
    # No printable character but the backslash needs an escape: one C-speed test clears most values.
    return value if value.isprintable() and "\\" not in value else value.translate(COPY_ESCAPES)


def contact_text(model, chunk):
    """The chunk's new rows as COPY's input for contact."""
    stamp = datetime.now(UTC).isoformat()
    return "".join(
        f"{i}\t{copy_value(email)}\t{copy_value(phone)}\t{NULL if linked is None else linked}\t"
        f"{'primary' if linked is None else 'secondary'}\t{at}\t{stamp}\n"
        for i, email, phone, linked, at in model.new_rows(chunk)
    )


def event_text(events):
    """The chunk's events as COPY's input for contact_event."""
    return "".join(
        f"{at}\t{request_id}\t{kind}\t{survivor}\t{{{','.join(map(str, ids))}}}\t"
        f"{copy_value(email)}\t{copy_value(phone)}\n"
        for (at, request_id, email, phone), kind, survivor, ids in events
    )
