-- import_gate --
-- A chunk replayed ahead (identity/importing.py) is written alone among the table's users, while
-- nobody else writes (README, "Importing"). ACCESS EXCLUSIVE, not a weaker mode: every writer
-- (identify_v1 to v3, the batch, erasure, renormalising) reads the table before it writes, so a
-- writer let in to read while the chunk is written would write later on what it read before it.
-- Readers and writers wait for the chunk's COPY, briefly; the chunk waits for whoever already uses
-- the table to commit. Nothing else is locked first, so no deadlock: a writer holding identifier
-- locks waits on the table, and the chunk wants none of those locks. lock_timeout bounds how long
-- the chunk's queued request can hold everyone behind it (say a long report holds the table): the
-- import then goes on the careful way, which takes no table lock.
-- A chunk's commit does not wait for the WAL flush: a server crash may lose the last chunks
-- committed (never part of one), and running the import again writes them.
-- Then, in the same round trip (each is a moment the writer thread waits for the GIL): our
-- transaction id, the next id as our snapshot has it, whether any other transaction is running, and
-- the id the sequence gives next (read, not taken: a chunk rolled back leaves it as it was). When
-- ours is the only transaction id handed out since the import last looked and nobody else was or
-- is running, nobody else can have written since (identity.importing.Watch).
SET LOCAL lock_timeout = %(lock_timeout_ms)s;
SET LOCAL synchronous_commit = off;
LOCK TABLE contact IN ACCESS EXCLUSIVE MODE;
SELECT x::text::bigint, pg_snapshot_xmax(s)::text::bigint,
       EXISTS (SELECT FROM pg_snapshot_xip(s) other WHERE other <> x),
       coalesce(pg_sequence_last_value(pg_get_serial_sequence('contact', 'id')), 0) + 1
FROM pg_current_xact_id() x, pg_current_snapshot() s;

-- import_hold --
-- `--lock-tables` (README, "Importing"): the whole import is this one transaction, holding both
-- tables from before it reads them until it commits, so nobody else reads or writes them meanwhile
-- and nothing the import learns goes stale (every request waits; the operator chose that).
-- contact before contact_event, the order identify writes them; lock_timeout (200 ms) is shorter than
-- the server's deadlock_timeout (1 s by default), so a session holding contact_event and waiting for
-- contact makes the import give up rather than wait in a deadlock (either way it stops, writing
-- nothing). A temporary table keeps the indexes set aside (import_set_aside).
-- Then whether the table has a live row, and the id the sequence gives next: nobody takes ids while
-- the locks are held, since every writer touches contact (and waits) before it takes one.
SET LOCAL lock_timeout = %(lock_timeout_ms)s;
LOCK TABLE contact, contact_event IN ACCESS EXCLUSIVE MODE;
CREATE TEMPORARY TABLE import_set_aside (index_name text NOT NULL, definition text NOT NULL)
    ON COMMIT DROP;
SELECT EXISTS (SELECT FROM contact WHERE deleted_at IS NULL),
       coalesce(pg_sequence_last_value(pg_get_serial_sequence('contact', 'id')), 0) + 1;

-- import_set_aside --
-- Into a table with no live row, under import_hold's locks: the indexes of both tables that enforce
-- nothing (not the primary keys, nor any unique index) are dropped, and import_rebuild builds them
-- again, from their own definitions, before the commit. A build sorts each index's keys once, where
-- COPY descends each index once per row: a million records' rows and events took the server 9.1 s
-- with their indexes, 5.0 s without them and then building them (README). Nobody else sees them
-- missing: the locks are held until the commit.
INSERT INTO import_set_aside
SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid)
FROM pg_index
WHERE indrelid IN ('contact'::regclass, 'contact_event'::regclass) AND NOT indisunique AND NOT indisexclusion;
DO $$
DECLARE
    index_name text;
BEGIN
    FOR index_name IN SELECT s.index_name FROM import_set_aside s LOOP
        EXECUTE 'DROP INDEX ' || index_name;
    END LOOP;
END
$$;

-- import_rebuild --
-- The end of a `--lock-tables` import: the indexes import_set_aside dropped (if any) built again.
DO $$
DECLARE
    definition text;
BEGIN
    FOR definition IN SELECT s.definition FROM import_set_aside s LOOP
        EXECUTE definition;
    END LOOP;
END
$$;

