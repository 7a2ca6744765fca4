"""Operator commands (flask --app wsgi): migrate, blocked, erase, renormalise, audit, import-contacts."""

import contextlib
import dataclasses
import gc
import getpass
import json
import sys
import time

import click
import psycopg2
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from marshmallow import ValidationError

from identity import blocking, db, erasure, importing, renormalise, repository
from identity.blocking import RECOMMENDED, REFRESH_SECONDS
from identity.import_records import UsageError, format_of, read_records, text_stream, write_rejects
from identity.migrations import setup_database
from identity.schemas import BlockedValueKey, BlockedValueRequest, ErasureQuery

blocked = AppGroup("blocked", help="The values that never link customers (README, 'Blocked values').")


# A plain progress line at most this often when stderr is no terminal.
PROGRESS_SECONDS = 5


@click.command("migrate")
@with_appcontext
def migrate_command():
    """Create the database if it is missing and apply pending migrations."""
    applied = setup_database(current_app.config["DATABASE_URL"])
    click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


def loaded(schema, **given):
    """What schema loads from given; its messages as a usage error."""
    try:
        return schema.load(given)
    except ValidationError as error:
        raise click.UsageError("; ".join(f"{k}: {' '.join(v)}" for k, v in error.messages.items())) from None


def guessed_kind(value, kind):
    """kind when given; else email for a value with an @, phone otherwise."""
    return kind or ("email" if "@" in value else "phone")


def describe(entry):
    """One line for an entry of the list."""
    shape = "pattern" if entry["pattern"] else "value"
    who = f"{entry['addedBy']}, {entry['addedAt']}"
    return f"{entry['kind']} {shape} {entry['value']!r}: {entry['reason']} ({who})"


KIND = click.option("--kind", type=click.Choice(["email", "phone"]), help="Guessed from VALUE when left out.")
PATTERN = click.option("--pattern", is_flag=True, help="VALUE is a regular expression matching whole values.")


@blocked.command("add")
@click.argument("value", required=False)
@KIND
@PATTERN
@click.option("--reason", help="Why; required with VALUE.")
@click.option(
    "--by", "added_by", default=lambda: f"cli {getpass.getuser()}", help="Who; default the OS user."
)
@click.option("--recommended", is_flag=True, help="Add the recommended list (README).")
@click.option("--unlink", is_flag=True, help="Then re-derive the customers VALUE joined (an exact value).")
def add_command(value, kind, pattern, reason, added_by, recommended, unlink):
    """Block VALUE (or, with --recommended, the recommended list)."""
    if bool(value) == recommended:
        raise click.UsageError("give a VALUE or --recommended, not both")
    if unlink and (pattern or recommended):
        raise click.UsageError("--unlink takes one exact VALUE, not a pattern or the recommended list")
    entries = (
        [vars(entry) for entry in RECOMMENDED]
        if recommended
        else [{"kind": guessed_kind(value, kind), "value": value, "pattern": pattern, "reason": reason}]
    )
    for entry in entries:
        wanted = loaded(BlockedValueRequest(), **{k: v for k, v in entry.items() if v is not None})
        added, new = db.run(repository.add_blocked_value, {**wanted, "added_by": added_by})
        click.echo(("blocked " if new else "already blocked ") + describe(added))
    if unlink:
        unlink_value(added, added_by)


# Twice the interval at which workers re-read the list: a request that read it just before the block
# has finished by then, so none links through the value again after the customers are re-derived.
UNLINK_WAIT_SECONDS = 2 * REFRESH_SECONDS


def unlink_value(entry, added_by):
    """Once every worker refuses the blocked value, re-derive its customers as if it were no evidence."""
    time.sleep(UNLINK_WAIT_SECONDS)
    email, phone_number = (entry["value"], None) if entry["kind"] == "email" else (None, entry["value"])
    customers = locking_many(repository.unlink_value, email, phone_number, added_by)
    primaries = ", ".join(str(customer["primaryContatctId"]) for customer in customers)
    click.echo(
        f"unlinked: its holders are {len(customers)} customer(s) now"
        + (f": {primaries}" if customers else "")
    )


