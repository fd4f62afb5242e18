"""Every SQL statement of the outbound webhooks, in one place."""

from __future__ import annotations

import sqlalchemy as sa

from consentry.store.schema import webhook_deliveries as d
from consentry.store.schema import webhook_endpoints as e

# Run on every ledger append: one indexed-by-size (tiny table) read, nothing cached across
# transactions, so an endpoint added or deactivated applies to the next append.
ACTIVE_ENDPOINTS = sa.select(e.c.id, e.c.events).where(e.c.active.is_(True))

INSERT_ENDPOINT = e.insert().returning(e.c.id)
ENDPOINT = sa.select(e).where(e.c.id == sa.bindparam("endpoint_id"))
LIST_ENDPOINTS = sa.select(e.c.id, e.c.url, e.c.events, e.c.active, e.c.created_at).order_by(
    e.c.id)
UPDATE_ENDPOINT = e.update().where(e.c.id == sa.bindparam("endpoint_id"))
# Its delivery log goes with it (ON DELETE CASCADE; SQLite connections turn foreign keys on).
DELETE_ENDPOINT = e.delete().where(e.c.id == sa.bindparam("endpoint_id"))

INSERT_DELIVERY = d.insert()

# Due rows of active endpoints, oldest first. PostgreSQL locks the rows it hands out and skips
# the ones another dispatcher holds; SQLite ignores FOR UPDATE (its write lock is global).
DUE = (
    sa.select(d.c.id, d.c.endpoint_id, d.c.payload, d.c.attempts, e.c.url, e.c.secret)
    .select_from(d.join(e, e.c.id == d.c.endpoint_id))
    .where(d.c.state == "pending", d.c.next_attempt_at <= sa.bindparam("now"),
           e.c.active.is_(True))
    .order_by(d.c.next_attempt_at, d.c.id)
    .limit(sa.bindparam("limit"))
    .with_for_update(of=d, skip_locked=True)
)
# A claim is a lease: the row's next attempt moves past the time its sending can take, so
# another dispatcher does not pick it up meanwhile, and a dispatcher that dies mid-way leaves
# it to be tried again when the lease runs out.
LEASE = (d.update().where(d.c.id == sa.bindparam("delivery_id"))
         .values(next_attempt_at=sa.bindparam("until")))
RESULT = d.update().where(d.c.id == sa.bindparam("delivery_id"))


def deliveries_page(endpoint_id: int | None, before: int | None, limit: int,
                    state: str | None = None) -> sa.Select:
    """An endpoint's delivery log (None: all of them), newest first."""
    query = sa.select(d)
    if endpoint_id is not None:
        query = query.where(d.c.endpoint_id == endpoint_id)
    if before is not None:
        query = query.where(d.c.id < before)
    if state is not None:
        query = query.where(d.c.state == state)
    return query.order_by(d.c.id.desc()).limit(limit)


COUNTS = (sa.select(d.c.endpoint_id, d.c.state, sa.func.count())
          .group_by(d.c.endpoint_id, d.c.state))
