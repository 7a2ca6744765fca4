"""flask import-contacts: the table it writes equals posting the records to /identify one by one."""

import concurrent.futures
import contextlib
import gzip
import json
import os
import random
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from helpers import poll, recorded_events, waiting_on_a_lock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_concurrency import (
    STORM_THREADS,
    assert_customers_are_components,
    assert_links_name_live_primaries,
    assert_no_identical_contacts,
    assert_primaries_are_oldest,
    components,
    customers,
    deal,
    live_contacts,
    post_together,
    server,  # noqa: F401 - the gunicorn fixture, found by request.getfixturevalue
    storm_requests,
)
from test_model import EMAILS, PHONE_NUMBERS, bodies

from identity import importing

START = datetime(2024, 1, 1, tzinfo=UTC)
COLUMNS = "id, email, phone_number, linked_id, link_precedence, created_at"


def table(conn):
    """The compared columns of every row, in id order."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM contact ORDER BY id")
        return cur.fetchall()


def empty(conn):
    """An empty table with ids from 1."""
    with conn.cursor() as cur:
        cur.execute("TRUNCATE contact, contact_event RESTART IDENTITY")


def jsonl(path, records):
    """Write records as JSON Lines; return the path as text."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def run_import(runner, path, *options, stdin=None):
    """flask import-contacts path options; the result."""
    return runner.invoke(args=["import-contacts", str(path), *options], input=stdin)


def timed(items, minutes):
    """The items with createdAt from their minute offsets."""
    return [
        {**item, "createdAt": (START + timedelta(minutes=m)).isoformat()}
        for item, m in zip(items, minutes, strict=True)
    ]


def posted_in_order(client, conn, records):
    """The table that posting the records to /identify in createdAt order makes, with createdAt as times."""
    empty(conn)
    order = sorted(range(len(records)), key=lambda i: (records[i]["createdAt"], i))
    with conn.cursor() as cur:
        for i in order:
            cur.execute("SELECT coalesce(max(id), 0) FROM contact")
            (before,) = cur.fetchone()
            body = {k: v for k, v in records[i].items() if k != "createdAt"}
            assert client.post("/identify", json=body).status_code == 200
            # The row the request made, if any, carries the record's time, as the import writes it.
            cur.execute("UPDATE contact SET created_at = %s WHERE id > %s", (records[i]["createdAt"], before))
    return table(conn), recorded_events(conn)


histories = st.integers(1, 30).flatmap(
    lambda n: st.tuples(
        st.lists(bodies, min_size=n, max_size=n), st.lists(st.integers(0, 50), min_size=n, max_size=n)
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories)
def test_into_an_empty_table_the_import_writes_what_posting_in_order_writes(
    client, runner, conn, tmp_path, history
):
    assert_import_writes_what_posting_writes(client, runner, conn, tmp_path, history)


def assert_import_writes_what_posting_writes(client, runner, conn, tmp_path, history, *options):
    """The history imported (with options) into an empty table writes the rows and events of posting it."""
    records = timed(*history)
    expected = posted_in_order(client, conn, records)
    empty(conn)
    result = run_import(runner, jsonl(tmp_path / "h.jsonl", records), *options)
    assert result.exit_code == 0, result.output
    assert (table(conn), recorded_events(conn)) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories)
def test_with_the_tables_locked_the_import_writes_what_posting_in_order_writes(
    client, runner, conn, tmp_path, history
):
    assert_import_writes_what_posting_writes(client, runner, conn, tmp_path, history, "--lock-tables")


