-- customer_history --
-- The customer of a live contact and every recorded event naming any of its contacts, oldest
-- first; no row when the contact is not live. The events are found through the GIN index on
-- contact_ids.
WITH customer AS (
    SELECT id FROM live_primary_of_v1(%(contact_id)s) AS p (id) WHERE id IS NOT NULL
), member_ids AS (
    SELECT array_agg(m.id) AS ids FROM customer, customer_contacts_v1(customer.id) m
)
SELECT customer_json_v1(customer.id),
       coalesce((SELECT json_agg(contact_event_json_v1(e) ORDER BY e.at, e.id)
                 FROM contact_event e, member_ids
                 WHERE e.contact_ids && member_ids.ids), '[]'::json)
FROM customer;

-- customer_evidence --
-- What links the contacts of a live contact's customer: its contacts and values, and the value
-- pairs of the requests that merged its parts; no row when the contact is not live.
WITH customer AS (
    SELECT id FROM live_primary_of_v1(%(contact_id)s) AS p (id) WHERE id IS NOT NULL
), members AS (
    SELECT m.* FROM customer, customer_contacts_v1(customer.id) m
)
SELECT (SELECT id FROM customer),
       (SELECT json_agg(json_build_object(
                   'id', m.id, 'email', m.email, 'phoneNumber', m.phone_number, 'linkedId', m.linked_id)
               ORDER BY m.id)
        FROM members m),
       coalesce((SELECT json_agg(contact_event_json_v1(e) ORDER BY e.at, e.id)
                 FROM contact_event e
                 WHERE e.kind = 'merged' AND e.contact_ids && (SELECT array_agg(id) FROM members)),
                '[]'::json)
FROM customer;

-- largest_customers --
-- The customers with the most contacts. Reads every live row: an audit, not a request path.
SELECT coalesce(json_agg(json_build_object(
           'primaryContactId', primary_id, 'contacts', contacts,
           'emails', emails, 'phoneNumbers', phone_numbers) ORDER BY contacts DESC, primary_id), '[]'::json)
FROM (SELECT coalesce(linked_id, id) AS primary_id, count(*) AS contacts,
             count(DISTINCT email) AS emails, count(DISTINCT phone_number) AS phone_numbers
      FROM contact
      WHERE deleted_at IS NULL
      GROUP BY 1
      ORDER BY contacts DESC, primary_id
      LIMIT %(limit)s) largest;

-- most_joining_values --
-- The values through which requests merged the most customers, from the recorded merges.
SELECT coalesce(json_agg(json_build_object('kind', kind, 'value', value, 'customersMerged', merged)
                         ORDER BY merged DESC, kind, value), '[]'::json)
FROM (SELECT v.kind, v.value, sum(cardinality(e.contact_ids) - 1) AS merged
      FROM contact_event e,
           LATERAL (VALUES ('email', e.email), ('phone', e.phone_number)) AS v (kind, value)
      WHERE e.kind = 'merged' AND v.value IS NOT NULL
      GROUP BY v.kind, v.value
      ORDER BY merged DESC, v.kind, v.value
      LIMIT %(limit)s) joining;

-- recent_refused_links --
SELECT coalesce(json_agg(contact_event_json_v1(e) ORDER BY e.at DESC, e.id DESC), '[]'::json)
FROM (SELECT * FROM contact_event
      WHERE kind = 'refused'
      ORDER BY at DESC, id DESC
      LIMIT %(limit)s) e;
