"""What the import knows of the contact table, and its records replayed on it with identify's rules.

The rules are /identify's (0006_identify_v2.sql): a record matching no customer makes a primary; one
joining several customers merges them into the one whose primary is oldest (created_at, id); a
record carrying a value its customer lacks adds a secondary. Then, because an imported record may
be older than today's primary, each customer a chunk touched is given its oldest row as its primary,
every other row linked straight to it (never a chain). Limits per customer do not apply to imports.
Each new contact and each merge is recorded as an event, as identify_v2 records it, so the history
and the path of a customer (identity/explain.py) see imported links too; an operator may have the
merges alone recorded (`--events merges`, README "Importing").

A model holds the rows of every customer holding one of the values it was loaded for, as the table
has them, and so knows who holds each of those values, or that nobody does: identity.importing
loads one for the whole file while the import runs alone, and one per chunk the careful way. New
rows get their real ids as they are made, from ids the chunk has from the table's sequence.
"""

from dataclasses import dataclass, field


@dataclass
class Chunk:
    """What one chunk's records did: its new rows, the customers it changed, its events."""

    first_id: int  # no new row's id is lower, and every stored row's is
    ids: object  # the ids for its new rows, ascending
    started_at: object  # the time of records without createdAt
    request_prefix: str  # each event's request id is this and the record's line
    creations: bool = True  # whether each new contact is recorded (merges always are)
    new_ids: list = field(default_factory=list)
    touched: set = field(default_factory=set)
    # ((created_at as text, request id, email, phone number), kind, survivor, contact ids)
    events: list = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {"primaries": 0, "secondaries": 0, "merged": 0})
    at_text: dict = field(default_factory=dict)  # new row id -> its created_at in ISO 8601, made once
    relinks: list = field(default_factory=list)  # (id, linked id or None) of stored rows it moved
    lines: tuple = ()  # (the new rows, the events) as COPY's input

    @property
    def next_id(self):
        """The first id the chunk left unused, of a run of ids from first_id."""
        return self.new_ids[-1] + 1 if self.new_ids else self.first_id


@dataclass
class Model:
    """The customers holding the values it was loaded for, row by row, as the table has them."""

    # value -> the primary of the customer holding it: a record's customers in one lookup per value
    email_customer: dict = field(default_factory=dict)
    phone_customer: dict = field(default_factory=dict)
    primary_of: dict = field(default_factory=dict)  # row id -> its primary's id (its own for a primary)
    stored: dict = field(default_factory=dict)  # row id -> the primary id the table has for it
    created_at: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)  # row id -> (email, phone number)
    members: dict = field(default_factory=dict)  # primary id -> [row ids]
    next_id: int = 1  # past every id the model holds

    def load(self, rows):
        """The rows as the table has them: (id, email, phone number, primary id, created_at)."""
        for row, email, phone_number, primary, created_at in rows:
            self.add(row, email, phone_number, primary, created_at)
            self.stored[row] = primary
            self.next_id = max(self.next_id, row + 1)

    def add(self, row, email, phone_number, primary, created_at):
        """A row of primary's customer, holding its values."""
        self.primary_of[row] = primary
        self.created_at[row] = created_at
        self.values[row] = (email, phone_number)
        self.members.setdefault(primary, []).append(row)
        self.hold(row, primary)

    def hold(self, row, primary):
        """Note that primary's customer holds row's values."""
        email, phone_number = self.values[row]
        if email is not None:
            self.email_customer[email] = primary
        if phone_number is not None:
            self.phone_customer[phone_number] = primary

    def replay(self, records, chunk):
        """Apply the records in order, as identify would, then give each touched customer its oldest row."""
        for record in records:
            self.apply(record, chunk)
        self.oldest_primaries(chunk)
        chunk.relinks = self.relinks(chunk)
        self.next_id = max(self.next_id, chunk.next_id)

    def apply(self, record, chunk):
        """One record, as identify applies and records it."""
        email, phone = record.email, record.phone_number
        by_email, by_phone = self.email_customer.get(email), self.phone_customer.get(phone)
        knows_all = (email is None or by_email is not None) and (phone is None or by_phone is not None)
        if knows_all and (by_email is None or by_phone is None or by_email == by_phone):
            return  # one customer already holds every value: nothing changes, nothing is recorded
        request_id = f"{chunk.request_prefix}{record.line}"
        at = record.created_at or chunk.started_at
        event = (at.isoformat(), request_id, email, phone)
        if by_email is None and by_phone is None:
            new = self.new_row(chunk, email, phone, None, at, event)
            chunk.counts["primaries"] += 1
            if chunk.creations:
                chunk.events.append((event, "created", new, (new,)))
            return
        survivor = self.merge(chunk, by_email, by_phone, event)
        if not knows_all:
            new = self.new_row(chunk, email, phone, survivor, at, event)
            chunk.counts["secondaries"] += 1
            if chunk.creations:
                chunk.events.append((event, "created", survivor, (new, survivor)))

    def merge(self, chunk, first, second, event):
        """Join the two customers (either may be None, or both the same) into the older; the survivor."""
        if first is None or second is None or first == second:
            survivor = first if second is None else second
            chunk.touched.add(survivor)
            return survivor
        survivor, demoted = sorted((first, second), key=self.age)
        self.move(self.members[demoted], survivor)
        self.members[survivor].extend(self.members.pop(demoted))
        chunk.touched.discard(demoted)
        chunk.touched.add(survivor)
        chunk.counts["merged"] += 1
        chunk.events.append((event, "merged", survivor, (survivor, demoted)))
        return survivor

    def age(self, row):
        """A row's place by age: created_at, then id."""
        return (self.created_at[row], row)

    def new_row(self, chunk, email, phone_number, primary, created_at, event):
        """A new row of the record the event notes, with the next id; a primary if primary is None."""
        row = next(chunk.ids)
        chunk.new_ids.append(row)
        chunk.at_text[row] = event[0]
        self.add(row, email, phone_number, row if primary is None else primary, created_at)
        chunk.touched.add(row if primary is None else primary)
        return row

    def oldest_primaries(self, chunk):
        """Give each customer the chunk touched its oldest row as primary."""
        for primary in list(chunk.touched):
            rows = self.members[primary]
            oldest = min(rows, key=self.age)
            if oldest != primary:
                self.members[oldest] = self.members.pop(primary)
                self.move(rows, oldest)
                chunk.touched.discard(primary)
                chunk.touched.add(oldest)

    def move(self, rows, primary):
        """Make primary the primary of the rows, and of their values."""
        for row in rows:
            self.primary_of[row] = primary
            self.hold(row, primary)

    def new_rows(self, chunk):
        """The chunk's new rows in id order: (id, email, phone number, linked id or None, created_at text)."""
        for row in chunk.new_ids:
            primary = self.primary_of[row]
            yield (row, *self.values[row], None if primary == row else primary, chunk.at_text[row])

    def relinks(self, chunk):
        """[(id, linked id or None)] of the rows stored before the chunk whose primary it changed."""
        return [
            (row, None if self.primary_of[row] == row else self.primary_of[row])
            for primary in chunk.touched
            for row in self.members[primary]
            if row < chunk.first_id and self.primary_of[row] != self.stored[row]
        ]

    def settle(self, chunk):
        """The chunk is in the table (or, in a dry run, taken as if it were)."""
        for primary in chunk.touched:
            for row in self.members[primary]:
                self.stored[row] = self.primary_of[row]
