-- contacts_after --
-- The next batch of live contacts, by id, for `flask --app wsgi renormalise`.
SELECT id, email, phone_number
FROM contact
WHERE id > %(after)s AND deleted_at IS NULL
ORDER BY id
LIMIT %(batch_size)s;

-- renormalise_contact --
-- Rewrite one contact's values and merge what then shares a value (0007_renormalise_contact_v1.sql).
SELECT contact, merged FROM renormalise_contact_v1(%(id)s, %(email)s, %(phone_number)s);
