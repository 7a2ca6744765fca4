"""Replaying import records in memory with identify's rules, against the customers a chunk touches.

The rules are /identify's (0006_identify_v2.sql): a record matching no customer makes a primary; one
joining several customers merges them into the one whose primary is oldest (created_at, id); a
record carrying a value its customer lacks adds a secondary. Then, because an imported record may
be older than today's primary, each customer touched is given its oldest row as its primary, every
other row linked straight to it (never a chain). Limits per customer do not apply to imports.
Each new contact and each merge is recorded as an event, as identify_v2 records it, so the history
and the path of a customer (identity/explain.py) see imported links too.
"""

from dataclasses import dataclass, field
from functools import partial


@dataclass
class Row:
    """A contact: existing rows have their id; new ones a place in creation order until written."""

    key: tuple  # (0, id) for an existing row, (1, n) for the n-th new one: new ids come later
    email: str | None
    phone_number: str | None
    created_at: object
    primary: tuple | None = None  # the key of its primary; None for a primary
    was_primary: tuple | None = None  # what is stored now, for existing rows


@dataclass(frozen=True)
class Event:
    """A contact_event row to write, its contacts still keys until the new rows have ids."""

    kind: str
    survivor: tuple
    contacts: tuple
    values: tuple  # (email, phone number)
    at: object
    request_id: str


@dataclass
class Replay:
    """The customers of one chunk and what the chunk's records do to them."""

    rows: dict = field(default_factory=dict)  # key -> Row
    # value -> the key of a row of the customer holding it; that row's root is the customer's primary.
    email_owner: dict = field(default_factory=dict)
    phone_owner: dict = field(default_factory=dict)
    members: dict = field(default_factory=dict)  # primary key -> [row keys]
    created: int = 0
    events: list = field(default_factory=list)  # Event, in the order they happened
    counts: dict = field(default_factory=lambda: {"primaries": 0, "secondaries": 0, "merged": 0})

    def load(self, stored):
        """Add the stored rows: (id, email, phone number, primary id, created_at)."""
        for contact_id, email, phone_number, primary_id, created_at in stored:
            key, primary = (0, contact_id), (0, primary_id)
            linked = None if key == primary else primary
            self.rows[key] = Row(key, email, phone_number, created_at, linked, linked)
            self.members.setdefault(primary, []).append(key)
            self.own(email, phone_number, primary)

    def own(self, email, phone_number, primary):
        """Note that the customer of primary holds these values."""
        if email is not None:
            self.email_owner[email] = primary
        if phone_number is not None:
            self.phone_owner[phone_number] = primary

    def holders(self, email, phone_number):
        """(the primaries holding either value, whether they hold every value given)."""
        customers, knows_all = set(), True
        for value, owner in ((email, self.email_owner), (phone_number, self.phone_owner)):
            if value is not None:
                key = owner.get(value)
                if key is None:
                    knows_all = False
                else:
                    customers.add(self.root(key))
        return customers, knows_all

    def root(self, key):
        """The primary a row belongs to now."""
        row = self.rows[key]
        return key if row.primary is None else row.primary

    def apply(self, email, phone_number, created_at, request_id=None):
        """One record, as identify applies and records it."""
        customers, knows_all = self.holders(email, phone_number)
        if len(customers) == 1 and knows_all:
            return
        note = partial(self.note, (email, phone_number), created_at, request_id)
        if not customers:
            self.counts["primaries"] += 1
            new = self.add(email, phone_number, created_at, None)
            self.own(email, phone_number, new)
            note("created", new, [new])
            return
        survivor = self.merge_into_oldest(customers, note)
        if not knows_all:
            self.counts["secondaries"] += 1
            note("created", survivor, [self.add(email, phone_number, created_at, survivor), survivor])
        self.own(email, phone_number, survivor)

    def merge_into_oldest(self, customers, note):
        """Merge the customers into the one whose primary is oldest, noting the merge; the survivor."""
        survivor = min(customers, key=self.age)
        demoted = sorted(customers - {survivor})  # id order, as identify lists them: new keys after old
        for primary in demoted:
            self.merge(primary, survivor)
        if demoted:
            note("merged", survivor, [survivor, *demoted])
        return survivor

    def note(self, values, at, request_id, kind, survivor, contacts):
        """Record an event of the record with these values."""
        self.events.append(Event(kind, survivor, tuple(contacts), values, at, request_id))

    def age(self, key):
        """A row's place by age: created_at, then id."""
        return (self.rows[key].created_at, key)

    def add(self, email, phone_number, created_at, primary):
        """A new row, its key in creation order; returns the key."""
        self.created += 1
        key = (1, self.created)
        self.rows[key] = Row(key, email, phone_number, created_at, primary)
        self.members.setdefault(primary or key, []).append(key)
        return key

    def merge(self, demoted, survivor):
        """Link every row of demoted's customer straight to survivor."""
        self.counts["merged"] += 1
        for key in self.members.pop(demoted):
            self.rows[key].primary = survivor
            self.members[survivor].append(key)

    def oldest_primaries(self):
        """Give each customer its oldest row as primary."""
        for primary in list(self.members):
            oldest = min(self.members[primary], key=self.age)
            if oldest != primary:
                keys = self.members.pop(primary)
                self.members[oldest] = keys
                for key in keys:
                    self.rows[key].primary = None if key == oldest else oldest

    def changes(self, new_ids):
        """(rows to insert, [(id, linked id)] for existing rows relinked, events); new_ids ascending."""
        real = {(1, n): new_id for n, new_id in enumerate(new_ids, start=1)}
        real_id = lambda key: None if key is None else real.get(key, key[1])  # noqa: E731
        inserts, relinks = [], []
        for key, row in self.rows.items():
            linked = real_id(row.primary)
            if key[0] == 1:
                inserts.append((real[key], row.email, row.phone_number, linked, row.created_at))
            elif row.primary != row.was_primary:
                relinks.append((key[1], linked))
        inserts.sort()
        return inserts, relinks, [self.event_row(e, real_id) for e in self.events]

    @staticmethod
    def event_row(event, real_id):
        """An Event as contact_event's columns (at, request id, kind, survivor, contacts, email, phone)."""
        contacts = [real_id(key) for key in event.contacts]
        return (event.at, event.request_id, event.kind, real_id(event.survivor), contacts, *event.values)
