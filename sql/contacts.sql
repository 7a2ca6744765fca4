-- identify --
-- Reconcile one checkout's contact details; see sql/functions/identify.sql.
SELECT contact, created, merged
FROM identify(%(email)s, %(phone_number)s);

-- ping --
-- The cheapest statement that proves the database answers.
SELECT 1;
