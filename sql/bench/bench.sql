-- preload --
-- K customers, one primary contact each, dated in the past; ids 1..K so the load script can name them.
INSERT INTO contact (id, email, phone_number, link_precedence, created_at, updated_at)
SELECT i, 'c' || i || '@bench.test', (1000000000 + i)::text, 'primary',
       timestamptz '2020-01-01' + i * interval '1 second',
       timestamptz '2020-01-01' + i * interval '1 second'
FROM generate_series(1, %(customers)s) AS i;

-- move_id_sequence --
SELECT setval(pg_get_serial_sequence('contact', 'id'), %(customers)s);

-- vacuum --
-- Set hint bits and the visibility map now, not in the middle of a measurement.
VACUUM (ANALYZE) contact;

-- broken_links --
-- Live secondaries whose linked_id does not name a live primary: chains or dangling links.
SELECT count(*)
FROM contact s
LEFT JOIN contact p ON p.id = s.linked_id
WHERE s.deleted_at IS NULL AND s.linked_id IS NOT NULL
  AND (p.id IS NULL OR p.linked_id IS NOT NULL OR p.deleted_at IS NOT NULL);

-- split_values --
-- Emails or phone numbers held by more than one customer: one customer with two primaries.
SELECT (SELECT count(*) FROM (SELECT email FROM contact
                              WHERE deleted_at IS NULL AND email IS NOT NULL
                              GROUP BY email HAVING count(DISTINCT coalesce(linked_id, id)) > 1) e)
     + (SELECT count(*) FROM (SELECT phone_number FROM contact
                              WHERE deleted_at IS NULL AND phone_number IS NOT NULL
                              GROUP BY phone_number HAVING count(DISTINCT coalesce(linked_id, id)) > 1) p);

-- lost_customers --
-- Preloaded customers whose email or phone number is gone.
SELECT %(customers)s - count(*)
FROM contact
WHERE id <= %(customers)s AND email = 'c' || id || '@bench.test'
  AND phone_number = (1000000000 + id)::text AND deleted_at IS NULL;

-- duplicate_contacts --
-- Two live rows with the same email and phone number: a request inserted what was known.
SELECT count(*) FROM (SELECT 1 FROM contact WHERE deleted_at IS NULL
                      GROUP BY email, phone_number HAVING count(*) > 1) d;

-- table_size --
SELECT count(*) FROM contact;

-- block_values --
-- For `--guarded`: 1,000 exact values and 20 patterns blocked beside the recommended list, none of
-- them a value the load script sends, so every request pays the checks and none is refused.
INSERT INTO blocked_value (kind, value, is_pattern, reason, added_by)
SELECT CASE WHEN i % 2 = 0 THEN 'email' ELSE 'phone' END,
       CASE WHEN i % 2 = 0 THEN 'blocked' || i || '@junk.example' ELSE '555' || lpad(i::text, 7, '0') END,
       false, 'bench', 'bench'
FROM generate_series(1, 1000) AS i
UNION ALL
SELECT CASE WHEN i % 2 = 0 THEN 'email' ELSE 'phone' END,
       CASE WHEN i % 2 = 0 THEN '.+@junk' || i || '\.test' ELSE '\+?999' || i || '[0-9]*' END,
       true, 'bench', 'bench'
FROM generate_series(1, 20) AS i;

-- copy_out_contacts --
-- The rows an import wrote, for the COPY it is compared with.
COPY contact (id, email, phone_number, linked_id, link_precedence, created_at, updated_at) TO STDOUT;

-- copy_in_contacts --
COPY contact (id, email, phone_number, linked_id, link_precedence, created_at, updated_at) FROM STDIN;

-- backend_pids --
-- The server processes serving this database's other connections: the service's, during a run.
SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid();

-- client_backends --
-- tests/bench/instructions.py --server: the client connections open, its own among them.
SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend';
