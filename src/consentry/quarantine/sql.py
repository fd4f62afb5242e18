"""Every SQL statement of the quarantine subsystem, in one place."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from consentry.store.schema import quarantine as q

# One address's entry; the unique (channel, address_key) index answers it.
ENTRY = sa.select(q).where(q.c.channel == sa.bindparam("channel"),
                           q.c.address_key == sa.bindparam("key"))

# Locked variant for read-modify-write through the state machine, so two bounces for one
# address processed at once cannot both count from the same old error count.
ENTRY_FOR_UPDATE = ENTRY.with_for_update()

# Many addresses of one channel at once, locked (feedback applied in batches): one statement
# instead of one per address; the unique (channel, address_key) index answers it.
ENTRIES_FOR_UPDATE = sa.select(q).where(
    q.c.channel == sa.bindparam("channel"),
    q.c.address_key.in_(sa.bindparam("keys", expanding=True))).with_for_update()

INSERT = q.insert()

UPDATE = q.update().where(q.c.id == sa.bindparam("entry_id"))


def listing(*, status: str | None, reason: str | None, channel: str | None,
            domain: str | None, limit: int | None = None) -> sa.Select:
    """Entries filtered the way operators ask (all filters use indexed columns)."""
    stmt = sa.select(q).order_by(q.c.updated_at.desc(), q.c.id.desc())
    # Without a status filter, "valid" rows (kept for their error history) are not listed.
    stmt = stmt.where(q.c.status == status) if status else stmt.where(q.c.status != "valid")
    if reason:
        stmt = stmt.where(q.c.reason == reason)
    if channel:
        stmt = stmt.where(q.c.channel == channel)
    if domain:
        stmt = stmt.where(q.c.domain == domain.lower())
    if limit:
        stmt = stmt.limit(limit)
    return stmt


def bulk_release_candidates(*, reason: str | None, domain: str | None,
                            since: datetime | None, until: datetime | None,
                            channel: str | None) -> sa.Select:
    """Blocking entries matching an operator's bulk release (the Gmail-outage case: reason
    user_unknown, domain gmail.com, a window of status changes). Allowlisted entries are not
    "released": they are not blocking. Rows are locked so a concurrent bounce waits for us."""
    stmt = sa.select(q).where(q.c.status.in_(("quarantined", "denylisted", "erroneous")))
    if reason:
        stmt = stmt.where(q.c.reason == reason)
    if domain:
        stmt = stmt.where(q.c.domain == domain.lower())
    if channel:
        stmt = stmt.where(q.c.channel == channel)
    if since:
        stmt = stmt.where(q.c.status_at >= since)
    if until:
        stmt = stmt.where(q.c.status_at < until)
    return stmt.with_for_update()


def due_for_time_release(erroneous_cutoff: datetime, mailbox_full_cutoff: datetime) -> sa.Select:
    """Entries whose time-based release is due (domain.quarantine.release_due states the rule;
    the cutoffs come from domain.quarantine.release_cutoffs). Only these few rows are read."""
    return sa.select(q).where(sa.or_(
        sa.and_(q.c.status == "erroneous", q.c.last_error_at <= erroneous_cutoff),
        sa.and_(q.c.status == "quarantined", q.c.reason == "mailbox_full",
                sa.or_(q.c.last_error_at.is_(None), q.c.last_error_at <= mailbox_full_cutoff),
                sa.or_(q.c.status_at.is_(None), q.c.status_at <= mailbox_full_cutoff),
                sa.or_(q.c.last_error_at.is_not(None), q.c.status_at.is_not(None))),
    )).with_for_update()
