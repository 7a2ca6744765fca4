"""Blocked values: emails and phone numbers that never join customers, whoever sends them.

The list lives in the blocked_value table (sql/migrations/0005_blocked_value.sql). Each worker keeps
a compiled copy and, at most once a second, reads the table's version to learn of a change: so a
value blocked through the admin API or the CLI is honoured by every worker of every host within a
second, and a request pays a set lookup and the patterns' matches, not a query.

A blocked value is treated as absent: a request whose email is blocked is handled as if it carried
only its phone number, and one left with no usable value is refused with 422 blocked_value.
"""

import re
import threading
import time
from dataclasses import dataclass, field

from flask import current_app
from werkzeug.exceptions import UnprocessableEntity

from identity import db, repository
from identity.apidoc import ErrorExample

REFRESH_SECONDS = 1.0
EXTENSION = "identity_blocklist"
# The request's keys (as the schemas load them) and the kind of value each holds.
KINDS = {"email": "email", "phone_number": "phone"}


@dataclass(frozen=True)
class Entry:
    """One value of the recommended list."""

    kind: str
    value: str
    pattern: bool
    reason: str


# Conservative on purpose: each entry is a value no real customer holds. The task's own examples
# (123456, 919191, 717171) must never match one (tests/test_blocking.py checks every entry).
RECOMMENDED = (
    Entry("phone", r"\+?([0-9])\1{6,}", True, "One digit repeated, seven or more digits: a placeholder"),
    Entry("phone", "1234567890", False, "Digits in order: a placeholder"),
    Entry("phone", "0123456789", False, "Digits in order: a placeholder"),
    Entry("email", "test@test.com", False, "A placeholder address"),
    Entry("email", r"(noemail|none|na)@.+", True, "A placeholder for 'no address'"),
    Entry("email", r".+@(.+\.)?example\.(com|org|net)", True, "Reserved for examples (RFC 2606)"),
)


class BlockedValue(UnprocessableEntity):
    code_name = "blocked_value"
    description = "Every value the request carries is blocked, so it can link to no customer."


def blocked_item_message(index):
    """What a batch's 422 says when item index carried only blocked values."""
    return f"Item {index} carries only blocked values, so it can link to no customer; nothing was written."


BLOCKED = ErrorExample(
    422, "blocked_value", "Only blocked values", BlockedValue.code_name, BlockedValue.description
)


@dataclass(frozen=True)
class Blocklist:
    """A compiled copy of the list at one version: per kind, its exact values and its patterns."""

    version: int
    exact: dict = field(default_factory=lambda: {kind: frozenset() for kind in KINDS.values()})
    patterns: dict = field(default_factory=lambda: {kind: () for kind in KINDS.values()})

    def blocks(self, kind, value):
        """Whether value (normalised) of kind is blocked."""
        return value in self.exact[kind] or any(p.fullmatch(value) for p in self.patterns[kind])

    @property
    def empty(self):
        """Whether it blocks nothing at all (a fresh install's list)."""
        return not any(self.exact.values()) and not any(self.patterns.values())


# What re.compile gives a pattern without inline flags: one with them cannot join an alternation.
PLAIN_FLAGS = re.compile("").flags


def joinable(pattern):
    """Whether pattern fullmatches alone exactly what it fullmatches as a branch of an alternation.

    A pattern with groups is not: joined, its groups would be renumbered, and a backreference such
    as the recommended `([0-9])\\1{6,}` would name another. Nor is one with inline flags, which
    would then hold for every branch, or not compile inside a group at all.
    """
    compiled = re.compile(pattern)
    if compiled.groups or compiled.flags != PLAIN_FLAGS:
        return False
    try:
        re.compile(f"(?:{pattern})")
    except re.error:  # global flags that change nothing, such as (?u), are refused inside a group
        return False
    return True


def joined(patterns):
    """Compiled expressions that together fullmatch what the patterns do, with one call for most.

    fullmatch of `(?:a)|(?:b)` holds exactly when a or b fullmatches (the engine backtracks into the
    next branch), so each request pays one match for all the joinable patterns, not one per pattern.
    """
    plain = [pattern for pattern in patterns if joinable(pattern)]
    alone = [re.compile(pattern) for pattern in patterns if not joinable(pattern)]
    if len(plain) < 2:
        return tuple(re.compile(pattern) for pattern in patterns)
    return (re.compile("|".join(f"(?:{pattern})" for pattern in plain)), *alone)


def compiled(version, entries):
    """The Blocklist of the table's entries at version."""
    exact = {kind: set() for kind in KINDS.values()}
    patterns = {kind: [] for kind in KINDS.values()}
    for entry in entries:
        if entry["pattern"]:
            patterns[entry["kind"]].append(entry["value"])
        else:
            exact[entry["kind"]].add(entry["value"])
    return Blocklist(
        version,
        {kind: frozenset(values) for kind, values in exact.items()},
        {kind: joined(found) for kind, found in patterns.items()},
    )


class WorkerCopy:
    """This worker's copy of the list and when its version was last checked."""

    def __init__(self):
        self.blocklist = Blocklist(version=-1)
        self.checked_at = float("-inf")
        self.lock = threading.Lock()

    def current(self):
        """The list, re-read when its version moved; the version is read at most once a second."""
        if time.monotonic() - self.checked_at < REFRESH_SECONDS:
            return self.blocklist
        # One thread of the worker checks; the others go on with the copy they have meanwhile.
        if self.lock.acquire(blocking=False):
            try:
                self.refresh()
            finally:
                self.lock.release()
        return self.blocklist

    def refresh(self):
        """Read the version, and the whole list when it moved."""
        if db.run(repository.blocked_version) != self.blocklist.version:
            self.blocklist = compiled(*db.run(repository.blocked_values))
        self.checked_at = time.monotonic()


def changed():
    """This worker changed the list: its next request re-reads it rather than wait out the second."""
    current_app.extensions[EXTENSION].checked_at = float("-inf")


def usable(wanted):
    """wanted with its blocked values made absent; 422 blocked_value when it carried only those."""
    return usable_under(current_blocklist(), wanted)


def current_blocklist():
    """This worker's copy of the list, as current as the last second."""
    return current_app.extensions[EXTENSION].current()


def usable_under(blocklist, wanted):
    """usable(wanted) under blocklist: a batch looks the list up once for all its items.

    Written out for its two keys, without loops or generators: it runs on every request.
    """
    email, phone_number = wanted.get("email"), wanted.get("phone_number")
    if email is not None and blocklist.blocks("email", email):
        email = None
    if phone_number is not None and blocklist.blocks("phone", phone_number):
        phone_number = None
    if email is None and phone_number is None:
        raise BlockedValue()
    return {**wanted, "email": email, "phone_number": phone_number}


def init_app(app):
    """Give each worker its copy of the list, read on first use (after the fork)."""
    app.extensions[EXTENSION] = WorkerCopy()