def indexes(conn):
    """{name: definition} of every index of the contact and contact_event tables, each valid."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid), indisvalid FROM pg_index"
            " WHERE indrelid IN ('contact'::regclass, 'contact_event'::regclass)"
        )
        rows = cur.fetchall()
    assert all(valid for _, _, valid in rows)
    return {name: definition for name, definition, _ in rows}


def test_with_the_tables_locked_the_indexes_set_aside_are_built_again_as_they_were(
    client, runner, conn, tmp_path, monkeypatch
):
    records = timed(
        [{"email": EMAILS[n % 4], "phoneNumber": PHONE_NUMBERS[n % 3]} for n in range(20)], range(20)
    )
    expected = posted_in_order(client, conn, records)
    empty(conn)
    before = indexes(conn)
    assert {"contact_email_live_idx", "contact_event_contact_ids_idx"} <= set(before)
    monkeypatch.setattr(importing, "CHUNK_SIZE", 3)  # several chunks written without the indexes
    result = run_import(runner, jsonl(tmp_path / "h.jsonl", records), "--lock-tables")
    assert result.exit_code == 0, result.output
    assert indexes(conn) == before
    assert (table(conn), recorded_events(conn)) == expected
    # The rebuilt indexes answer: the rows are found through them.
    with conn.cursor() as cur:
        cur.execute("SET enable_seqscan = off")
        cur.execute("SELECT count(*) FROM contact WHERE email = %s AND deleted_at IS NULL", (EMAILS[0],))
        assert cur.fetchone()[0] == sum(1 for row in expected[0] if row[1] == EMAILS[0])
    client.post("/identify", json={"email": "new@hv.edu", "phoneNumber": "42"})
    assert table(conn)[-1][0] == expected[0][-1][0] + 1  # the sequence moved past the imported ids


def test_with_the_tables_locked_into_a_populated_table_an_older_record_becomes_the_primary(
    client, runner, conn, tmp_path
):
    client.post("/identify", json={"email": "doc@hv.edu", "phoneNumber": "123456"})
    client.post("/identify", json={"email": "marty@hv.edu", "phoneNumber": "919191"})
    before = indexes(conn)
    old = [
        {"email": "old@hv.edu", "phoneNumber": "123456", "createdAt": "2001-01-01T00:00:00Z"},
        {"email": "marty@hv.edu", "phoneNumber": "123456", "createdAt": "2001-01-02T00:00:00Z"},
    ]
    result = run_import(runner, jsonl(tmp_path / "old.jsonl", old), "--lock-tables")
    assert result.exit_code == 0, result.output
    rows = {row[1]: row for row in table(conn)}
    assert rows["old@hv.edu"][3:5] == (None, "primary")
    oldest = rows["old@hv.edu"][0]
    assert all(row[3:5] == (oldest, "secondary") for email, row in rows.items() if email != "old@hv.edu")
    assert indexes(conn) == before
    assert run_import(runner, jsonl(tmp_path / "old.jsonl", old), "--lock-tables").exit_code == 0
    assert {row[1]: row for row in table(conn)} == rows  # the same file again writes nothing


def test_with_the_tables_locked_an_import_killed_half_way_writes_nothing_and_completes_when_run_again(
    runner, conn, tmp_path, monkeypatch
):
    before = indexes(conn)
    path, whole = import_killed_in_its_second_chunk(runner, conn, tmp_path, monkeypatch, "--lock-tables")
    assert table(conn) == [] and indexes(conn) == before
    assert run_import(runner, path, "--lock-tables").exit_code == 0
    assert by_rank(table(conn)) == by_rank(whole)


def test_with_the_tables_locked_a_request_waits_for_the_import_and_then_sees_it(
    app, runner, conn, tmp_path, monkeypatch
):
    records = timed(
        [{"email": "doc@hv.edu", "phoneNumber": "1"}, {"email": "marty@hv.edu", "phoneNumber": "1"}], [0, 1]
    )
    monkeypatch.setattr(importing, "CHUNK_SIZE", 1)
    answers, real_count = [], importing.Importer.count

    def post_in_the_middle(importer, chunk, way):
        real_count(importer, chunk, way)  # the first chunk is written, not committed
        if not answers:
            body = {"email": "biff@hv.edu", "phoneNumber": "1"}
            answers.append(requester.submit(app.test_client().post, "/identify", json=body))
            poll(lambda: waiting_on_a_lock(conn), 10, "the request waiting for the import")

    monkeypatch.setattr(importing.Importer, "count", post_in_the_middle)
    with concurrent.futures.ThreadPoolExecutor(1) as requester:
        result = run_import(runner, jsonl(tmp_path / "h.jsonl", records), "--lock-tables")
        answer = answers[0].result(timeout=30)
    assert result.exit_code == 0, result.output
    assert answer.status_code == 200
    # Answered after the import, as if posted after it: the imported customer, joined by the phone.
    assert answer.get_json()["contact"]["emails"] == ["doc@hv.edu", "marty@hv.edu", "biff@hv.edu"]


@contextlib.contextmanager
def a_report_holding_the_table(database_url):
    """A session that has read the contact table and so holds ACCESS SHARE on it until it ends: when the
    block is left, unless the test ended it first."""
    report = psycopg2.connect(database_url)
    try:
        with report.cursor() as cur:
            cur.execute("SELECT count(*) FROM contact")
        yield report
    finally:
        report.close()


def test_with_the_tables_locked_an_import_meeting_a_long_report_stops_and_writes_nothing(
    runner, conn, database_url, tmp_path
):
    path = jsonl(tmp_path / "h.jsonl", timed([{"email": "doc@hv.edu", "phoneNumber": "1"}], [0]))
    with a_report_holding_the_table(database_url):
        result = run_import(runner, path, "--lock-tables")
    assert result.exit_code == 1
    assert "could not take the tables within 200 ms" in result.output
    assert table(conn) == []


def test_a_small_chunk_size_changes_nothing(client, runner, conn, tmp_path, monkeypatch):
    records = timed(
        [{"email": EMAILS[n % 4], "phoneNumber": PHONE_NUMBERS[n % 3]} for n in range(20)], range(20)
    )
    expected = posted_in_order(client, conn, records)
    empty(conn)
    monkeypatch.setattr(importing, "CHUNK_SIZE", 3)
    assert run_import(runner, jsonl(tmp_path / "h.jsonl", records)).exit_code == 0
    assert (table(conn), recorded_events(conn)) == expected


@pytest.mark.parametrize("beside_a_report", [False, True], ids=["ahead", "careful"])
def test_with_merges_alone_recorded_the_rows_are_the_same_and_only_the_merges_are_events(
    client, runner, conn, database_url, tmp_path, beside_a_report
):
    records = timed(
        [{"email": EMAILS[n % 4], "phoneNumber": PHONE_NUMBERS[n % 3]} for n in range(20)], range(20)
    )
    rows, events = posted_in_order(client, conn, records)
    empty(conn)
    # A report holding the table sends the import the careful way.
    with a_report_holding_the_table(database_url) if beside_a_report else contextlib.nullcontext():
        result = run_import(runner, jsonl(tmp_path / "h.jsonl", records), "--events", "merges")
    assert result.exit_code == 0, result.output
    assert not beside_a_report or "1 the careful way" in result.output
    merges = [event for event in events if event[0] == "merged"]
    assert merges and len(merges) < len(events)
    assert (table(conn), recorded_events(conn)) == (rows, merges)


def test_an_older_imported_record_becomes_the_primary_of_a_populated_customer(client, runner, conn, tmp_path):
    client.post("/identify", json={"email": "doc@hv.edu", "phoneNumber": "123456"})
    client.post("/identify", json={"email": "marty@hv.edu", "phoneNumber": "919191"})
    old = [
        {"email": "old@hv.edu", "phoneNumber": "123456", "createdAt": "2001-01-01T00:00:00Z"},
        {"email": "marty@hv.edu", "phoneNumber": "123456", "createdAt": "2001-01-02T00:00:00Z"},
    ]
    result = run_import(runner, jsonl(tmp_path / "old.jsonl", old))
    assert result.exit_code == 0, result.output
    rows = {row[1]: row for row in table(conn)}
    assert rows["old@hv.edu"][3:5] == (None, "primary")
    oldest = rows["old@hv.edu"][0]
    assert all(row[3:5] == (oldest, "secondary") for email, row in rows.items() if email != "old@hv.edu")
    assert "customers merged: 1" in result.output


def test_a_dry_run_counts_what_the_import_then_does_and_writes_nothing(client, runner, conn, tmp_path):
    client.post("/identify", json={"email": "doc@hv.edu", "phoneNumber": "123456"})
    client.post("/identify", json={"email": "marty@hv.edu", "phoneNumber": "919191"})
    records = timed(
        [{"email": "doc@hv.edu", "phoneNumber": "919191"}, {"email": "biff@hv.edu", "phoneNumber": "1"}]
        + [{"email": "biff@hv.edu", "phoneNumber": "2"}, {"email": "doc@hv.edu"}],
        range(4),
    )
    path = jsonl(tmp_path / "h.jsonl", records)
    before = (table(conn), recorded_events(conn))
    dry = run_import(runner, path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert (table(conn), recorded_events(conn)) == before
    real = run_import(runner, path)
    assert real.exit_code == 0, real.output
    counts = "primaries created: 1, secondaries created: 1, customers merged: 1"
    assert counts in dry.output and counts in real.output


def test_an_imported_merge_is_recorded_as_the_evidence_of_its_link(client, runner, conn, tmp_path):
    records = timed(
        [
            {"email": "lorraine@hv.edu", "phoneNumber": "123456"},
            {"email": "mcfly@hv.edu", "phoneNumber": "717171"},
            {"email": "lorraine@hv.edu", "phoneNumber": "717171"},
        ],
        range(3),
    )
    assert run_import(runner, jsonl(tmp_path / "h.jsonl", records)).exit_code == 0
    path = client.get("/contacts/2/path/1").get_json()["path"]
    assert path[1]["evidence"]["kind"] == "request"
    assert (path[1]["evidence"]["email"], path[1]["evidence"]["phoneNumber"]) == ("lorraine@hv.edu", "717171")
    history = client.get("/contacts/1/history").get_json()["events"]
    assert [event["kind"] for event in history] == ["created", "created", "merged"]
    assert history[2]["requestId"].endswith(" line 3")


def test_importing_the_same_file_twice_writes_nothing_the_second_time(runner, conn, tmp_path):
    path = jsonl(tmp_path / "h.jsonl", timed([{"email": e, "phoneNumber": "1"} for e in EMAILS], range(4)))
    assert run_import(runner, path).exit_code == 0
    first = table(conn)
    result = run_import(runner, path)
    assert table(conn) == first
    assert "primaries created: 0, secondaries created: 0, customers merged: 0" in result.output


def test_an_import_killed_after_a_chunk_completes_when_run_again(runner, conn, tmp_path, monkeypatch):
    path, whole = import_killed_in_its_second_chunk(runner, conn, tmp_path, monkeypatch)
    assert len(table(conn)) == 4
    assert run_import(runner, path).exit_code == 0
    # The killed chunk took ids from the sequence, which no rollback gives back: the same rows, each
    # linked to the same row, with later ids.
    assert by_rank(table(conn)) == by_rank(whole)


def import_killed_in_its_second_chunk(runner, conn, tmp_path, monkeypatch, *options):
    """Ten records imported (with options), the table emptied, then imported again in chunks of 4 and
    killed in the second chunk's transaction, before its commit; (the file's path, the whole table)."""
    records = timed([{"email": f"{n}@hv.edu", "phoneNumber": str(n // 2)} for n in range(10)], range(10))
    path = jsonl(tmp_path / "h.jsonl", records)
    assert run_import(runner, path, *options).exit_code == 0
    whole = table(conn)
    empty(conn)
    monkeypatch.setattr(importing, "CHUNK_SIZE", 4)
    writes = []
    real_store = importing.store

    def killed_in_the_second(cur, chunk, *args):
        writes.append(chunk)
        if len(writes) == 2:
            # As a kill would: in the chunk's transaction, after a statement, before the commit.
            cur.execute("SELECT 1")
            raise KeyboardInterrupt
        return real_store(cur, chunk, *args)

    monkeypatch.setattr(importing, "store", killed_in_the_second)
    run_import(runner, path, *options)
    assert len(writes) == 2
    monkeypatch.setattr(importing, "store", real_store)
    return path, whole


def by_rank(rows):
    """The rows (id order) as (email, phone number, rank of the linked row, precedence)."""
    rank = {row[0]: n for n, row in enumerate(rows)}
    return [(email, phone, rank.get(linked), precedence) for _, email, phone, linked, precedence, _ in rows]


def test_a_chunk_replayed_ahead_of_a_live_write_is_applied_again_from_the_table(
    client, runner, conn, tmp_path, monkeypatch
):
    # Chunk two is replayed while chunk one is written: before a live request, posted right after
    # chunk one commits, gives x@hv.edu to a customer. Trusting that replay would make a second
    # customer holding x@hv.edu. (When the server is busy with other databases, chunk one is already
    # applied the careful way, and the test checks that way.)
    records = timed(
        [{"email": "a@hv.edu", "phoneNumber": "1"}, {"email": "b@hv.edu", "phoneNumber": "2"}]
        + [{"email": "x@hv.edu", "phoneNumber": "3"}, {"email": "c@hv.edu", "phoneNumber": "1"}],
        range(4),
    )
    live = {"email": "x@hv.edu", "phoneNumber": "9"}
    monkeypatch.setattr(importing, "CHUNK_SIZE", 2)
    real_count = importing.Importer.count

    def then_a_live_request(importer, chunk, way):
        real_count(importer, chunk, way)  # called once a chunk is committed, whichever way it went in
        if chunk.first_id == 1:
            assert client.post("/identify", json=live).status_code == 200

    monkeypatch.setattr(importing.Importer, "count", then_a_live_request)
    result = run_import(runner, jsonl(tmp_path / "h.jsonl", records))
    assert result.exit_code == 0, result.output
    assert_customers_of_everything_sent(conn, records, live)


def assert_customers_of_everything_sent(conn, records, live):
    """The table's invariants hold, and its customers are those of the records and the live request."""
    rows = live_contacts(conn)
    assert_links_name_live_primaries(rows)
    assert_no_identical_contacts(rows)
    grouped = customers(rows)
    assert_primaries_are_oldest(grouped)
    sent = [(r["email"], r["phoneNumber"]) for r in records] + [(live["email"], live["phoneNumber"])]
    assert_customers_are_components(grouped, components(sent))


