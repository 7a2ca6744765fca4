-- identify --
-- Reconcile one checkout's contact details; see sql/migrations/0010_identify_v3.sql. A plain
-- statement, not a PREPAREd one: a prepared statement lives on one server connection, and behind
-- PgBouncer in transaction pooling the next transaction may be lent another (README, "PgBouncer").
-- The call is in the select list, not in FROM: so it is planned without a function scan.
-- %(limits)s is the last three arguments, max_emails, max_phone_numbers and max_contacts (NULL: no
-- limit), rendered once for each setting of them (identity/repository.py's LimitsArgument).
SELECT identify_v3(%(email)s, %(phone_number)s, %(request_id)s, %(limits)s);

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

-- identify_batch --
-- Reconcile many checkouts in order, in one transaction; see sql/migrations/0012_identify_batch_v3.sql.
-- The outcomes in one json array, in the items' order: one value for the driver to parse, not a row each.
SELECT json_agg(outcome ORDER BY item)
FROM identify_batch_v3(%(emails)s::text[], %(phone_numbers)s::text[], %(request_id)s, %(limits)s);
