-- Rewrite one stored contact's values in today's normal form, then merge as identify would
-- (`flask --app wsgi renormalise`, identity/renormalise.py).
--
-- A release that normalises more (Unicode emails, PHONE_REGION) leaves older rows spelled the old
-- way, so one person may still be two customers. This rewrites one row and, through identify_v2
-- with the row's new values, merges every customer that now shares a value with it: the oldest
-- primary survives and the others' rows are relinked to it, never a chain.
--
-- Safe beside live requests, by the lock contract of 0002_identify_v1.sql:
--   1. The identifier locks of the row's old and new values, all in ascending key order (a request
--      takes at most two, also ascending, so no cycle of waits can form). Until we commit, no
--      request can add a row with any of these values.
--   2. The primaries' row locks, in id order: the row's own primary and those of the customers
--      that hold a new value. A primary demoted while we waited drops out of the locked set, and
--      then we start over (serialization_failure, retried by the caller) rather than lock out of
--      order.
--   3. The row is rewritten, and identify_v2 merges under the locks we hold (it takes them again,
--      which PostgreSQL grants at once to their holder).
-- The advisory locks of the identifiers, once each, in ascending key order (the keys of the contract).
CREATE FUNCTION lock_identifiers_v1(p_emails text[], p_phone_numbers text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lock_key bigint;
BEGIN
    FOR lock_key IN
        SELECT DISTINCT k FROM (
            SELECT hashtextextended('email ' || e, 0) FROM unnest(p_emails) e WHERE e IS NOT NULL
            UNION
            SELECT hashtextextended('phone ' || p, 0) FROM unnest(p_phone_numbers) p WHERE p IS NOT NULL
        ) keys(k)
        ORDER BY k
    LOOP
        PERFORM pg_advisory_xact_lock(lock_key);
    END LOOP;
END
$$;


CREATE FUNCTION renormalise_contact_v1(
    p_id bigint, p_email text, p_phone_number text,
    OUT contact json, OUT merged bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    old_row contact;
    primary_ids bigint[];
    locked_ids bigint[];
BEGIN
    merged := '{}';
    -- A row of a deleted primary belongs to no customer: it is left as it is.
    SELECT c.* INTO old_row
    FROM contact c JOIN contact p ON p.id = coalesce(c.linked_id, c.id)
    WHERE c.id = p_id AND c.deleted_at IS NULL AND p.deleted_at IS NULL;
    IF NOT FOUND OR (old_row.email IS NOT DISTINCT FROM p_email
                     AND old_row.phone_number IS NOT DISTINCT FROM p_phone_number) THEN
        RETURN;
    END IF;

    PERFORM lock_identifiers_v1(ARRAY[old_row.email, p_email], ARRAY[old_row.phone_number, p_phone_number]);

    -- A new statement, so a new snapshot: the row's primary now, and the holders of the new values.
    SELECT array_agg(DISTINCT p ORDER BY p) INTO primary_ids
    FROM (SELECT coalesce(c.linked_id, c.id) AS p FROM contact c WHERE c.id = p_id AND c.deleted_at IS NULL
          UNION ALL
          SELECT m.primary_id FROM matching_customers_v1(p_email, p_phone_number) m) found;
    SELECT array_agg(l.id ORDER BY l.id) INTO locked_ids
    FROM (SELECT c.id FROM contact c
          WHERE c.id = ANY (primary_ids) AND c.linked_id IS NULL AND c.deleted_at IS NULL
          ORDER BY c.id
          FOR UPDATE) l;
    IF locked_ids IS DISTINCT FROM primary_ids THEN
        RAISE EXCEPTION 'a customer was merged while the rewrite waited for it'
            USING ERRCODE = 'serialization_failure';
    END IF;

    UPDATE contact c
    SET email = p_email, phone_number = p_phone_number, updated_at = clock_timestamp()
    WHERE c.id = p_id;
    -- No limit applies: refusing this merge would leave one value with two customers. The merge is
    -- recorded like any other, under the request id 'renormalise'.
    SELECT i.contact, i.merged INTO contact, merged
    FROM identify_v2(p_email, p_phone_number, 'renormalise', NULL, NULL, NULL) i;
END
$$;
