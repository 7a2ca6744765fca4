-- erase_customer --
-- Erase the customer a contact belongs to; see sql/migrations/0009_erase_v1.sql.
SELECT known, erased_ids, emails, phone_numbers, events FROM erase_customer_v1(%(contact_id)s, %(request_id)s);

-- erase_value --
-- Erase an email or a phone number everywhere and re-derive its customers (0009_erase_v1.sql).
SELECT contacts, deleted, events, customers
FROM erase_value_v1(%(email)s, %(phone_number)s, %(request_id)s);

-- unlink_value --
-- Re-derive the customers holding a value as if it had never been evidence (0009_erase_v1.sql).
SELECT unlink_value_v1(%(email)s, %(phone_number)s, %(request_id)s);
