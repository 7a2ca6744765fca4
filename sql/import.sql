-- import_customers --
-- The chunk's identifiers and customers locked as identify locks them; the customers' live rows:
-- (id, email, phone number, primary id, created_at). 0011_import_customers_v1.sql explains the locks.
SELECT * FROM import_customers_v1(%(emails)s::text[], %(phone_numbers)s::text[]);

-- import_durability --
-- A chunk's commit does not wait for the WAL flush: a server crash may lose the last chunks
-- committed (never part of one), and running the import again writes them (README, "Importing").
SET LOCAL synchronous_commit = off;

-- import_analyze --
-- The planner's statistics of a table the import is growing (autovacuum may be off, or late).
ANALYZE contact;

-- import_new_ids --
-- n ids from the contact table's own sequence, ascending.
SELECT nextval(pg_get_serial_sequence('contact', 'id')) AS id FROM generate_series(1, %(n)s) ORDER BY id;

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
