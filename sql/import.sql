-- import_lock_identifiers --
-- A chunk's identifiers locked as identify locks them, every key ascending (0008_identify_batch_v1.sql).
SELECT lock_identifiers_v1(%(emails)s::text[], %(phone_numbers)s::text[]);

-- import_primaries --
-- The primaries of the live customers holding any of the chunk's values.
SELECT DISTINCT coalesce(m.linked_id, m.id)
FROM contact m
WHERE m.deleted_at IS NULL
  AND (m.email = ANY (%(emails)s::text[]) OR m.phone_number = ANY (%(phone_numbers)s::text[]));

-- import_lock_primaries --
-- Those primaries' row locks in id order, as identify takes them; one demoted meanwhile drops out.
SELECT c.id FROM contact c
WHERE c.id = ANY (%(ids)s::bigint[]) AND c.linked_id IS NULL AND c.deleted_at IS NULL
ORDER BY c.id
FOR UPDATE;

-- import_customer_rows --
-- Every live row of the locked customers: (id, email, phone number, primary id, created_at).
SELECT c.id, c.email, c.phone_number, coalesce(c.linked_id, c.id), c.created_at
FROM contact c
WHERE (c.id = ANY (%(ids)s::bigint[]) OR c.linked_id = ANY (%(ids)s::bigint[])) AND c.deleted_at IS NULL
ORDER BY c.id;

-- import_new_ids --
-- n ids from the contact table's own sequence, ascending.
SELECT nextval(pg_get_serial_sequence('contact', 'id')) AS id FROM generate_series(1, %(n)s) ORDER BY id;

-- import_copy_contacts --
COPY contact (id, email, phone_number, linked_id, link_precedence, created_at, updated_at) FROM STDIN;

-- import_relink_table --
CREATE TEMPORARY TABLE import_relink (id bigint, linked_id bigint) ON COMMIT DROP;

-- import_copy_relinks --
COPY import_relink (id, linked_id) FROM STDIN;

-- import_relink --
-- Existing rows joined to another primary, or made the primary of their customer.
UPDATE contact c
SET linked_id = r.linked_id,
    link_precedence = CASE WHEN r.linked_id IS NULL THEN 'primary' ELSE 'secondary' END,
    updated_at = clock_timestamp()
FROM import_relink r
WHERE c.id = r.id;
