"""Reading an import file: CSV or JSON Lines (optionally gzipped, or standard input) into records.

Each record is normalised by the very functions /identify's schema uses (identity.schemas), called
directly because a schema per record is too slow for a history of millions. A bad record is never
dropped silently: it comes out as a Reject with its line number, its raw line and the reason.
Records are ordered as the import applies them: by createdAt, ties and records without one in file
order, those without one after every timed one.
"""

import csv
import gzip
import io
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import NamedTuple

from marshmallow import ValidationError

from identity.blocking import BlockedValue, usable_under
from identity.schemas import normal_values

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
REQUIRED_COLUMNS = ("email", "phoneNumber")


class UsageError(ValueError):
    """The file cannot be imported at all (unknown format, a CSV header without the columns)."""


class Record(NamedTuple):
    """One record to apply: its line, normalised values and createdAt (None when it has none).

    A named tuple, not a dataclass: a million of them are made, and a tuple is made fastest.
    """

    line: int
    email: str | None
    phone_number: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class Reject:
    """A record skipped: where, what it was (a JSON line, or a CSV row as a list), and why."""

    line: int
    source: str | list
    reason: str

    @property
    def raw(self):
        """The record's raw line."""
        return self.source if isinstance(self.source, str) else csv_line(self.source)


def format_of(path, given=None):
    """The format to read: given (--format), else the extension's, before any .gz."""
    if given:
        return given
    name = path.removesuffix(".gz")
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise UsageError(f"cannot tell the format of {path!r}: name it .csv, .jsonl or .ndjson, or give --format")


def text_stream(path):
    """The file as text (UTF-8, a BOM dropped), gunzipped when it is gzip; '-' is standard input."""
    raw = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 - the caller closes it
    if not hasattr(raw, "peek"):
        raw = io.BufferedReader(raw)  # a stdin that cannot peek (a test runner's) is given a buffer
    # gzip is known by its magic number, so a gzipped stdin is read too.
    if raw.peek(2)[:2] == b"\x1f\x8b":
        raw = gzip.GzipFile(fileobj=raw)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def raw_lines(stream, kind):
    """(line number, raw line, (email, phoneNumber, createdAt) or None when unparseable) per record."""
    return csv_rows(stream) if kind == "csv" else jsonl_rows(stream)


def csv_rows(stream):
    """CSV rows' fields by the header's names; quoted fields may span lines (numbered by their first)."""
    reader = csv.reader(stream)
    header = next(reader, None) or []
    if not set(REQUIRED_COLUMNS) <= set(header):
        raise UsageError(f"the CSV header must name {' and '.join(REQUIRED_COLUMNS)}; it has {header}")
    # Picked by position, not through a dict per row: a million rows made that a tenth of the read.
    # A name given twice is read from its last column, as a dict of the row would have it.
    email, phone, moment = (last_index(header, name) for name in (*REQUIRED_COLUMNS, "createdAt"))
    line = reader.line_num + 1
    for row in reader:
        # The row itself stands for its raw line: written back as CSV only if it is rejected.
        if len(row) == len(header):
            yield line, row, (row[email], row[phone], None if moment is None else row[moment])
        else:
            yield line, row, None
        line = reader.line_num + 1


def last_index(header, name):
    """The position of name's last column in header; None when it has none."""
    return len(header) - 1 - header[::-1].index(name) if name in header else None


def csv_line(row):
    """A CSV row written back as one line, for the rejects file."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue()


def jsonl_rows(stream):
    """JSON Lines objects' fields; blank lines are skipped, anything but an object is unparseable."""
    for number, text in enumerate(stream, start=1):
        raw = text.rstrip("\r\n")
        if not raw.strip():
            continue
        try:
            fields = json.loads(raw)
        except ValueError:
            fields = None
        if isinstance(fields, dict):
            yield number, raw, (fields.get("email"), fields.get("phoneNumber"), fields.get("createdAt"))
        else:
            yield number, raw, None


def created_at(value):
    """createdAt as an aware datetime, None when absent; ValueError when unparseable or without a zone."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("createdAt must be an ISO 8601 time")
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        raise ValueError("createdAt has no time zone")
    return moment


def record_of(line, raw, fields, region, blocklist):
    """The Record for one parsed line, or the Reject saying why it cannot be one.

    The values are normalised by the very functions /identify's schema calls, for the service's region.
    """
    if fields is None:
        return Reject(line, raw, "unparseable line")
    raw_email, raw_phone, raw_moment = fields
    try:
        email, phone_number = normal_values(raw_email, raw_phone, region)
    except ValidationError as error:
        return Reject(line, raw, f"invalid value: {error.messages[0]}")
    try:
        moment = created_at(raw_moment)
    except ValueError as error:
        reason = str(error) if str(error).startswith("createdAt") else "createdAt is not an ISO 8601 time"
        return Reject(line, raw, reason)
    if blocklist is None and (email is not None or phone_number is not None):
        return Record(line, email, phone_number, moment)
    return usable_record(Record(line, email, phone_number, moment), raw, blocklist)


def usable_record(record, raw, blocklist):
    """record with its blocked values absent, or a Reject when nothing is left."""
    if record.email is None and record.phone_number is None:
        return Reject(record.line, raw, "neither an email nor a phone number")
    if blocklist is None:
        return record
    try:
        kept = usable_under(blocklist, {"email": record.email, "phone_number": record.phone_number})
    except BlockedValue:
        return Reject(record.line, raw, "blocked")
    return Record(record.line, kept["email"], kept["phone_number"], record.created_at)


def read_records(stream, kind, region="", blocklist=None):
    """([Record] in the order the import applies them, [Reject] in file order)."""
    records, rejects = [], []
    if blocklist is not None and blocklist.empty:
        blocklist = None  # nothing to make absent: no look at it per record (a fifth of the read)
    for line, raw, fields in raw_lines(stream, kind):
        outcome = record_of(line, raw, fields, region, blocklist)
        (rejects if isinstance(outcome, Reject) else records).append(outcome)
    return application_order(records), rejects


def application_order(records):
    """Timed records first by createdAt, then untimed; ties keep file order, as the sort is stable."""
    timed = [record for record in records if record.created_at is not None]
    timed.sort(key=attrgetter("created_at"))  # aware datetimes compare as instants, in C
    return timed + [record for record in records if record.created_at is None]


def write_rejects(rejects, path):
    """The rejects file: a CSV of line, reason and the raw line."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(("line", "reason", "raw"))
        writer.writerows((reject.line, reject.reason, reject.raw) for reject in rejects)
