-- Blocked values: emails and phone numbers that must never join customers (issue 12).
--
-- Nothing is blocked until an operator says so; a fresh install answers exactly as the task says.
-- Each worker keeps a copy of this table and re-reads it when blocked_value_version changes, which
-- it checks at most once a second (identity/blocking.py), so a change reaches every worker of every
-- host within a second, with no restart and no per-request cost beyond a set lookup.
CREATE TABLE blocked_value (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text NOT NULL,
    -- An exact value, normalised as /identify normalises requests; or a Python regular expression
    -- (re.fullmatch) over the normalised value.
    value      text NOT NULL,
    is_pattern boolean NOT NULL,
    reason     text NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    added_by   text NOT NULL,
    CONSTRAINT blocked_value_kind_known CHECK (kind IN ('email', 'phone')),
    CONSTRAINT blocked_value_once UNIQUE (kind, is_pattern, value)
);

COMMENT ON TABLE blocked_value IS
    'Values never matched, stored or counted as new information; rows stored before keep them.';

-- One row whose counter every change to blocked_value moves, so a worker learns of a change with a
-- single-row read instead of reading the whole list.
CREATE TABLE blocked_value_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  bigint NOT NULL
);
INSERT INTO blocked_value_version VALUES (true, 0);

CREATE FUNCTION blocked_value_changed_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE blocked_value_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER blocked_value_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON blocked_value
    FOR EACH STATEMENT EXECUTE FUNCTION blocked_value_changed_v1();

-- One entry as the admin API and `flask blocked list --json` show it.
CREATE FUNCTION blocked_value_json_v1(entry blocked_value) RETURNS json
LANGUAGE sql IMMUTABLE AS $$
    SELECT json_build_object(
        'id', entry.id, 'kind', entry.kind, 'value', entry.value, 'pattern', entry.is_pattern,
        'reason', entry.reason, 'addedAt', entry.added_at, 'addedBy', entry.added_by)
$$;