@blocked.command("remove")
@click.argument("value")
@KIND
@PATTERN
def remove_command(value, kind, pattern):
    """Take VALUE off the list."""
    wanted = loaded(BlockedValueKey(), kind=guessed_kind(value, kind), value=value, pattern=pattern)
    removed = db.run(repository.remove_blocked_value, wanted)
    if removed is None:
        raise click.ClickException("not on the list")
    click.echo("unblocked " + describe(removed))


@blocked.command("list")
@click.option("--json", "as_json", is_flag=True, help="The list as the admin API answers it.")
def list_command(as_json):
    """Every blocked value and pattern."""
    version, entries = db.run(repository.blocked_values)
    if as_json:
        click.echo(json.dumps({"version": version, "blockedValues": entries}, indent=2))
        return
    for entry in entries:
        click.echo(describe(entry))
    click.echo(f"{len(entries)} blocked (version {version})")


@click.command("erase")
@click.option("--contact", "contact_id", type=click.IntRange(0), help="Erase this contact's customer.")
@click.option("--email", help="Erase this email everywhere.")
@click.option("--phone", help="Erase this phone number everywhere.")
@with_appcontext
def erase_command(contact_id, email, phone):
    """Erase a customer (--contact) or a value (--email, --phone); prints what the admin API answers."""
    if [contact_id, email, phone].count(None) != 2:
        raise click.UsageError("give exactly one of --contact, --email and --phone")
    by = f"cli {getpass.getuser()}"
    if contact_id is not None:
        erased = locking_many(repository.erase_customer, contact_id, by)
        if erased is None:
            raise click.ClickException("no contact has this id")
        click.echo(json.dumps(erasure.customer_erased(erased), indent=2))
        return
    wanted = loaded(ErasureQuery(), **({"email": email} if email is not None else {"phoneNumber": phone}))
    erased = locking_many(repository.erase_value, wanted.get("email"), wanted.get("phone_number"), by)
    click.echo(json.dumps(dataclasses.asdict(erased), indent=2))


def locking_many(work, *args):
    """db.run(work, *args), which locks every value of the customers it touches; too many is a clear error."""
    try:
        return db.run(work, *args)
    except psycopg2.errors.OutOfMemory as error:
        raise click.ClickException(
            f"{error.diag.message_primary}: the customers hold more values than the server's lock table "
            "fits; raise max_locks_per_transaction (README, 'Erasure and unlinking') and run it again"
        ) from None


@click.command("renormalise")
@click.option("--batch-size", type=click.IntRange(1), default=renormalise.BATCH_SIZE, show_default=True)
@with_appcontext
def renormalise_command(batch_size):
    """Rewrite stored emails and phone numbers in today's normal form, merging as /identify would."""
    counts = renormalise.renormalise(batch_size, lambda counts: click.echo(summary(counts), err=True))
    click.echo(summary(counts))


def summary(counts):
    """One line of counts."""
    names = ("read", "rewritten", "customers merged", "left as they are (refused now)")
    return ", ".join(f"{name}: {counts[name]}" for name in names)


@click.command("audit")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="As GET /admin/audit answers.")
@with_appcontext
def audit_command(limit, as_json):
    """The largest customers, the values that merged the most customers, the recent refused links."""
    found = db.run(repository.audit, limit)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    table(
        "Largest customers",
        ["primaryContactId", "contacts", "emails", "phoneNumbers"],
        found["largestCustomers"],
    )
    table(
        "Values that merged the most customers",
        ["kind", "value", "customersMerged"],
        found["mostJoiningValues"],
    )
    table("Recent refused links", ["at", "email", "phoneNumber", "reason"], found["recentRefusedLinks"])


