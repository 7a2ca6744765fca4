-- Batches, version 3 (issue 10): identify_batch_v2's answers, events and limits, with the items
-- that change nothing answered together, in one statement, instead of one identify_v3 call each.
--
-- A statement's cost here is mostly its start (planning, executor start-up), not its rows: by perf,
-- identify_v3 answering a returning customer takes about 55 µs, of which customer_json_v1 alone
-- 41 µs, and identify_batch_v2 called it for every item. Most items of a batch only read (the
-- checkout mix: 80 in 100); one statement reads all of them for about 15 µs each.
--
-- Which items. After the batch's identifier locks, an item is *unchanged* when one customer already
-- holds every value it carries: identify_v3's fast path, which writes nothing and checks no limit.
-- An item *touches* a customer when it is not unchanged and the customer holds one of its values now.
-- The batch's changes reach only customers some earlier item touches: an item changes the customers
-- holding its values when it runs, and those are customers holding them now, or customers an earlier
-- change reached (by induction, touched by an earlier item), or ones the batch created. So an
-- unchanged item that no earlier item touches finds its customer as it is now, and is answered from
-- now; every other item goes through identify_v3 in order, as in identify_batch_v2 (which also
-- answers an item that turns out to change nothing).
--
-- Locks (the contract of 0002_identify_v1.sql, widened to a set as import_customers_v1 widens it,
-- 0011_import_customers_v1.sql): every identifier's advisory lock first, ascending; then, in a fresh
-- snapshot, the primaries of every customer holding one of the values FOR UPDATE in id order. "Now"
-- above is that frozen state: no other transaction can add a row with one of the batch's values,
-- and every change to a customer needs its primary's lock, so answers read from it stay true until
-- the item's turn, even while other requests run. A primary demoted while we waited raises
-- serialization_failure, retried with the whole transaction. identify_v3 then retakes locks this
-- transaction holds, or locks rows the batch created, so unlike identify_batch_v2 a batch no longer
-- takes row locks item by item, out of id order. identify_batch_v2 stays for hosts of the release
-- before during a rolling deploy.


-- plpgsql, as each function here, so that its plans are kept for the session: PostgreSQL 15 plans a
-- SQL function's body on every call from another statement (README, "Speed").
--
-- Which items may be answered from the start, and which customers to lock: fast_ids holds, for each
-- item that is unchanged and that no earlier item touches (see the top), its customer's primary id,
-- else NULL; holder_ids every customer holding any of the items' values, ascending.
CREATE FUNCTION batch_plan_v1(p_emails text[], p_phone_numbers text[],
                              OUT fast_ids bigint[], OUT holder_ids bigint[])
LANGUAGE plpgsql STABLE AS $$
BEGIN
    WITH holder AS (
        SELECT it.n, it.email, it.phone_number, m.primary_id, m.has_email, m.has_phone_number
        FROM unnest(p_emails, p_phone_numbers) WITH ORDINALITY AS it (email, phone_number, n)
        CROSS JOIN LATERAL matching_customers_v1(it.email, it.phone_number) m
    ), verdict AS (
        SELECT h.n, min(h.primary_id) AS primary_id,
               count(*) = 1 AND (min(h.email) IS NULL OR bool_or(h.has_email))
               AND (min(h.phone_number) IS NULL OR bool_or(h.has_phone_number)) AS unchanged
        FROM holder h GROUP BY h.n
    ), first_change AS (
        -- Items without a holder may change something too, but they touch no customer held now.
        SELECT h.primary_id, min(h.n) AS n
        FROM holder h JOIN verdict v ON v.n = h.n
        WHERE NOT v.unchanged
        GROUP BY h.primary_id
    )
    SELECT array_agg(CASE WHEN v.unchanged AND coalesce(f.n > v.n, true) THEN v.primary_id END ORDER BY it.n),
           ARRAY(SELECT DISTINCT h.primary_id FROM holder h ORDER BY h.primary_id)
    INTO fast_ids, holder_ids
    FROM generate_series(1, cardinality(p_emails)) AS it (n)
    LEFT JOIN verdict v ON v.n = it.n
    LEFT JOIN first_change f ON f.primary_id = v.primary_id;
END
$$;


