-- Reconciliation, version 3: identify_v2's rules, locks, events and answers, with its limits checked
-- at a fraction of the cost.
--
-- passed_limit_v1 read the customers' totals through customers_totals_v1: a SQL function returning
-- one row, which PostgreSQL does not inline and so plans on every call, over customer_contacts_v1's
-- recursive walk. Measured by callgrind, that cost about a million server instructions for each
-- request that adds a value or merges, 90k per request of the checkout mix (README, "With blocked
-- values and limits on"). passed_limit_v2 counts the same rows with one plain query, whose plan
-- plpgsql keeps for the session: 26k per request of the mix.
--
-- identify_v3 answers with one json value rather than four OUT columns, so the statement a request
-- sends is `SELECT identify_v3(...)`: a call in the select list, which PostgreSQL plans and runs
-- without the function scan (and the tuplestore it fills) that `SELECT ... FROM identify_v2(...)`
-- needs. A statement is planned anew on every request since it is no longer prepared (README,
-- "PgBouncer"); by callgrind a returning customer's call costs the server 524k instructions in this
-- form against 569k in the old one, and 536k in the old one prepared.
--
-- identify_v3 takes the same locks as identify_v1 and identify_v2, in the same order (the contract
-- at the top of 0002_identify_v1.sql), so hosts of the release before, calling identify_v2 during a
-- rolling deploy, exclude each other with hosts calling this; both record events and apply limits
-- alike.


-- The limit that joining the customers (and adding a row, unless knows_all) would pass, or NULL.
-- A limit of NULL is off. The same answers as passed_limit_v1, in the same order of checks.
CREATE FUNCTION passed_limit_v2(
    p_primary_ids bigint[], p_email text, p_phone_number text, p_knows_all boolean,
    p_max_emails int, p_max_phone_numbers int, p_max_contacts int)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    emails bigint;
    phone_numbers bigint;
    contacts bigint;
    has_email boolean;
    has_phone_number boolean;
BEGIN
    IF p_max_emails IS NULL AND p_max_phone_numbers IS NULL AND p_max_contacts IS NULL THEN
        RETURN NULL;
    END IF;
    -- A customer's live contacts are its primary and the live rows linked to it: linked_id always
    -- names the primary (every merge relinks the secondaries of the primaries it demotes in the
    -- same UPDATE), so the recursive walk of customer_contacts_v1 never goes deeper, and two index
    -- scans find the same rows.
    SELECT count(DISTINCT c.email), count(DISTINCT c.phone_number), count(*),
           coalesce(bool_or(c.email = p_email), false),
           coalesce(bool_or(c.phone_number = p_phone_number), false)
    INTO emails, phone_numbers, contacts, has_email, has_phone_number
    FROM contact c
    WHERE (c.id = ANY (p_primary_ids) OR c.linked_id = ANY (p_primary_ids)) AND c.deleted_at IS NULL;
    IF emails + (p_email IS NOT NULL AND NOT has_email)::int > p_max_emails THEN
        RETURN format('at most %s emails per customer', p_max_emails);
    ELSIF phone_numbers + (p_phone_number IS NOT NULL AND NOT has_phone_number)::int > p_max_phone_numbers THEN
        RETURN format('at most %s phone numbers per customer', p_max_phone_numbers);
    ELSIF contacts + (NOT p_knows_all)::int > p_max_contacts THEN
        RETURN format('at most %s contacts per customer', p_max_contacts);
    END IF;
    RETURN NULL;
END
$$;


-- What identify_v3 answers: the customer (customer_json_v1's shape) and what the request changed.
-- STABLE like json_build_object, so plpgsql inlines it.
CREATE FUNCTION identify_outcome_json_v1(
    p_contact json, p_created text, p_merged bigint[], p_refused text) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('contact', p_contact, 'created', p_created, 'merged', p_merged,
                             'refused', p_refused)
$$;


-- Link the request's contact details into one customer, record what changed, and answer with it:
-- {"contact": the customer, "created": 'primary', 'secondary' or null, "merged": the primaries
-- demoted into the survivor, "refused": the limit a link would have passed (the request was then
-- handled as its email alone) or null}.
-- identify_v2 line for line, but for passed_limit_v2 and the answer's form (0006_identify_v2.sql
-- explains each step).
CREATE FUNCTION identify_v3(
    p_email text, p_phone_number text, p_request_id text,
    p_max_emails int, p_max_phone_numbers int, p_max_contacts int)
RETURNS json
LANGUAGE plpgsql AS $$
DECLARE
    contact json;
    created text;
    merged bigint[] := '{}';
    refused text;
    customer_ids bigint[];
    locked_ids bigint[];
    knows_all boolean;
    survivor bigint;
    new_id bigint;
    -- The keys of the lock contract (0002_identify_v1.sql): the prefixes and the hash are part of it.
    email_key bigint := hashtextextended('email ' || p_email, 0);
    phone_key bigint := hashtextextended('phone ' || p_phone_number, 0);
BEGIN
    -- Fast path, in one snapshot: one customer already holds every value the request carries.
    -- Nothing changes, so nothing is recorded and no limit can be passed.
    SELECT customer_json_v1(min(m.primary_id)) INTO contact
    FROM matching_customers_v1(p_email, p_phone_number) m
    HAVING count(*) = 1
       AND (p_email IS NULL OR bool_or(m.has_email))
       AND (p_phone_number IS NULL OR bool_or(m.has_phone_number));
    IF contact IS NOT NULL THEN
        RETURN identify_outcome_json_v1(contact, created, merged, refused);
    END IF;

    -- Identifier locks, the smaller key first (the contract): until we commit, no other request
    -- can add a row with this email or phone number.
    PERFORM pg_advisory_xact_lock(least(email_key, phone_key));
    IF email_key <> phone_key THEN
        PERFORM pg_advisory_xact_lock(greatest(email_key, phone_key));
    END IF;

    -- A new snapshot, which sees all that earlier holders of these locks wrote.
    SELECT array_agg(m.primary_id ORDER BY m.primary_id),
           (p_email IS NULL OR coalesce(bool_or(m.has_email), false))
           AND (p_phone_number IS NULL OR coalesce(bool_or(m.has_phone_number), false))
    INTO customer_ids, knows_all
    FROM matching_customers_v1(p_email, p_phone_number) m;

    IF customer_ids IS NULL THEN
        survivor := create_primary_v1(p_email, p_phone_number, p_request_id);
        created := 'primary';
        RETURN identify_outcome_json_v1(customer_json_v1(survivor), created, merged, refused);
    END IF;

    -- Customer locks in id order (the contract); a primary demoted while we waited drops out of the
    -- locked set, and we start over rather than lock its new primary out of order.
    SELECT array_agg(l.id ORDER BY l.id) INTO locked_ids
    FROM (SELECT c.id FROM contact c
          WHERE c.id = ANY (customer_ids) AND c.linked_id IS NULL AND c.deleted_at IS NULL
          ORDER BY c.id
          FOR UPDATE) l;
    IF locked_ids IS DISTINCT FROM customer_ids THEN
        RAISE EXCEPTION 'a customer was merged while this request waited for it'
            USING ERRCODE = 'serialization_failure';
    END IF;

    -- With the customers frozen their totals cannot move: racing merges near a limit queue on these
    -- locks, and each sees the totals the one before it left.
    refused := passed_limit_v2(customer_ids, p_email, p_phone_number, knows_all,
                               p_max_emails, p_max_phone_numbers, p_max_contacts);
    IF refused IS NOT NULL THEN
        -- Answered as its email alone (0006_identify_v2.sql says why only a request with both
        -- values gets here); no row carries another customer's value, and the refusal is recorded.
        SELECT min(m.primary_id) INTO survivor FROM matching_customers_v1(p_email, NULL) m;
        IF survivor IS NULL THEN
            survivor := create_primary_v1(p_email, NULL, p_request_id);
            created := 'primary';
        END IF;
        INSERT INTO contact_event (request_id, kind, survivor_id, contact_ids, email, phone_number, reason)
        VALUES (p_request_id, 'refused', survivor, survivor || locked_ids, p_email, p_phone_number, refused);
        RETURN identify_outcome_json_v1(customer_json_v1(survivor), created, merged, refused);
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
        INSERT INTO contact_event (request_id, kind, survivor_id, contact_ids, email, phone_number)
        VALUES (p_request_id, 'merged', survivor, survivor || merged, p_email, p_phone_number);
    END IF;

    IF NOT knows_all THEN
        INSERT INTO contact (email, phone_number, linked_id, link_precedence)
        VALUES (p_email, p_phone_number, survivor, 'secondary')
        RETURNING id INTO new_id;
        created := 'secondary';
        INSERT INTO contact_event (request_id, kind, survivor_id, contact_ids, email, phone_number)
        VALUES (p_request_id, 'created', survivor, ARRAY[new_id, survivor], p_email, p_phone_number);
    END IF;

    RETURN identify_outcome_json_v1(customer_json_v1(survivor), created, merged, refused);
END
$$;


-- The advisory locks of every identifier given, once each, in ascending key order: the keys and the
-- order of lock_identifiers_v1 (0007_renormalise_contact_v1.sql), taken in one set-based statement
-- rather than one PERFORM per key, about four times faster; a batch or an import chunk takes two per
-- item.
CREATE FUNCTION lock_identifiers_v2(p_emails text[], p_phone_numbers text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- PERFORM runs the query to its end, so every key is locked; the sorted subquery feeds them in
    -- key order, so two holders of several keys never hold one each while waiting for the other's.
    PERFORM pg_advisory_xact_lock(keys.k)
    FROM (SELECT DISTINCT k FROM (
              SELECT hashtextextended('email ' || e, 0) FROM unnest(p_emails) e WHERE e IS NOT NULL
              UNION
              SELECT hashtextextended('phone ' || p, 0) FROM unnest(p_phone_numbers) p WHERE p IS NOT NULL
          ) all_keys(k)
          ORDER BY k) keys;
END
$$;


-- identify_batch_v1 (0008_identify_batch_v1.sql, which explains its locks) with each item answered by
-- identify_v3, in its form, and its locks taken by lock_identifiers_v2.
CREATE FUNCTION identify_batch_v2(
    p_emails text[], p_phone_numbers text[], p_request_id text,
    p_max_emails int, p_max_phone_numbers int, p_max_contacts int,
    OUT item int, OUT outcome json)
RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    i int;
BEGIN
    PERFORM lock_identifiers_v2(p_emails, p_phone_numbers);
    FOR i IN 1 .. coalesce(array_length(p_emails, 1), 0) LOOP
        -- Items count from 0, as the body's list does; each item's events carry the request's id
        -- and its index.
        item := i - 1;
        outcome := identify_v3(p_emails[i], p_phone_numbers[i], p_request_id || '.' || item,
                               p_max_emails, p_max_phone_numbers, p_max_contacts);
        RETURN NEXT;
    END LOOP;
END
$$;
