-- Erasure on request, and undoing a wrong link (issue 13): customers re-derived from what remains.
--
-- Locks: every function here takes the contract of 0002_identify_v1.sql, widened to a set as the
-- batch does (0008): the advisory locks of every value its customers hold, once each and ascending
-- (lock_identifiers_v1), then their primaries' row locks in id order. A request with any of those
-- values waits on its advisory lock until the erasure commits, and then its fresh snapshot sees the
-- customers as the erasure left them; a primary demoted or a value added while we waited makes us
-- start over (serialization_failure, retried by the caller) rather than lock out of order.


-- An erased row is soft-deleted and may hold no value; a live row still holds one. The new check is
-- weaker than the old, so every row passes it; the scan runs under the ALTER's exclusive lock (README,
-- "Erasure and unlinking": how long on a table of a million rows).
ALTER TABLE contact DROP CONSTRAINT contact_has_email_or_phone_number;
ALTER TABLE contact ADD CONSTRAINT contact_live_has_email_or_phone_number
    CHECK (email IS NOT NULL OR phone_number IS NOT NULL OR deleted_at IS NOT NULL);

-- linked: links made before events were recorded, kept as they are (recorded once, below);
-- erased: a customer or a value erased; unlinked: a blocked value's customers re-derived;
-- rederived: a deleted primary's customer re-derived (below).
ALTER TABLE contact_event DROP CONSTRAINT contact_event_kind_known;
ALTER TABLE contact_event ADD CONSTRAINT contact_event_kind_known
    CHECK (kind IN ('created', 'merged', 'refused', 'linked', 'erased', 'unlinked', 'rederived'));


-- Lock the customers (primary ids, ascending) and every value they hold, with p_emails and
-- p_phone_numbers besides, as the contract says; raise serialization_failure when a primary was
-- demoted or a customer gained a value while we waited.
CREATE FUNCTION lock_customers_v1(p_primary_ids bigint[], p_emails text[], p_phone_numbers text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    held record;
    held_now record;
    locked_ids bigint[];
BEGIN
    SELECT * INTO held FROM customer_values_v1(p_primary_ids);
    PERFORM lock_identifiers_v1(held.emails || p_emails, held.phone_numbers || p_phone_numbers);
    SELECT array_agg(l.id ORDER BY l.id) INTO locked_ids
    FROM (SELECT c.id FROM contact c
          WHERE c.id = ANY (p_primary_ids) AND c.linked_id IS NULL
          ORDER BY c.id
          FOR UPDATE) l;
    -- With the primaries locked the customers are frozen: a value added before we got here has no
    -- advisory lock of ours, so we start over.
    SELECT * INTO held_now FROM customer_values_v1(p_primary_ids);
    IF coalesce(locked_ids, '{}') IS DISTINCT FROM p_primary_ids
            OR NOT (held_now.emails <@ held.emails AND held_now.phone_numbers <@ held.phone_numbers) THEN
        RAISE EXCEPTION 'a customer changed while the erasure waited for it'
            USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;


-- Every value the rows of the customers (primary ids) hold, live rows or not.
CREATE FUNCTION customer_values_v1(p_primary_ids bigint[], OUT emails text[], OUT phone_numbers text[])
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(DISTINCT c.email) FILTER (WHERE c.email IS NOT NULL), '{}'),
           coalesce(array_agg(DISTINCT c.phone_number) FILTER (WHERE c.phone_number IS NOT NULL), '{}')
    FROM contact c
    WHERE c.id = ANY (p_primary_ids) OR c.linked_id = ANY (p_primary_ids)
$$;


-- The primaries of the live customers holding the email or the phone number, ascending.
CREATE FUNCTION holders_v1(p_email text, p_phone_number text) RETURNS bigint[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(m.primary_id ORDER BY m.primary_id), '{}')
    FROM matching_customers_v1(p_email, p_phone_number) m
$$;


