"""Reading import files: formats, createdAt order, the normalisation of /identify, every kind of reject."""

import gzip
import io
from datetime import UTC, datetime

import pytest

from identity.blocking import compiled
from identity.import_records import (
    Record,
    UsageError,
    format_of,
    read_records,
    text_stream,
    write_rejects,
)
from identity.schemas import IdentifyRequest

CSV = (
    "\ufeffid,email,phoneNumber,createdAt,note\r\n"
    '1,Doc@HV.edu,"(555) 01-99",2024-01-02T00:00:00Z,"a, quoted\r\nnote"\r\n'
    "2,,,,\r\n"
    "3,b@hv.edu,12x,,\r\n"
    "4,c@hv.edu,5,2024-01-01T00:00:00,\r\n"
    "5,d@hv.edu,6,yesterday,\r\n"
    "6,e@hv.edu\r\n"
    "7,marty@hv.edu,,2023-06-01T10:00:00+02:00,\r\n"
    "8,george@hv.edu,919191,,\r\n"
)
JSONL = (
    '{"email": "a@hv.edu", "phoneNumber": 123}\n'
    "\n"
    "   \n"
    "not json\n"
    "[1, 2]\n"
    '{"email": null, "phoneNumber": "9", "createdAt": "2020-01-01T00:00:00+00:00"}\n'
    '{"email": "no at sign"}\n'
)


def read(text, kind, **options):
    """read_records over text as a stream."""
    return read_records(io.TextIOWrapper(io.BytesIO(text.encode()), "utf-8-sig", newline=""), kind, **options)


def test_csv_with_a_bom_crlf_and_quoted_fields_gives_records_in_created_at_order():
    records, rejects = read(CSV, "csv")
    assert [(r.line, r.email, r.phone_number) for r in records] == [
        (9, "marty@hv.edu", None),
        (2, "doc@hv.edu", "5550199"),
        (10, "george@hv.edu", "919191"),
    ]
    assert records[0].created_at == datetime(2023, 6, 1, 8, tzinfo=UTC)
    assert records[2].created_at is None
    assert [(r.line, r.reason) for r in rejects] == [
        (4, "neither an email nor a phone number"),
        (5, "invalid value: Must be 1 to 20 digits, with an optional leading + and separators."),
        (6, "createdAt has no time zone"),
        (7, "createdAt is not an ISO 8601 time"),
        (8, "unparseable line"),
    ]
    assert rejects[0].raw == "2,,,,"


def test_values_are_normalised_exactly_as_identify_normalises_them():
    for email, phone in [("  ＤＯＣ@hv.EDU ", " +1 (555) 0199"), ("İvan@X.io", 42), ("", "  ")]:
        records, rejects = read(
            f'{{"email": "{email}", "phoneNumber": {phone!r}}}\n'.replace("'", '"'), "jsonl"
        )
        wanted = IdentifyRequest().load({"email": email, "phoneNumber": phone}) if records else None
        assert [(r.email, r.phone_number) for r in records] == (
            [(wanted["email"], wanted["phone_number"])] if wanted else []
        )
        assert len(records) + len(rejects) == 1


def test_json_lines_skip_blank_lines_and_reject_what_is_no_object():
    records, rejects = read(JSONL, "jsonl")
    assert records == [
        Record(6, None, "9", datetime(2020, 1, 1, tzinfo=UTC)),
        Record(1, "a@hv.edu", "123", None),
    ]
    assert [(r.line, r.raw, r.reason.split(":")[0]) for r in rejects] == [
        (4, "not json", "unparseable line"),
        (5, "[1, 2]", "unparseable line"),
        (7, '{"email": "no at sign"}', "invalid value"),
    ]


def test_ties_and_untimed_records_keep_file_order():
    text = "".join(
        f'{{"email": "{n}@hv.edu"{at}}}\n'
        for n, at in enumerate(
            ["", ', "createdAt": "2024-01-01T00:00:00Z"', "", ', "createdAt": "2024-01-01T00:00:00Z"']
        )
    )
    records, _ = read(text, "jsonl")
    assert [r.line for r in records] == [2, 4, 1, 3]


def test_blocked_values_are_absent_and_a_record_left_with_none_is_rejected_as_blocked():
    blocklist = compiled(1, [{"kind": "phone", "value": "123", "pattern": False}])
    text = '{"email": "a@hv.edu", "phoneNumber": "123"}\n{"phoneNumber": "123"}\n'
    records, rejects = read(text, "jsonl", blocklist=blocklist)
    assert [(r.email, r.phone_number) for r in records] == [("a@hv.edu", None)]
    assert [(r.line, r.reason) for r in rejects] == [(2, "blocked")]


def test_gzip_is_read_by_its_magic_number_and_the_format_by_the_name(tmp_path):
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(gzip.compress(CSV.encode()))
    assert format_of(str(path)) == "csv" and format_of("x.ndjson") == "jsonl"
    with text_stream(str(path)) as stream:
        assert len(read_records(stream, "csv")[0]) == 3
    with pytest.raises(UsageError):
        format_of("orders.txt")


def test_a_csv_without_the_columns_is_a_usage_error():
    with pytest.raises(UsageError):
        read("mail,phone\r\na@hv.edu,1\r\n", "csv")


def test_the_rejects_file_has_line_reason_and_raw_line(tmp_path):
    _, rejects = read(JSONL, "jsonl")
    write_rejects(rejects, tmp_path / "rejects.csv")
    lines = (tmp_path / "rejects.csv").read_text().splitlines()
    assert lines[:3] == ["line,reason,raw", "4,unparseable line,not json", '5,unparseable line,"[1, 2]"']
