-- An import chunk's customers, locked and read in one statement (issue 10, identity/importing.py).
--
-- Locks (the contract of 0002_identify_v1.sql, widened to a set as identify_batch_v1 widens it):
-- first the advisory lock of every identifier of the chunk, once each, in ascending key order
-- (lock_identifiers_v2, 0010_identify_v3.sql); then, in a fresh snapshot, the primaries of the
-- customers holding any of those values FOR UPDATE in id order. A primary demoted while we waited
-- raises serialization_failure and the importer retries the chunk, as identify does.


CREATE FUNCTION import_customers_v1(
    p_emails text[], p_phone_numbers text[],
    OUT id bigint, OUT email text, OUT phone_number text, OUT primary_id bigint, OUT created_at timestamptz)
RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    primary_ids bigint[];
    locked_ids bigint[];
BEGIN
    PERFORM lock_identifiers_v2(p_emails, p_phone_numbers);

    -- A new statement, so a new snapshot: who holds the values now that nobody else may add them.
    SELECT array_agg(found.p ORDER BY found.p) INTO primary_ids
    FROM (SELECT coalesce(m.linked_id, m.id) FROM contact m
          WHERE m.email = ANY (p_emails) AND m.email IS NOT NULL AND m.deleted_at IS NULL
          UNION
          SELECT coalesce(m.linked_id, m.id) FROM contact m
          WHERE m.phone_number = ANY (p_phone_numbers) AND m.phone_number IS NOT NULL
            AND m.deleted_at IS NULL) found(p);

    -- Every change to a customer holds its primary's row lock; in id order, as identify takes them.
    SELECT array_agg(l.id ORDER BY l.id) INTO locked_ids
    FROM (SELECT c.id FROM contact c
          WHERE c.id = ANY (primary_ids) AND c.linked_id IS NULL AND c.deleted_at IS NULL
          ORDER BY c.id
          FOR UPDATE) l;
    IF locked_ids IS DISTINCT FROM primary_ids THEN
        RAISE EXCEPTION 'a customer of the chunk was merged while it waited'
            USING ERRCODE = 'serialization_failure';
    END IF;

    RETURN QUERY
    SELECT c.id, c.email, c.phone_number, coalesce(c.linked_id, c.id), c.created_at
    FROM contact c
    WHERE (c.id = ANY (primary_ids) OR c.linked_id = ANY (primary_ids)) AND c.deleted_at IS NULL
    ORDER BY c.id;
END
$$;