-- Re-derive the customers (primary ids, ascending; the caller holds their locks) from their live rows:
-- rows are joined by a value they share (but p_unlinked_email / p_unlinked_phone_number), by a recorded
-- request that carried an email of one and a phone number of the other, and by a 'linked' event
-- (links older than the record, kept as they are). Each connected group becomes a customer whose
-- oldest row is its primary, the others linked straight to it; a group holding the old primary keeps
-- it. With p_across false each customer is re-derived on its own (it may split, never join another);
-- with p_across true groups may join rows of several. One event of p_kind per customer, naming its
-- old primary and then the other primaries its rows now have. Returns the primaries, ascending.
CREATE FUNCTION rederive_v1(
    p_primary_ids bigint[], p_across boolean, p_unlinked_email text, p_unlinked_phone_number text,
    p_kind text, p_reason text, p_request_id text)
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    member_ids bigint[];
    tops bigint[];
BEGIN
    -- Scratch tables of this transaction; a second call in it starts them afresh.
    CREATE TEMPORARY TABLE IF NOT EXISTS rederive_node (
        id bigint PRIMARY KEY, old_primary bigint, grp bigint, label bigint, top bigint,
        created_at timestamptz, email text, phone_number text) ON COMMIT DROP;
    CREATE TEMPORARY TABLE IF NOT EXISTS rederive_edge (a bigint, b bigint) ON COMMIT DROP;
    TRUNCATE rederive_node, rederive_edge;

    INSERT INTO rederive_node (id, old_primary, grp, label, created_at, email, phone_number)
    SELECT c.id, coalesce(c.linked_id, c.id), CASE WHEN p_across THEN 0 ELSE coalesce(c.linked_id, c.id) END,
           c.id, c.created_at, nullif(c.email, p_unlinked_email), nullif(c.phone_number, p_unlinked_phone_number)
    FROM contact c
    WHERE (c.id = ANY (p_primary_ids) OR c.linked_id = ANY (p_primary_ids)) AND c.deleted_at IS NULL;
    SELECT array_agg(c.id) INTO member_ids
    FROM contact c WHERE c.id = ANY (p_primary_ids) OR c.linked_id = ANY (p_primary_ids);

    PERFORM rederive_edges_v1(member_ids);
    PERFORM rederive_label_v1();

    UPDATE rederive_node n SET top = t.top
    FROM (SELECT m.id, first_value(m.id) OVER (PARTITION BY m.label ORDER BY m.created_at, m.id) AS top
          FROM rederive_node m) t
    WHERE n.id = t.id;
    UPDATE contact c
    SET linked_id = nullif(n.top, c.id),
        link_precedence = CASE WHEN n.top = c.id THEN 'primary' ELSE 'secondary' END,
        updated_at = clock_timestamp()
    FROM rederive_node n
    WHERE c.id = n.id AND c.linked_id IS DISTINCT FROM nullif(n.top, c.id);

    INSERT INTO contact_event (request_id, kind, survivor_id, contact_ids, reason)
    SELECT p_request_id, p_kind, p.id,
           p.id || coalesce((SELECT array_agg(DISTINCT n.top ORDER BY n.top) FROM rederive_node n
                             WHERE n.old_primary = p.id AND n.top <> p.id), '{}'),
           p_reason
    FROM unnest(p_primary_ids) AS p (id)
    ORDER BY p.id;
    SELECT coalesce(array_agg(DISTINCT n.top ORDER BY n.top), '{}') INTO tops FROM rederive_node n;
    RETURN tops;
END
$$;