def table(title, columns, rows):
    """rows as an aligned text table under title."""
    cells = [columns, *([str(row.get(column, "")) for column in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    click.echo(f"\n{title}" + ("" if rows else ": none"))
    for line in cells if rows else ():
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@click.command("import-contacts")
@click.argument("path")
@click.option("--format", "kind", type=click.Choice(["csv", "jsonl"]), help="Else from the extension.")
@click.option("--rejects", "rejects_path", help="Where bad records go; default: beside the input.")
@click.option("--allow-rejects", is_flag=True, help="Exit 0 even when records were rejected.")
@click.option("--dry-run", is_flag=True, help="Do everything but write.")
@click.option(
    "--events",
    type=click.Choice(["all", "merges"]),
    default="all",
    show_default=True,
    help="Record each new contact and each merge, as /identify does, or the merges alone (faster).",
)
@click.option(
    "--lock-tables",
    is_flag=True,
    help="One transaction holding the tables: faster into an empty table, but every request waits for it.",
)
@with_appcontext
def import_contacts_command(path, kind, rejects_path, allow_rejects, dry_run, events, lock_tables):
    """Reconcile a history of orders (CSV or JSON Lines, .gz, - for stdin) as /identify would have."""
    started = time.monotonic()
    with without_cycle_collection():
        records, rejects = read_input(path, kind)
        write_rejects(rejects, rejects_path or default_rejects_path(path))
        summary = importing.Summary(read=len(records) + len(rejects), rejected=len(rejects))
        conn = psycopg2.connect(current_app.config["DATABASE_URL"])
        try:
            with progress_reporter(len(records)) as progress:
                summary.counts, ways = importing.reconcile(
                    conn, records, dry_run, progress, creations=events == "all", hold=lock_tables
                )
        except importing.TablesInUse as error:
            raise click.ClickException(str(error)) from None
        finally:
            conn.close()
    summary.seconds = time.monotonic() - started
    # Whether it ran alone (README, "Importing"): stderr, as progress, so the summary line stays last.
    click.echo(f"chunks: {ways['ahead']} replayed ahead, {ways['careful']} the careful way", err=True)
    click.echo(("dry run, nothing written: " if dry_run else "") + summary.line())
    sys.exit(1 if rejects and not allow_rejects else 0)


@contextlib.contextmanager
def without_cycle_collection():
    """The cyclic garbage collector paused: an import makes millions of records, tuples and dict
    entries, none in a cycle, and the collector's passes over them took a third of its time.

    Then what is still alive goes to the oldest generation unexamined (freeze, then unfreeze): else
    the first collection after the import would pass over every record to find no cycle (0.65 s for
    a million), before they are freed.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        gc.enable()


def read_input(path, kind):
    """(records, rejects) of the input; a file that cannot be read at all is a usage error (exit 2)."""
    try:
        kind = format_of(path, kind)
        with text_stream(path) as stream:
            blocklist = blocking.current_blocklist()
            return read_records(stream, kind, current_app.config["PHONE_REGION"], blocklist)
    except (UsageError, OSError, UnicodeDecodeError) as error:
        raise click.UsageError(str(error)) from None


def default_rejects_path(path):
    """Beside the input: orders.csv.gz gives orders.csv.gz.rejects.csv; stdin gives import.rejects.csv."""
    return "import.rejects.csv" if path == "-" else f"{path}.rejects.csv"


@contextlib.contextmanager
def progress_reporter(total):
    """progress(done): a bar with records/s and time left on a terminal, else a line at most every 5 s."""
    started, last = time.monotonic(), [time.monotonic()]
    if sys.stderr.isatty():
        rate = lambda done: done and f"{done / max(time.monotonic() - started, 1e-9):.0f} records/s"  # noqa: E731
        with click.progressbar(
            length=total, label="importing", show_pos=True, item_show_func=rate, file=sys.stderr
        ) as bar:
            yield lambda done: bar.update(done - bar.pos, current_item=done)
        return

    def line(done):
        if time.monotonic() - last[0] >= PROGRESS_SECONDS or done == total:
            last[0] = time.monotonic()
            rate = done / max(last[0] - started, 1e-9)
            click.echo(f"imported {done} of {total} records, {rate:.0f} records/s", err=True)

    yield line


def init_app(app):
    """Register the commands on the app's CLI."""
    app.cli.add_command(migrate_command)
    app.cli.add_command(blocked)
    app.cli.add_command(erase_command)
    app.cli.add_command(renormalise_command)
    app.cli.add_command(audit_command)
    app.cli.add_command(import_contacts_command)
