-- local_timeouts --
-- Sent in front of every statement, in the same query string (identity/db.py). PostgreSQL runs a
-- string of several statements as one implicit transaction, so these hold for the statement after
-- them and end with it: nothing outlives the transaction on a server connection that a pooler
-- (PgBouncer in transaction pooling) lends to the next client, and it costs no round trip. A
-- session SET would stay behind on that server connection; the `options` startup parameter never
-- reaches it (PgBouncer refuses it). Each statement of the string gets the timeout afresh.
SET LOCAL statement_timeout = %(statement_timeout_ms)s;
SET LOCAL idle_in_transaction_session_timeout = %(statement_timeout_ms)s;