def test_an_import_meeting_a_long_report_goes_in_the_careful_way_beside_it(
    client, runner, conn, database_url, tmp_path
):
    records = timed([{"email": f"{n}@hv.edu", "phoneNumber": str(n // 2)} for n in range(6)], range(6))
    expected = posted_in_order(client, conn, records)
    empty(conn)
    with a_report_holding_the_table(database_url):
        result = run_import(runner, jsonl(tmp_path / "h.jsonl", records))
    assert result.exit_code == 0, result.output
    assert "chunks: 0 replayed ahead, 1 the careful way" in result.output
    assert (table(conn), recorded_events(conn)) == expected


def test_an_import_sent_the_careful_way_by_a_report_goes_ahead_again_once_nobody_else_writes(
    client, runner, conn, database_url, tmp_path, monkeypatch
):
    records = timed([{"email": f"{n}@hv.edu", "phoneNumber": str(n // 3)} for n in range(24)], range(24))
    expected = posted_in_order(client, conn, records)
    empty(conn)
    monkeypatch.setattr(importing, "CHUNK_SIZE", 2)
    real_count = importing.Importer.count

    def the_report_ends(importer, chunk, way):
        real_count(importer, chunk, way)
        report.close()

    monkeypatch.setattr(importing.Importer, "count", the_report_ends)
    with a_report_holding_the_table(database_url) as report:  # the first chunk goes careful
        result = run_import(runner, jsonl(tmp_path / "h.jsonl", records))
    assert result.exit_code == 0, result.output
    ahead, careful = map(
        int, re.search(r"chunks: (\d+) replayed ahead, (\d+) the careful way", result.output).groups()
    )
    # The first careful chunk gives the first look; then CALM_CHUNKS calm ones in a row (the second
    # chunk, replayed while the first met the report, among them), and every chunk after goes ahead.
    assert careful == 1 + importing.CALM_CHUNKS and ahead == 12 - careful
    assert (table(conn), recorded_events(conn)) == expected


def test_an_import_that_went_ahead_again_and_met_a_writer_needs_twice_as_many_calm_chunks_to_return(
    client, runner, conn, database_url, tmp_path, monkeypatch
):
    records = timed([{"email": f"{n}@hv.edu", "phoneNumber": str(n // 3)} for n in range(40)], range(40))
    monkeypatch.setattr(importing, "CHUNK_SIZE", 2)
    real_count = importing.Importer.count
    live = {"email": "live@hv.edu", "phoneNumber": "999"}

    def a_report_then_a_live_write(importer, chunk, way):
        real_count(importer, chunk, way)
        report.close()
        if way == "ahead" and importer.ways["ahead"] == 1:
            assert client.post("/identify", json=live).status_code == 200

    monkeypatch.setattr(importing.Importer, "count", a_report_then_a_live_write)
    with a_report_holding_the_table(database_url) as report:  # the first chunk goes careful
        result = run_import(runner, jsonl(tmp_path / "h.jsonl", records))
    assert result.exit_code == 0, result.output
    # Careful: chunks 1-4 (a look, then 3 calm); ahead: chunk 5, after which the live write sends
    # chunk 6 back the careful way: chunks 6-12 (a look, then 6 calm); ahead: chunks 13-20.
    assert "chunks: 9 replayed ahead, 11 the careful way" in result.output
    assert_customers_of_everything_sent(conn, records, live)


def test_rejects_exit_codes_dry_run_and_stdin(runner, conn, tmp_path):
    text = '{"email": "a@hv.edu"}\n\n{"email": "nope"}\n{"phoneNumber": "1", "createdAt": "2024-01-01"}\n'
    rejects = tmp_path / "r.csv"
    result = run_import(runner, "-", "--format", "jsonl", "--rejects", str(rejects), "--dry-run", stdin=text)
    assert result.exit_code == 1 and "read: 3, rejected: 2" in result.output
    assert table(conn) == []
    assert [line.split(",")[0] for line in rejects.read_text().splitlines()] == ["line", "3", "4"]
    result = run_import(
        runner, "-", "--format", "jsonl", "--rejects", str(rejects), "--allow-rejects", stdin=text
    )
    assert result.exit_code == 0 and len(table(conn)) == 1
    assert run_import(runner, tmp_path / "x.txt").exit_code == 2
    assert run_import(runner, "-", "--format", "xml", stdin=text).exit_code == 2


def test_gzip_csv_with_its_quirks(runner, conn, tmp_path):
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(
        gzip.compress('\ufeffemail,phoneNumber,x\r\n"a@hv.edu","1 2",\r\nb@hv.edu,12,"q,\r\nq"\r\n'.encode())
    )
    result = run_import(runner, path)
    assert result.exit_code == 0, result.output
    assert [row[1:5] for row in table(conn)] == [
        ("a@hv.edu", "12", None, "primary"),
        ("b@hv.edu", "12", 1, "secondary"),
    ]


@pytest.mark.slow
def test_an_import_racing_live_identify_through_gunicorn_leaves_the_customers_of_everything_sent(
    request,
    conn,
    database_url,
    tmp_path,  # noqa: F811 - server is the fixture
):
    rng = random.Random(7)
    live = storm_requests(rng)
    # The import carries the same values as the storm and values of its own, older than any live row.
    imported = [(e, p) for e, p in storm_requests(rng)] + [
        (f"old{n}@import.test", p) for n, (_, p) in enumerate(live[:200])
    ]
    path = jsonl(
        tmp_path / "h.jsonl",
        timed([{"email": e, "phoneNumber": p} for e, p in imported], range(len(imported))),
    )
    env = {**os.environ, "DATABASE_URL": database_url}
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "import-contacts", path]
    importer = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answered = post_together(request.getfixturevalue("server"), deal(live, STORM_THREADS))
    out, err = importer.communicate(timeout=300)
    assert importer.returncode == 0, err
    rows = live_contacts(conn)
    assert_links_name_live_primaries(rows)
    assert_no_identical_contacts(rows)
    grouped = customers(rows)
    assert_primaries_are_oldest(grouped)
    assert_customers_are_components(grouped, components([request for request, _ in answered] + imported))
