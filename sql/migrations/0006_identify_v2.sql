-- Reconciliation, version 2 (issue 12): every change recorded as an event in the same transaction,
-- and optional limits per customer that no request, and no merge, may take a customer past.
--
-- identify_v2 takes the same locks as identify_v1, in the same order (the contract at the top of
-- 0002_identify_v1.sql), so hosts of the release before, still calling identify_v1 during a rolling
-- deploy, exclude each other with hosts calling this. Their changes are neither recorded nor
-- limited: until the deploy ends, a customer may pass a limit through an old host.

-- What happened to customers, and why: support agents ask GET /contacts/{id}/history and .../path.
CREATE TABLE contact_event (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The X-Request-ID of the request that made the change.
    request_id   text,
    kind         text NOT NULL,
    -- The customer's primary after the change; for a refused link, the customer answered.
    survivor_id  bigint NOT NULL,
    -- Every contact involved: a new contact, the survivor, the primaries merged or kept apart.
    contact_ids  bigint[] NOT NULL,
    -- The request's values: what joined the customers. For a merge through an email of one
    -- customer and a phone number of another, this pair is the only evidence of the link, since no
    -- row may carry both.
    email        text,
    phone_number text,
    -- A refused link: the limit it would have passed.
    reason       text,
    CONSTRAINT contact_event_kind_known CHECK (kind IN ('created', 'merged', 'refused'))
);
COMMENT ON TABLE contact_event IS
    'Every new contact, merge and refused link, written in the transaction that made it.';
-- A customer's history: the events that name any of its contacts.
CREATE INDEX contact_event_contact_ids_idx ON contact_event USING gin (contact_ids);
-- The audit's recent refused links.
CREATE INDEX contact_event_refused_idx ON contact_event (at) WHERE kind = 'refused';


-- One event as the history and the audit show it.
CREATE FUNCTION contact_event_json_v1(event contact_event) RETURNS json
LANGUAGE sql IMMUTABLE AS $$
    SELECT json_strip_nulls(json_build_object(
        'at', event.at, 'requestId', event.request_id, 'kind', event.kind,
        'survivorId', event.survivor_id, 'contactIds', event.contact_ids,
        'email', event.email, 'phoneNumber', event.phone_number, 'reason', event.reason))
$$;


-- The primary of a live contact's customer; NULL when the contact or its primary is not live.
CREATE FUNCTION live_primary_of_v1(p_contact_id bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT p.id
    FROM contact c
    JOIN contact p ON p.id = coalesce(c.linked_id, c.id)
    WHERE c.id = p_contact_id AND c.deleted_at IS NULL AND p.deleted_at IS NULL AND p.linked_id IS NULL
$$;


-- The distinct values and the number of contacts of the customers (primary ids) taken together.
CREATE FUNCTION customers_totals_v1(
    p_primary_ids bigint[], OUT emails text[], OUT phone_numbers text[], OUT contacts bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(DISTINCT c.email) FILTER (WHERE c.email IS NOT NULL), '{}'),
           coalesce(array_agg(DISTINCT c.phone_number) FILTER (WHERE c.phone_number IS NOT NULL), '{}'),
           count(*)
    FROM unnest(p_primary_ids) AS p (id), customer_contacts_v1(p.id) c
$$;


-- The limit that joining the customers (and adding a row, unless knows_all) would pass, or NULL.
-- A limit of NULL is off.
CREATE FUNCTION passed_limit_v1(
    p_primary_ids bigint[], p_email text, p_phone_number text, p_knows_all boolean,
    p_max_emails int, p_max_phone_numbers int, p_max_contacts int)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    totals record;
BEGIN
    IF p_max_emails IS NULL AND p_max_phone_numbers IS NULL AND p_max_contacts IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO totals FROM customers_totals_v1(p_primary_ids);
    IF cardinality(totals.emails) + (p_email IS NOT NULL AND p_email <> ALL (totals.emails))::int
            > p_max_emails THEN
        RETURN format('at most %s emails per customer', p_max_emails);
    ELSIF cardinality(totals.phone_numbers)
            + (p_phone_number IS NOT NULL AND p_phone_number <> ALL (totals.phone_numbers))::int
            > p_max_phone_numbers THEN
        RETURN format('at most %s phone numbers per customer', p_max_phone_numbers);
    ELSIF totals.contacts + (NOT p_knows_all)::int > p_max_contacts THEN
        RETURN format('at most %s contacts per customer', p_max_contacts);
    END IF;
    RETURN NULL;
END
$$;


-- A new customer: its primary, and the event that records it.
CREATE FUNCTION create_primary_v1(p_email text, p_phone_number text, p_request_id text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO contact (email, phone_number, link_precedence)
    VALUES (p_email, p_phone_number, 'primary')
    RETURNING id INTO new_id;
    INSERT INTO contact_event (request_id, kind, survivor_id, contact_ids, email, phone_number)
    VALUES (p_request_id, 'created', new_id, ARRAY[new_id], p_email, p_phone_number);
    RETURN new_id;
END
$$;


-- Link the request's contact details into one customer, record what changed, and answer with it.
-- created: 'primary', 'secondary' or NULL; merged: the primaries demoted into the survivor;
-- refused: the limit a link would have passed (the request was then handled as its email alone).
CREATE FUNCTION identify_v2(
    p_email text, p_phone_number text, p_request_id text,
    p_max_emails int, p_max_phone_numbers int, p_max_contacts int,
    OUT contact json, OUT created text, OUT merged bigint[], OUT refused text)
LANGUAGE plpgsql AS $$
DECLARE
    customer_ids bigint[];
    locked_ids bigint[];
    knows_all boolean;
    survivor bigint;
    new_id bigint;
    -- The keys of the lock contract (0002_identify_v1.sql): the prefixes and the hash are part of it.
    email_key bigint := hashtextextended('email ' || p_email, 0);
    phone_key bigint := hashtextextended('phone ' || p_phone_number, 0);
BEGIN
    merged := '{}';
    -- Fast path, in one snapshot: one customer already holds every value the request carries.
    -- Nothing changes, so nothing is recorded and no limit can be passed.
    SELECT customer_json_v1(min(m.primary_id)) INTO contact
    FROM matching_customers_v1(p_email, p_phone_number) m
    HAVING count(*) = 1
       AND (p_email IS NULL OR bool_or(m.has_email))
       AND (p_phone_number IS NULL OR bool_or(m.has_phone_number));
    IF contact IS NOT NULL THEN
        RETURN;
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
        contact := customer_json_v1(survivor);
        RETURN;
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
    refused := passed_limit_v1(customer_ids, p_email, p_phone_number, knows_all,
                               p_max_emails, p_max_phone_numbers, p_max_contacts);
    IF refused IS NOT NULL THEN
        -- Only a request with both values can pass a limit (one value matches at most one customer
        -- and adds at most a new primary), so it is answered as its email alone: the customer its
        -- email matches, else a new one holding only the email. No row carries another customer's
        -- value, and the refused link is recorded.
        SELECT min(m.primary_id) INTO survivor FROM matching_customers_v1(p_email, NULL) m;
        IF survivor IS NULL THEN
            survivor := create_primary_v1(p_email, NULL, p_request_id);
            created := 'primary';
        END IF;
        INSERT INTO contact_event (request_id, kind, survivor_id, contact_ids, email, phone_number, reason)
        VALUES (p_request_id, 'refused', survivor, survivor || locked_ids, p_email, p_phone_number, refused);
        contact := customer_json_v1(survivor);
        RETURN;
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

    contact := customer_json_v1(survivor);
END
$$;
