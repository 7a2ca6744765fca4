"""Rolling deploys: hosts of the previous release keep answering on a database this release migrated.

The previous release is read from git, from the repository the tests run in: its sql/ at
PREVIOUS_RELEASE. Its migrations and functions are applied as its own migrate applied them, then
this release's migrate runs, and the two releases' statements are called on the same data, each
reading what the other wrote and both taking the same locks.
"""

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import psycopg2
import pytest
from helpers import all_contacts, functions

from identity import repository
from identity.migrations import pending, setup_database
from identity.queries import parse, stem

# The release before functions had versions: its hosts call identify(), customer_json() and
# matching_customers(), which its own migrate re-created in place.
PREVIOUS_RELEASE = "d0a1fb3"
ROOT = Path(__file__).resolve().parent.parent
MISSING_HISTORY = (
    f"commit {PREVIOUS_RELEASE}, the previous release, is not in the history of the repository at {ROOT}; "
    "this test reads that release's sql/ from git. In a shallow clone run `git fetch --unshallow` "
    "(.ci/run does)."
)
SECONDS_TO_WAIT_FOR_A_LOCK = 30  # a bound on waiting for the other transaction, never asserted on


def git(*args):
    """The output of a git command run in the repository the tests run in."""
    command = ["git", "-C", str(ROOT), *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Release:
    """A release's SQL: numbered migrations, function files, and named statements."""

    migrations: list  # (version, text), in the order of their numbers
    functions: list  # texts of sql/functions/*.sql, in name order
    queries: dict  # every `-- name --` statement of the .sql files at the top of sql/

    @classmethod
    def from_git(cls, commit):
        """The release's sql/ as git holds it at commit."""
        paths = [PurePosixPath(path) for path in git("ls-tree", "-r", "--name-only", commit, "sql").split()]

        def texts(folder):
            return [
                (path.stem, git("show", f"{commit}:{path}"))
                for path in sorted(paths)
                if path.parent == PurePosixPath(folder) and path.suffix == ".sql"
            ]

        queries = {}
        for _, text in texts("sql"):
            queries.update(parse(text))
        return cls(texts("sql/migrations"), [text for _, text in texts("sql/functions")], queries)


@pytest.fixture(scope="module")
def previous():
    """The previous release's SQL; the test fails, saying how to fetch it, when git lacks it."""
    try:
        git("cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}")
    except (OSError, subprocess.CalledProcessError):
        pytest.fail(MISSING_HISTORY, pytrace=False)
    return Release.from_git(PREVIOUS_RELEASE)


def migrate_as(release, url):
    """Migrate as that release's migrate did: its pending numbered files, recorded, then every function."""
    statements = release.queries
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statements["lock_migrations"])
            cur.execute(statements["create_migration_table"])
            cur.execute(statements["applied_migrations"])
            applied = {version for (version,) in cur.fetchall()}
            for version, text in release.migrations:
                if version not in applied:
                    cur.execute(text)
                    cur.execute(statements["record_migration"], {"version": version})
            for text in release.functions:
                cur.execute(text)
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def upgraded_url(empty_database_url, previous):
    """A database the previous release created and migrated, then migrated by this release."""
    migrate_as(previous, empty_database_url)
    setup_database(empty_database_url)
    return empty_database_url


@pytest.fixture
def watcher(upgraded_url):
    """A connection of the test's own to the upgraded database, to look at its table and locks."""
    connection = psycopg2.connect(upgraded_url)
    connection.autocommit = True
    yield connection
    connection.close()


class PreviousReleaseHost:
    """A connection that talks as a host of the previous release: its own named statements."""

    def __init__(self, url, release, autocommit=True):
        self.queries = release.queries
        self.conn = psycopg2.connect(url)
        with self.conn.cursor() as cur:
            cur.execute(self.queries["prepare_identify"])
        self.conn.commit()
        self.conn.autocommit = autocommit

    def run(self, name, params):
        """The first row of a named statement, or None."""
        with self.conn.cursor() as cur:
            cur.execute(self.queries[name], params)
            return cur.fetchone()

    def identify(self, email, phone_number):
        """(contact, created, merged): its PREPAREd identify statement, EXECUTEd."""
        return self.run("identify", {"email": email, "phone_number": phone_number})

    def customer_of_contact(self, contact_id):
        """Its GET /contacts/{id} statement."""
        return self.first_value("customer_of_contact", {"contact_id": contact_id})

    def customer_with_identifier(self, email, phone_number):
        """Its GET /contacts?email=|phoneNumber= statement."""
        return self.first_value("customer_with_identifier", {"email": email, "phone_number": phone_number})

    def first_value(self, name, params):
        """The first column of the named statement's first row, or None without a row."""
        row = self.run(name, params)
        return None if row is None else row[0]


