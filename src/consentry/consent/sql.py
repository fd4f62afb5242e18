"""Every SQL statement of the consent subsystem, in one place."""

from __future__ import annotations

import sqlalchemy as sa

from consentry.store.schema import opt_outs, profiles, services, subscriptions

# Every consent change of a profile first locks its row: changes to one profile are serialized
# (no two opt-outs racing into a duplicate key, no lost subscription update), changes to
# different profiles are not. SQLite ignores FOR UPDATE; its write lock is global anyway.
LOCK_PROFILE = (sa.select(profiles.c.id).where(profiles.c.id == sa.bindparam("profile_id"))
                .with_for_update())

OPTOUTS_OF = sa.select(opt_outs).where(opt_outs.c.profile_id == sa.bindparam("profile_id"))

INSERT_OPTOUT = opt_outs.insert()

DELETE_OPTOUT = opt_outs.delete().where(opt_outs.c.profile_id == sa.bindparam("profile_id"),
                                        opt_outs.c.scope == sa.bindparam("scope"))

SERVICE_BY_SLUG = sa.select(services).where(services.c.slug == sa.bindparam("slug"))
ALL_SERVICES = sa.select(services).order_by(services.c.slug)
INSERT_SERVICE = services.insert()

# Counts shown in `services list`: one grouped scan of the (service_id, state) index.
SUBSCRIPTION_COUNTS = sa.select(
    subscriptions.c.service_id, subscriptions.c.state, sa.func.count()
).group_by(subscriptions.c.service_id, subscriptions.c.state)

SUBSCRIPTION = sa.select(subscriptions).where(
    subscriptions.c.profile_id == sa.bindparam("profile_id"),
    subscriptions.c.service_id == sa.bindparam("service_id")).with_for_update()

SUBSCRIPTIONS_OF = (
    sa.select(services.c.slug, services.c.channel, subscriptions)
    .join(services, services.c.id == subscriptions.c.service_id)
    .where(subscriptions.c.profile_id == sa.bindparam("profile_id"))
    .order_by(services.c.slug)
)

INSERT_SUBSCRIPTION = subscriptions.insert()
UPDATE_SUBSCRIPTION = subscriptions.update().where(subscriptions.c.id == sa.bindparam("sub_id"))

# Expiry: the subscriptions whose validity ended. Read with their slugs for the ledger, then
# ended by one UPDATE over the same condition (the state/expires_at index serves both).
def expired_subscriptions(now_param: sa.BindParameter) -> sa.Select:
    return (
        sa.select(subscriptions.c.id, subscriptions.c.profile_id, services.c.slug,
                  services.c.channel)
        .join(services, services.c.id == subscriptions.c.service_id)
        .where(subscriptions.c.state == "subscribed", subscriptions.c.expires_at <= now_param)
    )


EXPIRE = (
    subscriptions.update()
    .where(subscriptions.c.state == "subscribed",
           subscriptions.c.expires_at <= sa.bindparam("now"))
    .values(state="expired", state_at=sa.bindparam("now"))
)

# Double opt-in requests nobody confirmed: removed after `web.pending_purge_days` by one DELETE
# that returns what it removed, so the ledger records each as expired. A confirmation racing
# the purge either commits first (no longer pending, not deleted) or finds no row.
PURGE_PENDING = (
    subscriptions.delete()
    .where(subscriptions.c.state == "pending", subscriptions.c.state_at <= sa.bindparam("cutoff"))
    .returning(subscriptions.c.profile_id, subscriptions.c.service_id)
)

SERVICE_NAMES = sa.select(services.c.id, services.c.slug, services.c.channel)
