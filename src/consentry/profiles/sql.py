"""Every SQL statement of the profiles subsystem, in one place."""

from __future__ import annotations

import sqlalchemy as sa

from consentry.store.schema import profiles as p
from consentry.store.schema import push_tokens as t

BY_ID = sa.select(p).where(p.c.id == sa.bindparam("id"))
BY_EXTERNAL_ID = sa.select(p.c.id).where(p.c.external_id == sa.bindparam("external_id"))
# Email and phone lookups use the matching key; several profiles may share an address, and a
# REF must name one, so the caller sees them all.
BY_EMAIL_KEY = sa.select(p.c.id).where(p.c.email_key == sa.bindparam("key")).order_by(p.c.id)
BY_PHONE = sa.select(p.c.id).where(p.c.phone == sa.bindparam("phone")).order_by(p.c.id)

INSERT = p.insert().returning(p.c.id)
UPDATE = p.update().where(p.c.id == sa.bindparam("profile_id"))
DELETE = p.delete().where(p.c.id == sa.bindparam("profile_id"))

TOKENS_OF = sa.select(t).where(t.c.profile_id == sa.bindparam("profile_id")).order_by(t.c.id)
INSERT_TOKEN = t.insert()


def _shared(column: sa.ColumnElement, channel: str) -> sa.Select:
    # GROUP BY over an indexed column; HAVING keeps only addresses held more than once.
    return (
        sa.select(sa.literal(channel).label("channel"), column.label("address"),
                  sa.func.count().label("profiles"))
        .where(column.is_not(None))
        .group_by(column)
        .having(sa.func.count() > 1)
    )


DUPLICATE_ADDRESSES = sa.union_all(
    _shared(p.c.email_key, "email"), _shared(p.c.phone, "sms"), _shared(t.c.token, "push"),
).order_by(sa.text("channel"), sa.text("address"))


def holders(channel: str, address: str) -> sa.Select:
    if channel == "email":
        return sa.select(p.c.id).where(p.c.email_key == address).order_by(p.c.id)
    if channel == "sms":
        return sa.select(p.c.id).where(p.c.phone == address).order_by(p.c.id)
    return (sa.select(t.c.profile_id).where(t.c.token == address).distinct()
            .order_by(t.c.profile_id))