class ThisReleaseHost:
    """A connection that talks as a host of this release: through identity.repository."""

    def __init__(self, url, autocommit=True):
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = autocommit

    def identify(self, email, phone_number):
        """(contact, created, merged), as the previous release's host reads them."""
        outcome = repository.identify(self.conn, email, phone_number)
        return outcome.contact, outcome.created, outcome.merged

    def customer_of_contact(self, contact_id):
        """GET /contacts/{id}'s repository function."""
        return repository.customer_of_contact(self.conn, contact_id)

    def customer_with_identifier(self, email, phone_number):
        """GET /contacts?email=|phoneNumber='s repository function."""
        return repository.customer_with_identifier(self.conn, email, phone_number)


def customer(primary, emails, phones, secondaries):
    """A customer as both releases answer it."""
    return {
        "primaryContatctId": primary,
        "emails": emails,
        "phoneNumbers": phones,
        "secondaryContactIds": secondaries,
    }


LORRAINE_ALONE = customer(1, ["lorraine@hillvalley.edu"], ["123456"], [])
LORRAINE = customer(1, ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"], ["123456"], [2])
GEORGE_ALONE = customer(3, ["george@hillvalley.edu"], ["919191"], [])
BIFF_ALONE = customer(4, ["biffsucks@hillvalley.edu"], ["717171"], [])
GEORGE = customer(3, ["george@hillvalley.edu", "biffsucks@hillvalley.edu"], ["919191", "717171"], [4])

# The task's examples with lookups between them: (call, arguments, answer). The hosts take turns,
# so every write is followed by a read, or a write on top of it, from the other release.
STEPS = [
    ("identify", ("lorraine@hillvalley.edu", "123456"), (LORRAINE_ALONE, "primary", [])),
    ("customer_of_contact", (1,), LORRAINE_ALONE),
    ("identify", ("mcfly@hillvalley.edu", "123456"), (LORRAINE, "secondary", [])),
    ("customer_with_identifier", ("mcfly@hillvalley.edu", None), LORRAINE),
    ("customer_of_contact", (2,), LORRAINE),
    ("identify", (None, "123456"), (LORRAINE, None, [])),
    ("identify", ("george@hillvalley.edu", "919191"), (GEORGE_ALONE, "primary", [])),
    ("identify", ("biffsucks@hillvalley.edu", "717171"), (BIFF_ALONE, "primary", [])),
    ("identify", ("george@hillvalley.edu", "717171"), (GEORGE, None, [4])),
    ("customer_of_contact", (4,), GEORGE),
    ("customer_with_identifier", (None, "717171"), GEORGE),
    ("identify", ("biffsucks@hillvalley.edu", None), (GEORGE, None, [])),
    ("customer_with_identifier", ("lorraine@hillvalley.edu", None), LORRAINE),
]
FINAL_TABLE = [
    (1, "lorraine@hillvalley.edu", "123456", None, "primary"),
    (2, "mcfly@hillvalley.edu", "123456", 1, "secondary"),
    (3, "george@hillvalley.edu", "919191", None, "primary"),
    (4, "biffsucks@hillvalley.edu", "717171", 3, "secondary"),
]


def test_released_migrations_are_never_edited(previous):
    """A database migrated by the previous release must be the one a fresh migrate builds."""
    ours = {stem(path): path.read_text() for path in pending(set())}
    for version, text in previous.migrations:
        assert ours.get(version) == text, f"migration {version} differs from release {PREVIOUS_RELEASE}'s"


@pytest.fixture
def empty_database(empty_database_url):
    """A connection to an empty database of the test's own, to look at its catalog."""
    connection = psycopg2.connect(empty_database_url)
    connection.autocommit = True
    yield connection
    connection.close()


def test_the_upgrade_adds_versioned_functions_and_leaves_the_old_ones_alone(
    empty_database_url, empty_database, previous
):
    url, conn = empty_database_url, empty_database
    migrate_as(previous, url)
    before = functions(conn)
    assert {"identify", "customer_json", "matching_customers", "customer_contacts"} <= before.keys()

    ours = [stem(path) for path in pending(set())]
    new = [version for version in ours if version not in dict(previous.migrations)]
    assert new, "this release adds no migration, so there is no upgrade to test"
    assert setup_database(url) == new
    after = functions(conn)
    assert {name: after[name] for name in before} == before, "an old function was replaced"
    versioned = {name: written for name, written in after.items() if name not in before}
    assert [name for name in versioned if not re.search(r"_v[0-9]+$", name)] == [], "an unversioned name"
    assert {"identify_v1", "customer_json_v1", "matching_customers_v1", "customer_contacts_v1"} <= set(
        versioned
    )

    # An old host restarting mid-deploy runs its migrate again: it re-creates only its own functions.
    migrate_as(previous, url)
    assert setup_database(url) == []
    again = functions(conn)
    assert {name: again[name] for name in versioned} == versioned, "a versioned function was replaced"
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM schema_migration ORDER BY version")
        assert [version for (version,) in cur.fetchall()] == ours


@pytest.mark.parametrize("first", ["previous release", "this release"])
def test_both_releases_answer_alike_and_read_what_the_other_wrote(upgraded_url, previous, watcher, first):
    """The hosts take turns through the task's examples, so each reads and extends the other's writes."""
    old, new = PreviousReleaseHost(upgraded_url, previous), ThisReleaseHost(upgraded_url)
    hosts = [old, new] if first == "previous release" else [new, old]
    try:
        for number, (call, arguments, answer) in enumerate(STEPS):
            host = hosts[number % 2]
            assert getattr(host, call)(*arguments) == answer, (number, type(host).__name__, call, arguments)
    finally:
        old.conn.close()
        new.conn.close()
    rows = [
        tuple(row[key] for key in ("id", "email", "phone_number", "linked_id", "link_precedence"))
        for row in all_contacts(watcher)
    ]
    assert rows == FINAL_TABLE


def advisory_locks(conn, pid, granted):
    """The advisory lock keys a backend holds (granted) or waits for (not granted)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks"
            " WHERE locktype = 'advisory' AND objsubid = 1 AND pid = %s AND granted = %s",
            (pid, granted),
        )
        return [key for (key,) in cur.fetchall()]


def backend_pid(host):
    """The id of the server process behind a host's connection."""
    with host.conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def wait_for_lock_wait(conn, pid, answer):
    """The advisory keys backend pid waits for, once it waits; [] if its answer came without waiting."""
    for _ in range(SECONDS_TO_WAIT_FOR_A_LOCK * 100):
        waiting = advisory_locks(conn, pid, granted=False)
        if waiting or answer.done():
            return waiting
        wait([answer], timeout=0.01)
    return []


def identify_and_commit(host, request):
    """What host answers to request, committed."""
    answer = host.identify(*request)
    host.conn.commit()
    return answer


HOSTS = {
    "previous release": lambda url, release: PreviousReleaseHost(url, release, autocommit=False),
    "this release": lambda url, release: ThisReleaseHost(url, autocommit=False),
}
# (the holder's request, the waiter's request): one shares both values, the others one value each.
RACES = {
    "same email and phone": (("doc@hillvalley.edu", "555"), ("doc@hillvalley.edu", "555")),
    "same email": (("doc@hillvalley.edu", "555"), ("doc@hillvalley.edu", "888")),
    "same phone": (("doc@hillvalley.edu", "555"), ("marty@hillvalley.edu", "555")),
}


@pytest.mark.parametrize("race", RACES)
@pytest.mark.parametrize(
    ("holder_release", "waiter_release"),
    [("previous release", "this release"), ("this release", "previous release")],
)
def test_both_releases_take_the_same_locks_in_the_same_order(
    upgraded_url, previous, watcher, holder_release, waiter_release, race
):
    """A first order on one release holds its locks; the other release's request on a shared value waits."""
    holder_request, waiter_request = RACES[race]
    holder = HOSTS[holder_release](upgraded_url, previous)
    waiter = HOSTS[waiter_release](upgraded_url, previous)
    try:
        held_customer, created, _ = holder.identify(*holder_request)  # inserts a primary, uncommitted
        assert created == "primary"
        held = advisory_locks(watcher, backend_pid(holder), granted=True)
        waiter_pid = backend_pid(waiter)
        with ThreadPoolExecutor(max_workers=1) as executor:
            answer = executor.submit(identify_and_commit, waiter, waiter_request)
            try:
                waiting = wait_for_lock_wait(watcher, waiter_pid, answer)
            finally:
                holder.conn.commit()  # lets the waiter go, or the executor would wait for it forever
            contact, created, _ = answer.result(timeout=SECONDS_TO_WAIT_FOR_A_LOCK)
    finally:
        holder.conn.close()
        waiter.conn.close()

    # Waiting for a key the holder holds shows both releases hash the values alike; with both
    # values shared, waiting for the smaller key shows they take the keys in the same order.
    assert len(waiting) == 1 and waiting[0] in held, f"held {held}, the other release waited for {waiting}"
    if holder_request == waiter_request:
        assert waiting == [min(held)]
    assert contact["primaryContatctId"] == held_customer["primaryContatctId"]
    assert created == (None if holder_request == waiter_request else "secondary")
    primaries = [row for row in all_contacts(watcher) if row["link_precedence"] == "primary"]
    assert len(primaries) == 1, primaries