-- The evidence between rederive_node's rows, as edges (each row to one representative of a group it
-- shares: a star, not a clique, so that a value of thousands of rows costs thousands of edges).
-- plpgsql: a SQL function's body is checked at creation, before the scratch tables exist.
CREATE FUNCTION rederive_edges_v1(p_member_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rederive_edge (a, b)
    SELECT n.id, min(n.id) OVER (PARTITION BY n.grp, n.email) FROM rederive_node n WHERE n.email IS NOT NULL
    UNION ALL
    SELECT n.id, min(n.id) OVER (PARTITION BY n.grp, n.phone_number)
    FROM rederive_node n WHERE n.phone_number IS NOT NULL
    UNION ALL
    -- A request that carried both values joined their holders; only while both values survive (an
    -- erased one is blanked in the event too, an unlinked one is no evidence). Found by value, not by
    -- the contacts an event names: after a split those may be another customer's. So every event is
    -- read (README, "Erasure and unlinking", the cost).
    SELECT min(by_email.id), min(by_phone.id)
    FROM contact_event e
    JOIN rederive_node by_email ON by_email.email = e.email
    JOIN rederive_node by_phone ON by_phone.phone_number = e.phone_number AND by_phone.grp = by_email.grp
    WHERE e.kind IN ('created', 'merged')
    GROUP BY e.id, by_email.grp
    UNION ALL
    -- Links older than the record of evidence: the live rows one 'linked' event names stay together.
    SELECT n.id, min(n.id) OVER (PARTITION BY e.id, n.grp)
    FROM contact_event e
    JOIN rederive_node n ON n.id = ANY (e.contact_ids)
    WHERE e.kind = 'linked' AND e.contact_ids && p_member_ids;
END
$$;


-- Label every row of rederive_node with the smallest id of its connected group over rederive_edge:
-- each round takes the smallest label among a row's neighbours, until no label moves (as many rounds
-- as the longest shortest path, which the star edges keep short).
CREATE FUNCTION rederive_label_v1() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        UPDATE rederive_node n SET label = m.label
        FROM (SELECT x.id, min(y.label) AS label
              FROM (SELECT a AS id, b AS other FROM rederive_edge
                    UNION ALL
                    SELECT b, a FROM rederive_edge) x
              JOIN rederive_node y ON y.id = x.other
              GROUP BY x.id) m
        WHERE n.id = m.id AND m.label < n.label;
        EXIT WHEN NOT FOUND;
    END LOOP;
END
$$;


-- Erase the customer a contact belongs to: every row's values blanked and the row soft-deleted, its
-- values blanked in every event, and one 'erased' event.
-- known is false for an id no row has; a contact already erased answers zero counts.
CREATE FUNCTION erase_customer_v1(
    p_contact_id bigint, p_request_id text,
    OUT known boolean, OUT erased_ids bigint[], OUT emails int, OUT phone_numbers int, OUT events int)
LANGUAGE plpgsql AS $$
DECLARE
    primary_id bigint;
    live boolean;
    still_there boolean;
    held record;
BEGIN
    erased_ids := '{}';
    emails := 0;
    phone_numbers := 0;
    events := 0;
    SELECT coalesce(c.linked_id, c.id), c.deleted_at IS NULL INTO primary_id, live
    FROM contact c WHERE c.id = p_contact_id;
    known := primary_id IS NOT NULL;
    IF NOT coalesce(live, false) THEN
        RETURN;
    END IF;

    -- A merge that demoted the primary meanwhile makes this raise; the retry erases the customer the
    -- contact belongs to then.
    PERFORM lock_customers_v1(ARRAY[primary_id], '{}', '{}');
    -- With the primary locked its customer is frozen; but while we waited another erasure may have
    -- erased the contact (then this one, serially after it, erases nothing) or split it off into
    -- another customer (then we start over, for that one).
    SELECT coalesce(c.linked_id, c.id) = primary_id, c.deleted_at IS NULL INTO still_there, live
    FROM contact c WHERE c.id = p_contact_id;
    IF NOT live THEN
        RETURN;
    ELSIF NOT still_there THEN
        RAISE EXCEPTION 'the contact changed customer while the erasure waited'
            USING ERRCODE = 'serialization_failure';
    END IF;
    SELECT * INTO held FROM customer_values_v1(ARRAY[primary_id]);
    emails := cardinality(held.emails);
    phone_numbers := cardinality(held.phone_numbers);

    WITH erased AS (
        UPDATE contact c
        SET email = NULL, phone_number = NULL, deleted_at = coalesce(c.deleted_at, clock_timestamp()),
            updated_at = clock_timestamp()
        WHERE (c.id = primary_id OR c.linked_id = primary_id)
          AND (c.deleted_at IS NULL OR c.email IS NOT NULL OR c.phone_number IS NOT NULL)
        RETURNING c.id, c.id = primary_id AS is_primary
    )
    SELECT array_agg(e.id ORDER BY NOT e.is_primary, e.id) INTO erased_ids FROM erased e;

    -- Its values are blanked wherever an event carries them, one by one: a value of another customer
    -- in the same event stays, since it may be that customer's evidence. A refused link is evidence of
    -- nothing, so one naming the customer keeps no value at all. Every event is read: no index leads
    -- from a value to its events (README, "Erasure and unlinking", the cost).
    WITH blanked AS (
        UPDATE contact_event e
        SET email = CASE WHEN e.email = ANY (held.emails) OR (e.kind = 'refused' AND e.contact_ids && erased_ids)
                         THEN NULL ELSE e.email END,
            phone_number = CASE WHEN e.phone_number = ANY (held.phone_numbers)
                                     OR (e.kind = 'refused' AND e.contact_ids && erased_ids)
                                THEN NULL ELSE e.phone_number END
        WHERE (e.email = ANY (held.emails) OR e.phone_number = ANY (held.phone_numbers)
               OR (e.kind = 'refused' AND e.contact_ids && erased_ids))
          AND (e.email IS NOT NULL OR e.phone_number IS NOT NULL)
        RETURNING 1
    )
    SELECT count(*) INTO events FROM blanked;
    INSERT INTO contact_event (request_id, kind, survivor_id, contact_ids, reason)
    VALUES (p_request_id, 'erased', primary_id, erased_ids, 'customer erased');
