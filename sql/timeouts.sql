-- local_statement_timeout --
-- Sent in front of every statement, in the same query string (identity/db.py). PostgreSQL runs a
-- string of several statements as one implicit transaction, so this holds for the statement after
-- it and ends with it: nothing outlives the transaction on a server connection that a pooler
-- (PgBouncer in transaction pooling) lends to the next client, and it costs no round trip. A
-- session SET would stay behind on that server connection; the `options` startup parameter never
-- reaches it (PgBouncer refuses it). Each statement of the string gets the timeout afresh.
SET LOCAL statement_timeout = %(statement_timeout_ms)s;

-- local_idle_timeout --
-- Sent as well when the connection is not in autocommit, so that its transaction may wait on the
-- client between statements. In autocommit (every request's connection) the string's implicit
-- transaction ends before the server reads from the client again: it is never idle in a transaction,
-- and this statement would be work for nothing on every request.
SET LOCAL idle_in_transaction_session_timeout = %(statement_timeout_ms)s;