-- Lock the customers (primary ids, ascending) FOR UPDATE in id order, as identify takes them;
-- serialization_failure when one was merged or deleted while we waited, as in identify_v3.
CREATE FUNCTION lock_primaries_v1(p_primary_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    locked_ids bigint[];
BEGIN
    SELECT coalesce(array_agg(l.id ORDER BY l.id), '{}') INTO locked_ids
    FROM (SELECT c.id FROM contact c
          WHERE c.id = ANY (p_primary_ids) AND c.linked_id IS NULL AND c.deleted_at IS NULL
          ORDER BY c.id
          FOR UPDATE) l;
    IF locked_ids IS DISTINCT FROM p_primary_ids THEN
        RAISE EXCEPTION 'a customer of the batch was merged while it waited'
            USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;


-- customer_json_v1 of each primary id, in the order given (NULL for NULL), read by one statement.
-- A customer's live contacts are its primary and the live rows linked to it: linked_id always names
-- the primary, so customer_contacts_v1's walk never goes deeper (as passed_limit_v2 counts them,
-- 0010_identify_v3.sql). Each id must be a live primary, as matching_customers_v1 finds them.
CREATE FUNCTION customer_json_each_v1(p_primary_ids bigint[]) RETURNS json[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        WITH member AS (
            SELECT coalesce(c.linked_id, c.id) AS customer, c.id, c.email, c.phone_number, c.linked_id,
                   row_number() OVER (PARTITION BY coalesce(c.linked_id, c.id)
                                      ORDER BY c.linked_id IS NOT NULL, c.created_at, c.id) AS position
            FROM contact c
            WHERE (c.id = ANY (p_primary_ids) OR c.linked_id = ANY (p_primary_ids)) AND c.deleted_at IS NULL
        ), emails AS (
            SELECT e.customer, json_agg(e.email ORDER BY e.first_position) AS emails
            FROM (SELECT customer, email, min(position) AS first_position
                  FROM member WHERE email IS NOT NULL GROUP BY customer, email) e
            GROUP BY e.customer
        ), phone_numbers AS (
            SELECT p.customer, json_agg(p.phone_number ORDER BY p.first_position) AS phone_numbers
            FROM (SELECT customer, phone_number, min(position) AS first_position
                  FROM member WHERE phone_number IS NOT NULL GROUP BY customer, phone_number) p
            GROUP BY p.customer
        ), secondaries AS (
            SELECT customer, json_agg(id ORDER BY id) AS ids
            FROM member WHERE linked_id IS NOT NULL GROUP BY customer
        )
        SELECT array_agg(CASE WHEN w.id IS NOT NULL THEN json_build_object(
                   'primaryContatctId', w.id,
                   'emails', coalesce(e.emails, '[]'::json),
                   'phoneNumbers', coalesce(p.phone_numbers, '[]'::json),
                   'secondaryContactIds', coalesce(s.ids, '[]'::json)) END ORDER BY w.n)
        FROM unnest(p_primary_ids) WITH ORDINALITY AS w (id, n)
        LEFT JOIN emails e ON e.customer = w.id
        LEFT JOIN phone_numbers p ON p.customer = w.id
        LEFT JOIN secondaries s ON s.customer = w.id);
END
$$;


-- identify_batch_v2's answers: each item as identify_v3 answers it had the items been sent one by one
-- in order, in one transaction; the items that change nothing and that no earlier item touches are
-- answered together, from the start (see the top).
CREATE FUNCTION identify_batch_v3(
    p_emails text[], p_phone_numbers text[], p_request_id text,
    p_max_emails int, p_max_phone_numbers int, p_max_contacts int,
    OUT item int, OUT outcome json)
RETURNS SETOF record
LANGUAGE plpgsql
-- Every statement the batch runs, identify_v3's included, with a plan kept for the session: in the
-- default mode PostgreSQL re-plans a statement for its arguments on every call when that plan looks
-- cheaper than the generic one, as it does with array arguments and NULLs, and a batch runs
-- identify_v3's statements for up to 1,000 items (a batch of the checkout mix: 7.2 against 9.3 ms in
-- the database). tests/test_query_plans.py holds identify's generic plans, and the batch's, to index
-- scans on a million rows.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    plan record;
    fast json[];
BEGIN
    PERFORM lock_identifiers_v2(p_emails, p_phone_numbers);
    -- A new snapshot, under all the identifier locks; then the customers it found, frozen. What it
    -- read of them still holds once they are locked: nobody else adds or removes a row with one of
    -- the batch's values, and a holder merged into another or deleted meanwhile fails lock_primaries_v1.
    plan := batch_plan_v1(p_emails, p_phone_numbers);
    PERFORM lock_primaries_v1(plan.holder_ids);
    fast := customer_json_each_v1(plan.fast_ids);
    FOR i IN 1 .. coalesce(array_length(p_emails, 1), 0) LOOP
        -- Items count from 0, as the body's list does; each item's events carry the request's id
        -- and its index.
        item := i - 1;
        IF fast[i] IS NOT NULL THEN
            outcome := identify_outcome_json_v1(fast[i], NULL, '{}', NULL);
        ELSE
            outcome := identify_v3(p_emails[i], p_phone_numbers[i], p_request_id || '.' || item,
                                   p_max_emails, p_max_phone_numbers, p_max_contacts);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