END
$$;


-- The customers holding one value (give the email or the phone number), locked with the value as
-- lock_customers_v1 locks them: their primary ids.
CREATE FUNCTION locked_holders_v1(p_email text, p_phone_number text) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    primary_ids bigint[] := holders_v1(p_email, p_phone_number);
BEGIN
    PERFORM lock_customers_v1(primary_ids, ARRAY[p_email], ARRAY[p_phone_number]);
    -- Under the value's advisory lock no new holder can appear; one that appeared before it did means
    -- starting over.
    IF holders_v1(p_email, p_phone_number) IS DISTINCT FROM primary_ids THEN
        RAISE EXCEPTION 'a customer took the value while this waited for it'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN primary_ids;
END
$$;


-- The customers (primary ids) as identify answers each, in id order.
CREATE FUNCTION customers_json_v1(p_primary_ids bigint[]) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT coalesce(json_agg(customer_json_v1(t) ORDER BY t), '[]'::json) FROM unnest(p_primary_ids) t
$$;


-- Erase one value (give the email or the phone number): blanked on every row holding it, live or
-- not, and in every event; a row left with no value is soft-deleted. Then every customer that held
-- it is re-derived from what remains. customers: the customers that result, by primary id.
CREATE FUNCTION erase_value_v1(
    p_email text, p_phone_number text, p_request_id text,
    OUT contacts int, OUT deleted int, OUT events int, OUT customers json)
LANGUAGE plpgsql AS $$
DECLARE
    primary_ids bigint[] := locked_holders_v1(p_email, p_phone_number);
    tops bigint[];
BEGIN

    WITH blanked AS (
        UPDATE contact c
        SET email = nullif(c.email, p_email), phone_number = nullif(c.phone_number, p_phone_number),
            deleted_at = CASE WHEN nullif(c.email, p_email) IS NULL
                                   AND nullif(c.phone_number, p_phone_number) IS NULL
                              THEN coalesce(c.deleted_at, clock_timestamp()) ELSE c.deleted_at END,
            updated_at = clock_timestamp()
        FROM contact was
        WHERE was.id = c.id AND (was.email = p_email OR was.phone_number = p_phone_number)
        RETURNING was.deleted_at IS NULL AND c.deleted_at IS NOT NULL AS emptied
    )
    SELECT count(*), count(*) FILTER (WHERE emptied) INTO contacts, deleted FROM blanked;
    WITH blanked AS (
        UPDATE contact_event e
        SET email = nullif(e.email, p_email), phone_number = nullif(e.phone_number, p_phone_number)
        WHERE e.email = p_email OR e.phone_number = p_phone_number
        RETURNING 1
    )
    SELECT count(*) INTO events FROM blanked;

    tops := rederive_v1(primary_ids, false, NULL, NULL, 'erased',
                        CASE WHEN p_email IS NOT NULL THEN 'email erased' ELSE 'phone number erased' END,
                        p_request_id);
    customers := customers_json_v1(tops);
