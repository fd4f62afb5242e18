"""The console's read-only SQL: set-based aggregates for the dashboard and the lists (search,
quarantine filters, deliveries, subscribers). Every change goes through the services."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from consentry.delivery.sql import of_delivery
from consentry.store.schema import deliveries as d
from consentry.store.schema import delivery_targets as t
from consentry.store.schema import ledger_events as ev
from consentry.store.schema import opt_outs, profiles, services, subscriptions
from consentry.store.schema import quarantine as q

PROFILE_COUNT = sa.select(sa.func.count()).select_from(profiles)

# One row per scope: the primary key (profile_id, scope) is scanned once.
OPTOUTS_BY_SCOPE = (sa.select(opt_outs.c.scope, sa.func.count())
                    .group_by(opt_outs.c.scope).order_by(opt_outs.c.scope))

# Blocking and watched entries by status and reason (the (status, reason) index answers it).
QUARANTINE_BY_STATUS_REASON = (sa.select(q.c.status, q.c.reason, sa.func.count())
                               .where(q.c.status != "valid")
                               .group_by(q.c.status, q.c.reason))


def utc_day(dialect: str, column: sa.ColumnElement[datetime]) -> sa.ColumnElement[str]:
    """The UTC calendar day as 'YYYY-MM-DD' on both databases (as feedback.sql does)."""
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.date(column)


def events_per_day(dialect: str, since: datetime) -> sa.Select:
    """Consent events per UTC day and kind since `since`: one GROUP BY over the window."""
    day = utc_day(dialect, ev.c.at)
    return (sa.select(day.label("day"), ev.c.kind, sa.func.count())
            .where(ev.c.at >= since).group_by(day, ev.c.kind))


def service_changes_per_day(dialect: str, slug: str, since: datetime) -> sa.Select:
    """A service's subscription events per day and new state (subscribed, unsubscribed, ...)."""
    day = utc_day(dialect, ev.c.at)
    return (sa.select(day.label("day"), ev.c.new_state, sa.func.count())
            .where(ev.c.at >= since, ev.c.kind == "subscription", ev.c.service == slug)
            .group_by(day, ev.c.new_state))


def subscribers(service_id: int, state: str | None, limit: int) -> sa.Select:
    """A service's latest subscriptions with their profiles ((service_id, state) index)."""
    stmt = (sa.select(subscriptions.c.profile_id, subscriptions.c.state,
                      subscriptions.c.state_at, profiles.c.email, profiles.c.phone,
                      profiles.c.first_name, profiles.c.last_name)
            .select_from(subscriptions.join(profiles,
                                            profiles.c.id == subscriptions.c.profile_id))
            .where(subscriptions.c.service_id == service_id)
            .order_by(subscriptions.c.state_at.desc(), subscriptions.c.id.desc()).limit(limit))
    return stmt.where(subscriptions.c.state == state) if state else stmt


def search_profiles(text: str, limit: int) -> sa.Select:
    """Profiles whose email, phone, external id or name starts with `text` (prefix matches:
    the email_key and phone indexes can serve them)."""
    needle = text.strip().lower()
    like = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    cols = (profiles.c.id, profiles.c.external_id, profiles.c.email, profiles.c.phone,
            profiles.c.first_name, profiles.c.last_name, profiles.c.created_at)
    cond = sa.or_(profiles.c.email_key.like(like, escape="\\"),
                  profiles.c.phone.like(like, escape="\\"),
                  profiles.c.external_id.like(text.strip() + "%"),
                  sa.func.lower(profiles.c.last_name).like(like, escape="\\"),
                  sa.func.lower(profiles.c.first_name).like(like, escape="\\"))
    if needle.isdigit():
        cond = sa.or_(cond, profiles.c.id == int(needle))
    return sa.select(*cols).where(cond).order_by(profiles.c.id).limit(limit)


LATEST_PROFILES = (sa.select(profiles.c.id, profiles.c.external_id, profiles.c.email,
                             profiles.c.phone, profiles.c.first_name, profiles.c.last_name,
                             profiles.c.created_at)
                   .order_by(profiles.c.id.desc()).limit(sa.bindparam("limit")))


def quarantine_listing(*, address: str | None, status: str | None, channel: str | None,
                       reason: str | None, domain: str | None, since: datetime | None,
                       until: datetime | None, limit: int) -> sa.Select:
    """Quarantine entries as the console filters them; without a status, valid rows (kept for
    their error history) are left out, as `quarantine list` does."""
    stmt = sa.select(q).order_by(q.c.updated_at.desc(), q.c.id.desc()).limit(limit)
    stmt = stmt.where(q.c.status == status) if status else stmt.where(q.c.status != "valid")
    if address:
        needle = address.strip().lower()
        like = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(sa.or_(q.c.address_key.like(like, escape="\\"),
                                 sa.func.lower(q.c.address).like(like, escape="\\")))
    if channel:
        stmt = stmt.where(q.c.channel == channel)
    if reason:
        stmt = stmt.where(q.c.reason == reason)
    if domain:
        stmt = stmt.where(q.c.domain == domain.strip().lower())
    if since:
        stmt = stmt.where(q.c.status_at >= since)
    if until:
        stmt = stmt.where(q.c.status_at < until)
    return stmt


def quarantine_count(**filters: object) -> sa.Select:
    inner = quarantine_listing(limit=None, **filters).order_by(None)  # type: ignore[arg-type]
    return sa.select(sa.func.count()).select_from(inner.subquery())


DELIVERIES = (sa.select(d.c.id, d.c.name, d.c.channel, d.c.kind, d.c.audience, d.c.state,
                        d.c.created_at, d.c.created_by, services.c.slug.label("service"))
              .select_from(d.outerjoin(services, services.c.id == d.c.service_id))
              .order_by(d.c.id.desc()).limit(sa.bindparam("limit")))


def progress(delivery_id: int) -> sa.Select:
    """Target rows by state, read through the delivery's primary-key range."""
    return (sa.select(t.c.state, sa.func.count())
            .where(of_delivery(delivery_id)).group_by(t.c.state))