-- import_customers --
-- A careful chunk's identifiers and customers locked as identify locks them; the customers' live
-- rows: (id, email, phone number, primary id, created_at). 0011_import_customers_v1.sql explains.
-- Its commit does not wait for the WAL flush either (import_gate says why).
SET LOCAL synchronous_commit = off;
SELECT * FROM import_customers_v1(%(emails)s::text[], %(phone_numbers)s::text[]);

-- import_new_ids --
-- n ids from the contact table's own sequence, ascending, beside other writers taking theirs.
SELECT nextval(pg_get_serial_sequence('contact', 'id')) AS id FROM generate_series(1, %(n)s) ORDER BY id;

-- import_snapshot --
-- Before the first chunk, one snapshot for all the file's values: (the next transaction id, whether
-- any other transaction was running, whether the table has a live row at all, the id the sequence
-- gives next).
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;
SELECT pg_snapshot_xmax(s)::text::bigint,
       EXISTS (SELECT FROM pg_snapshot_xip(s)),
       EXISTS (SELECT FROM contact WHERE deleted_at IS NULL),
       coalesce(pg_sequence_last_value(pg_get_serial_sequence('contact', 'id')), 0) + 1
FROM pg_current_snapshot() s;

-- import_look --
-- Between two careful chunks, in no transaction of ours (it takes no id): the next transaction id,
-- and whether any transaction holding one is running. When, across a careful chunk, the next id moved
-- by at most the chunk's own and nobody was running at either look, nobody else wrote meanwhile, and
-- the import may try replaying ahead again (identity.importing.Importer.calm_since_last_look); the
-- gate still checks each chunk.
SELECT pg_snapshot_xmax(s)::text::bigint, EXISTS (SELECT FROM pg_snapshot_xip(s))
FROM pg_current_snapshot() s;

-- import_customers_holding --
-- Every live row of the customers holding any of the values (all of a file's, before the first
-- chunk): (id, email, phone number, primary id, created_at). Joins on unnest, not `= ANY`: the
-- planner estimates `= ANY` of a constant array element by element (1.6 s of planning for the
-- 900,000 values of a million records), an unnest by its length. Each kind's values come as one
-- text, a value a line (identity.importing.value_lines), split here: sent as arrays, their literal
-- took 2 s more to quote and to parse.
WITH holder AS (
    SELECT coalesce(c.linked_id, c.id) AS id
    FROM unnest(string_to_array(%(emails)s, E'\n')) v JOIN contact c ON c.email = v
    WHERE c.email IS NOT NULL AND c.deleted_at IS NULL
    UNION
    SELECT coalesce(c.linked_id, c.id)
    FROM unnest(string_to_array(%(phone_numbers)s, E'\n')) v JOIN contact c ON c.phone_number = v
    WHERE c.phone_number IS NOT NULL AND c.deleted_at IS NULL
)
SELECT c.id, c.email, c.phone_number, c.id, c.created_at
FROM holder h JOIN contact c ON c.id = h.id
WHERE c.deleted_at IS NULL
UNION ALL
SELECT c.id, c.email, c.phone_number, c.linked_id, c.created_at
FROM holder h JOIN contact c ON c.linked_id = h.id
WHERE c.deleted_at IS NULL;

-- import_analyze --
-- The planner's statistics of a table the import is growing (autovacuum may be off, or late).
ANALYZE contact;

-- import_last_id --
-- The sequence moved past the ids a chunk written ahead gave its rows (under the gate, nobody
-- else takes ids meanwhile).
SELECT setval(pg_get_serial_sequence('contact', 'id'), %(last_id)s);

-- import_copy_contacts --
COPY contact (id, email, phone_number, linked_id, link_precedence, created_at, updated_at) FROM STDIN;

-- import_copy_events --
-- What the chunk did, as identify_v2 records it: each new contact and each merge.
COPY contact_event (at, request_id, kind, survivor_id, contact_ids, email, phone_number) FROM STDIN;

-- import_relink --
-- Existing rows joined to another primary, or made the primary of their customer (linked id null).
UPDATE contact c
SET linked_id = r.linked_id,
    link_precedence = CASE WHEN r.linked_id IS NULL THEN 'primary' ELSE 'secondary' END,
    updated_at = clock_timestamp()
FROM unnest(%(ids)s::bigint[], %(linked_ids)s::bigint[]) r(id, linked_id)
WHERE c.id = r.id;
