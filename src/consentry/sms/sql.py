"""Every SQL statement of the inbound-SMS subsystem, in one place."""

from __future__ import annotations

import sqlalchemy as sa

from consentry.store.schema import inbound_sms as m

INSERT = m.insert()

# A replayed webhook: the unique provider_id index answers it.
BY_PROVIDER_ID = sa.select(m).where(m.c.provider_id == sa.bindparam("provider_id"))

SET_REPLY = m.update().where(m.c.id == sa.bindparam("message_id")).values(
    reply=sa.bindparam("reply"))

# Whether we answered this number with a reply for `action` since a time (the one-confirmation
# rule): the (from_number, received_at) index answers it.
REPLIED_SINCE = (
    sa.select(m.c.id)
    .where(m.c.from_number == sa.bindparam("from_number"),
           m.c.received_at >= sa.bindparam("since"),
           m.c.action == sa.bindparam("action"),
           m.c.reply.is_not(None),
           m.c.id != sa.bindparam("message_id"))
    .limit(1)
)

REPLIED_EVER = (
    sa.select(m.c.id)
    .where(m.c.from_number == sa.bindparam("from_number"),
           m.c.action == sa.bindparam("action"),
           m.c.reply.is_not(None),
           m.c.id != sa.bindparam("message_id"))
    .limit(1)
)

# Erasure: the messages a number sent go with it (the ledger keeps the consent events, their
# wording redacted; the suppression record keeps the number stopped).
FORGET = m.delete().where(m.c.from_number.in_(sa.bindparam("numbers", expanding=True)))
