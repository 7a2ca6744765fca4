-- Many checkouts in one statement: each item answered as identify_v2 answers it had the items been
-- sent one by one in order (a later item sees what the earlier ones wrote), all in one transaction.
--
-- Locks (the contract of 0002_identify_v1.sql, widened to a set): the advisory locks of every
-- identifier of every item are taken first, once each, in ascending key order, so two batches (or a
-- batch and single requests, which take at most two keys, also ascending) never hold one key each
-- while waiting for the other's. identify_v2 then retakes a key this transaction holds, which is
-- free. Its row locks are taken item by item, so across items they are not in one id order: a
-- deadlock the server detects there is retried with the whole transaction, as every deadlock is
-- (identity/retrying.py).
-- lock_identifiers_v1, which takes them, is created by 0007_renormalise_contact_v1.sql.


CREATE FUNCTION identify_batch_v1(
    p_emails text[], p_phone_numbers text[], p_request_id text,
    p_max_emails int, p_max_phone_numbers int, p_max_contacts int,
    OUT item int, OUT contact json, OUT created text, OUT merged bigint[], OUT refused text)
RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    i int;
BEGIN
    PERFORM lock_identifiers_v1(p_emails, p_phone_numbers);
    FOR i IN 1 .. coalesce(array_length(p_emails, 1), 0) LOOP
        -- Items count from 0, as the body's list does; each item's events carry the request's id
        -- and its index.
        item := i - 1;
        SELECT v.contact, v.created, v.merged, v.refused INTO contact, created, merged, refused
        FROM identify_v2(p_emails[i], p_phone_numbers[i], p_request_id || '.' || item,
                         p_max_emails, p_max_phone_numbers, p_max_contacts) v;
        RETURN NEXT;
    END LOOP;
END
$$;
