-- blocked_version --
-- Moves on every change to blocked_value; a worker re-reads the list when it differs from its copy's.
SELECT version FROM blocked_value_version;

-- blocked_values --
-- The whole list with its version, in one snapshot, so the copy and its version agree.
SELECT (SELECT version FROM blocked_value_version),
       coalesce(json_agg(blocked_value_json_v1(b) ORDER BY b.kind, b.is_pattern, b.value), '[]'::json)
FROM blocked_value b;

-- add_blocked_value --
-- Adding a value already on the list changes nothing and answers no row.
INSERT INTO blocked_value (kind, value, is_pattern, reason, added_by)
VALUES (%(kind)s, %(value)s, %(pattern)s, %(reason)s, %(added_by)s)
ON CONFLICT ON CONSTRAINT blocked_value_once DO NOTHING
RETURNING blocked_value_json_v1(blocked_value);

-- remove_blocked_value --
-- No row when the value is not on the list.
DELETE FROM blocked_value
WHERE kind = %(kind)s AND value = %(value)s AND is_pattern = %(pattern)s
RETURNING blocked_value_json_v1(blocked_value);

-- find_blocked_value --
SELECT blocked_value_json_v1(b)
FROM blocked_value b
WHERE kind = %(kind)s AND value = %(value)s AND is_pattern = %(pattern)s;
