"""`flask --app wsgi renormalise`: stored values rewritten in today's normal form, customers merged.

Rows written before a release that normalises more (Unicode emails, PHONE_REGION) keep their old
spelling. This walks the table in batches by id and rewrites each row whose values normalise
differently, one short transaction per row, merging the customers that then share a value exactly as
/identify would (sql/migrations/0007_renormalise_contact_v1.sql explains the locks). Requests go on
meanwhile: each waits at most for one row's rewrite. Run it again and it changes nothing.
"""

from collections import Counter

from marshmallow import ValidationError

from identity import db, repository
from identity.schemas import normal_email, normal_phone_number, phone_region

BATCH_SIZE = 1000


def normal_form(email, phone_number):
    """(email, phone number) as a request carrying them would be stored now; None if either is refused."""
    try:
        new_email = None if email is None else normal_email(email)
        new_phone_number = None if phone_number is None else normal_phone_number(phone_number, phone_region())
    except ValidationError:
        return None
    if (email is None) != (new_email is None) or (phone_number is None) != (new_phone_number is None):
        return None  # a value that normalises to nothing is not ours to drop
    return new_email, new_phone_number


def renormalise(batch_size=BATCH_SIZE, report=lambda counts: None):
    """Rewrite every live contact whose values normalise differently; the counts of what happened."""
    counts, after = Counter(), 0
    while rows := db.run(repository.contacts_after, after, batch_size):
        for contact_id, email, phone_number in rows:
            counts.update(rewrite(contact_id, email, phone_number))
        after = rows[-1][0]
        counts["read"] += len(rows)
        report(counts)
    return counts


def rewrite(contact_id, email, phone_number):
    """Rewrite one contact if its values normalise differently; what happened, as counts."""
    wanted = normal_form(email, phone_number)
    if wanted is None:
        return {"left as they are (refused now)": 1}
    if wanted == (email, phone_number):
        return {}
    rewritten, merged = db.run(repository.renormalise_contact, contact_id, *wanted)
    return {"rewritten": int(rewritten), "customers merged": len(merged)}
