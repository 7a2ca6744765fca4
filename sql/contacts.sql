-- prepare_identify --
-- Once per connection: the hot statement, parsed and planned once instead of on every request.
PREPARE identify_contact (text, text) AS
SELECT contact, created, merged
FROM identify($1, $2);

-- identify --
-- Reconcile one checkout's contact details; see sql/functions/identify.sql.
EXECUTE identify_contact (%(email)s, %(phone_number)s);

-- ping --
-- The cheapest statement that proves the database answers.
SELECT 1;
