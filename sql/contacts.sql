-- prepare_identify --
-- Once per connection: the hot statement, parsed and planned once instead of on every request.
PREPARE identify_contact (text, text) AS
SELECT contact, created, merged
FROM identify_v1($1, $2);

-- identify --
-- Reconcile one checkout's contact details; see sql/migrations/0002_identify_v1.sql.
EXECUTE identify_contact (%(email)s, %(phone_number)s);

-- ping --
-- The cheapest statement that proves the database answers.
SELECT 1;

-- customer_of_contact --
-- The customer a live contact belongs to, whether it is the primary or a secondary; no row when
-- the contact or its primary is deleted. Both rows are found by the primary key.
SELECT customer_json_v1(p.id)
FROM contact c
JOIN contact p ON p.id = coalesce(c.linked_id, c.id)
WHERE c.id = %(contact_id)s
  AND c.deleted_at IS NULL
  AND p.deleted_at IS NULL
  AND p.linked_id IS NULL;

-- customer_with_identifier --
-- The customer holding the email or the phone number (the other one is NULL), found through the
-- partial indexes; no row when none does. identify never lets two customers share a value.
SELECT customer_json_v1(m.primary_id)
FROM matching_customers_v1(%(email)s, %(phone_number)s) m;
