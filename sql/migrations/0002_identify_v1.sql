-- Reconciliation, version 1, kept in the database so that a request costs one statement.
--
-- Released migrations are never edited, and these functions are never replaced in place: during a
-- rolling deploy hosts of two releases call them at once. A change is a new version (identify_v2,
-- beside identify_v1) created by a new migration; the old version is dropped by the migration of
-- a later release, once no release that calls it can still be serving (README, "The data").
-- A version calls only the versions of other functions it was written with, so its answer never
-- changes under it.
--
-- How identify_v1 stays correct when requests race (the one full explanation; the repository
-- module and the README point here):
--
--   1. Fast path. One statement, so one snapshot, finds the customers that match. When there is
--      exactly one and it already holds every value the request carries, the answer is read from
--      that snapshot and nothing is locked or written. A read of one consistent snapshot is a
--      valid place in a serial order, and most checkouts are returning customers.
--   2. Identifier locks. Otherwise the request may write, and rows that do not exist yet cannot be
--      row-locked. So it takes transaction-level advisory locks on its email and its phone number,
--      keys hashed from the values, the smaller key first, so two requests never hold one key
--      each while waiting for the other's. Until it commits, no other request can add a row with
--      either value: simultaneous first orders with one new email queue, and only the first
--      inserts a primary.
--   3. Customer locks. Every change to a customer is made while holding its primary's row lock.
--      After the advisory locks, a fresh snapshot finds the matching customers again and their
--      primaries are locked FOR UPDATE in id order, so racing merges queue instead of deadlocking,
--      and the customers touched are frozen. A primary demoted while we waited (another request
--      merged it) fails the re-checked WHERE linked_id IS NULL; rather than lock its new primary
--      out of order, the function raises serialization_failure and the caller retries the whole
--      transaction (identity/retrying.py).
--   4. Merge and insert. The primary with the earliest (created_at, id) survives; the others
--      become its secondaries and their secondaries are relinked to it in the same UPDATE, so
--      there is never a chain. If the request carries a value the customer lacks, a secondary
--      with the request's values is inserted.
--
-- Advisory locks are always taken before row locks, and each kind in a fixed order, so no cycle
-- of waits can form; a deadlock the server still reports is retried like a serialization failure.
--
-- The lock keys and their order are a contract between versions, not a detail of one: every
-- version of identify that may serve beside another must take the same locks in the same order,
-- or two hosts of different releases could both insert a primary for one new email. That includes
-- the unversioned identify() of the releases before this migration, whose hosts keep serving
-- during the deploy onto it: the keys below are computed exactly as it computes them.


-- The live customers that hold the email or the phone number, and which of the two each holds.
CREATE FUNCTION matching_customers_v1(
    p_email text, p_phone_number text,
    OUT primary_id bigint, OUT has_email boolean, OUT has_phone_number boolean)
RETURNS SETOF record
LANGUAGE sql STABLE AS $$
    SELECT p.id,
           coalesce(bool_or(m.email = p_email), false),
           coalesce(bool_or(m.phone_number = p_phone_number), false)
    FROM contact m
    JOIN contact p ON p.id = coalesce(m.linked_id, m.id)
    WHERE m.deleted_at IS NULL
      AND (m.email = p_email OR m.phone_number = p_phone_number)
      AND p.deleted_at IS NULL
      AND p.linked_id IS NULL
    GROUP BY p.id
$$;


-- Every live contact of a customer, found by walking linked_id down from its primary.
CREATE FUNCTION customer_contacts_v1(p_primary_id bigint)
RETURNS SETOF contact
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE member AS (
        SELECT c.* FROM contact c
        WHERE c.id = p_primary_id AND c.deleted_at IS NULL
      UNION ALL
        -- linked_id always names the primary, so this step runs once; walking on would still
        -- terminate, since a row has one linked_id and the walk starts at a row with none.
        SELECT c.* FROM contact c
        JOIN member up ON c.linked_id = up.id
        WHERE c.deleted_at IS NULL
    )
    SELECT * FROM member
$$;