END
$$;


-- Re-derive every customer holding a (blocked) value as if it had never been evidence; the rows
-- keep it. The customers that result, by primary id.
CREATE FUNCTION unlink_value_v1(p_email text, p_phone_number text, p_request_id text)
RETURNS json
LANGUAGE plpgsql AS $$
DECLARE
    primary_ids bigint[] := locked_holders_v1(p_email, p_phone_number);
    tops bigint[];
BEGIN
    tops := rederive_v1(primary_ids, false, p_email, p_phone_number, 'unlinked',
                        CASE WHEN p_email IS NOT NULL THEN 'email unlinked' ELSE 'phone number unlinked' END,
                        p_request_id);
    RETURN customers_json_v1(tops);
END
$$;


-- A soft-deleted primary must never hide its customer: at commit, no live row may still name a row
-- this transaction soft-deleted. Erasure relinks such rows in the same transaction (it re-derives);
-- an operator's UPDATE of deleted_at is refused, since re-deriving here, under the row lock it
-- already holds, would take the identifier locks out of the contract's order.
CREATE FUNCTION contact_deleted_hides_nothing_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM contact c WHERE c.linked_id = NEW.id AND c.deleted_at IS NULL) THEN
        RAISE EXCEPTION 'contact % is soft-deleted but live contacts are linked to it', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Erase it (DELETE /contacts/{id} or ?email=, flask --app wsgi erase): erasure '
                         're-derives the contacts it would hide.';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER contact_deleted_hides_nothing
    AFTER UPDATE OF deleted_at ON contact
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL)
    EXECUTE FUNCTION contact_deleted_hides_nothing_v1();


-- Links made before events were recorded (before 0006_identify_v2 was applied: the row's updated_at is
-- older) have no evidence on record; one 'linked' event per customer keeps them as they are through
-- any re-derivation. Dated at the start of the record.
INSERT INTO contact_event (at, request_id, kind, survivor_id, contact_ids, reason)
SELECT s.applied_at, 'migration 0009', 'linked', c.linked_id, c.linked_id || array_agg(c.id ORDER BY c.id),
       'linked before events were recorded'
FROM contact c, schema_migration s
WHERE s.version = '0006_identify_v2' AND c.linked_id IS NOT NULL AND c.deleted_at IS NULL
  AND c.updated_at < s.applied_at
GROUP BY c.linked_id, s.applied_at
ORDER BY c.linked_id;


-- A soft-deleted primary hid its whole customer. Each such customer's live rows are re-derived, joined
-- with the live customers that took their values meanwhile (as /identify would have merged them, the
-- oldest primary surviving), under the locks of the contract.
DO $$
DECLARE
    primary_ids bigint[];
BEGIN
    -- The hidden customers, and those holding a value of one of their live rows.
    SELECT array_agg(DISTINCT coalesce(m.linked_id, m.id) ORDER BY coalesce(m.linked_id, m.id))
    INTO primary_ids
    FROM contact h
    JOIN contact p ON p.id = h.linked_id AND p.deleted_at IS NOT NULL
    JOIN contact m ON m.deleted_at IS NULL AND (m.email = h.email OR m.phone_number = h.phone_number)
    WHERE h.deleted_at IS NULL;
    IF primary_ids IS NOT NULL THEN
        PERFORM lock_customers_v1(primary_ids, '{}', '{}');
        PERFORM rederive_v1(primary_ids, true, NULL, NULL, 'rederived', 'primary deleted', 'migration 0009');
    END IF;
END
$$;