-- The consolidated customer, in the shape POST /identify answers with.
-- plpgsql rather than SQL: PostgreSQL 15 plans a SQL function's body anew on every call from
-- another statement, while plpgsql keeps the plan for the session (README, "Speed").
CREATE FUNCTION customer_json_v1(p_primary_id bigint)
RETURNS json
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        WITH member AS (
            SELECT c.id, c.email, c.phone_number, c.linked_id,
                   row_number() OVER (ORDER BY c.linked_id IS NOT NULL, c.created_at, c.id) AS position
            FROM customer_contacts_v1(p_primary_id) c
        )
        SELECT json_build_object(
            'primaryContatctId', p_primary_id,
            'emails', coalesce(
                (SELECT json_agg(email ORDER BY first_position)
                 FROM (SELECT email, min(position) AS first_position
                       FROM member WHERE email IS NOT NULL GROUP BY email) e),
                '[]'::json),
            'phoneNumbers', coalesce(
                (SELECT json_agg(phone_number ORDER BY first_position)
                 FROM (SELECT phone_number, min(position) AS first_position
                       FROM member WHERE phone_number IS NOT NULL GROUP BY phone_number) p),
                '[]'::json),
            'secondaryContactIds', coalesce(
                (SELECT json_agg(id ORDER BY id) FROM member WHERE linked_id IS NOT NULL),
                '[]'::json)));
END
$$;


-- Link the request's contact details into one customer and answer with it.
-- created: 'primary', 'secondary' or NULL; merged: the primaries demoted into the survivor.
CREATE FUNCTION identify_v1(
    p_email text, p_phone_number text,
    OUT contact json, OUT created text, OUT merged bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    customer_ids bigint[];
    locked_ids bigint[];
    knows_all boolean;
    survivor bigint;
    -- The same keys as every other version of identify, so that hosts of two releases exclude
    -- each other (see the top of this file): the prefixes and the hash are part of the contract.
    email_key bigint := hashtextextended('email ' || p_email, 0);
    phone_key bigint := hashtextextended('phone ' || p_phone_number, 0);
BEGIN
    merged := '{}';
    -- Fast path, in one snapshot: one customer already holds every value the request carries.
    SELECT customer_json_v1(min(m.primary_id)) INTO contact
    FROM matching_customers_v1(p_email, p_phone_number) m
    HAVING count(*) = 1
       AND (p_email IS NULL OR bool_or(m.has_email))
       AND (p_phone_number IS NULL OR bool_or(m.has_phone_number));
    IF contact IS NOT NULL THEN
        RETURN;
    END IF;

    -- Rows that do not exist yet cannot be row-locked, so lock the identifiers themselves: until
    -- we commit, no other request can add a row with this email or phone number. Always the
    -- smaller key first, so two requests never wait on each other's second key.
    PERFORM pg_advisory_xact_lock(least(email_key, phone_key));
    IF email_key <> phone_key THEN
        PERFORM pg_advisory_xact_lock(greatest(email_key, phone_key));
    END IF;

    -- A new statement, so a new snapshot: it sees all that earlier holders of these locks wrote.
    SELECT array_agg(m.primary_id ORDER BY m.primary_id),
           (p_email IS NULL OR coalesce(bool_or(m.has_email), false))
           AND (p_phone_number IS NULL OR coalesce(bool_or(m.has_phone_number), false))
    INTO customer_ids, knows_all
    FROM matching_customers_v1(p_email, p_phone_number) m;

    IF customer_ids IS NULL THEN
        INSERT INTO contact (email, phone_number, link_precedence)
        VALUES (p_email, p_phone_number, 'primary')
        RETURNING id INTO survivor;
        created := 'primary';
    ELSE
        -- Every change to a customer holds its primary's row lock, so holding them all freezes the
        -- customers we touch. Taken in id order, so racing merges queue instead of deadlocking.
        -- A primary demoted while we waited fails the re-checked WHERE and drops out.
        SELECT array_agg(l.id ORDER BY l.id) INTO locked_ids
        FROM (SELECT c.id FROM contact c
              WHERE c.id = ANY (customer_ids) AND c.linked_id IS NULL AND c.deleted_at IS NULL
              ORDER BY c.id
              FOR UPDATE) l;
        IF locked_ids IS DISTINCT FROM customer_ids THEN
            -- Locking the new primary now would break the id order; start over instead.
            RAISE EXCEPTION 'a customer was merged while this request waited for it'
                USING ERRCODE = 'serialization_failure';
        END IF;

        SELECT c.id INTO survivor FROM contact c
        WHERE c.id = ANY (customer_ids)
        ORDER BY c.created_at, c.id
        LIMIT 1;
        merged := array_remove(customer_ids, survivor);
        IF merged <> '{}' THEN
            UPDATE contact c
            SET linked_id = survivor, link_precedence = 'secondary', updated_at = clock_timestamp()
            WHERE c.id = ANY (merged) OR c.linked_id = ANY (merged);
        END IF;

        IF NOT knows_all THEN
            INSERT INTO contact (email, phone_number, linked_id, link_precedence)
            VALUES (p_email, p_phone_number, survivor, 'secondary');
            created := 'secondary';
        END IF;
    END IF;

    contact := customer_json_v1(survivor);
END
$$;
