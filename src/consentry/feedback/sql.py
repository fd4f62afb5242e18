"""Every SQL statement of the feedback subsystem, in one place."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from consentry.delivery.sql import of_delivery, of_delivery_column
from consentry.store.schema import deliveries as d
from consentry.store.schema import delivery_targets as t
from consentry.store.schema import feedback_messages as fm
from consentry.store.schema import feedback_results as fr
from consentry.store.schema import services

# Which of a batch's messages were seen before: one probe of the unique dedupe_key index
# for the whole batch, so a re-ingested mailbox costs a read, not a failed insert per message.
KNOWN_KEYS = sa.select(fm.c.dedupe_key).where(
    fm.c.dedupe_key.in_(sa.bindparam("keys", expanding=True)))

# Executemany with RETURNING (SQLAlchemy's insertmanyvalues on both databases): the ids link
# the per-recipient results to their message.
INSERT_MESSAGES = fm.insert().returning(fm.c.id, fm.c.dedupe_key)

INSERT_RESULTS = fr.insert()

# The targets named by VERP return paths, mailto tags or our Message-IDs, with what applying
# feedback needs from their delivery (its channel, and the service an unsubscribe leaves).
TARGETS = (
    sa.select(t.c.id, t.c.delivery_id, t.c.profile_id, t.c.address, t.c.address_key,
              d.c.channel, d.c.kind, services.c.slug.label("service"))
    .select_from(t.join(d, d.c.id == t.c.delivery_id)
                 .outerjoin(services, services.c.id == d.c.service_id))
    .where(t.c.id.in_(sa.bindparam("ids", expanding=True)))
)

# Messages kept for an operator: nothing could be read out of them, or nothing in them could be
# applied. The (status, received_at) index serves this listing.
REVIEW = (sa.select(fm.c.id, fm.c.received_at, fm.c.via, fm.c.source, fm.c.kind, fm.c.summary)
          .where(fm.c.status == "review").order_by(fm.c.received_at.desc(), fm.c.id.desc())
          .limit(sa.bindparam("limit")))

MESSAGE = sa.select(fm).where(fm.c.id == sa.bindparam("message_id"))

# Erasure: the feedback about a profile or its (no longer held) addresses loses its personal
# data. The raw message and its summary go; the result rows keep kind, class and reason, so
# the delivery's rates stay right, and lose the address.
_ABOUT = sa.or_(fr.c.profile_id == sa.bindparam("erased_profile"),
                fr.c.address_key.in_(sa.bindparam("keys", expanding=True)))
FORGET_MESSAGES = (fm.update()
                   .where(fm.c.id.in_(sa.select(fr.c.message_id).where(_ABOUT)))
                   .values(raw=None, summary=None, source=None))
FORGET_RESULTS = fr.update().where(_ABOUT).values(address_key=None, profile_id=None)


# --- alerting figures ------------------------------------------------------------------------
# Rates compare failures with attempts. Synchronous failures live on the target rows (state
# failed); asynchronous ones (DSNs, webhooks) and complaints in feedback_results. Each query
# reads one delivery's rows through an index, or one time window through `at` / `sent_at`.

def delivery_attempts(delivery_id: int) -> sa.Select:
    """Sent and synchronously failed targets of a delivery (a range of its primary key)."""
    return (sa.select(t.c.state, sa.func.count())
            .where(of_delivery(delivery_id), t.c.state.in_(("sent", "failed")))
            .group_by(t.c.state))


def delivery_hard_failures(delivery_id: int) -> sa.Select:
    """Synchronous failures whose reason is a hard one (the address does not exist)."""
    return sa.select(sa.func.count()).where(
        of_delivery(delivery_id), t.c.state == "failed",
        t.c.reason.in_(("user_unknown", "invalid_domain")))


def delivery_feedback(delivery_id: int) -> sa.Select:
    """Distinct targets (or addresses) with an asynchronous bounce or a complaint: one recipient
    bouncing twice, or complaining through two feedback loops, counts once."""
    who = sa.func.coalesce(sa.cast(fr.c.target_id, sa.String), fr.c.address_key)
    return (sa.select(fr.c.kind, fr.c["class"], sa.func.count(sa.distinct(who)))
            .where(fr.c.delivery_id == delivery_id, fr.c.kind.in_(("bounce", "complaint")),
                   fr.c["class"].in_(("hard", "soft", "complaint")))
            .group_by(fr.c.kind, fr.c["class"]))


def _utc_day(dialect: str, column: sa.ColumnElement[datetime]) -> sa.ColumnElement[str]:
    """The UTC calendar day of a timestamp, as 'YYYY-MM-DD' text on both databases (SQLite keeps
    naive UTC text; PostgreSQL's date() would use the session's time zone)."""
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.date(column)


def _active_since(since: datetime) -> sa.ColumnElement[bool]:
    # Targets are reached through their delivery's id range instead of a scan of every target
    # ever written: only deliveries that were still sending in the window count.
    return sa.and_(d.c.started_at.is_not(None),
                   sa.or_(d.c.finished_at.is_(None), d.c.finished_at >= since))


def attempts_per_day(dialect: str, since: datetime) -> sa.Select:
    """Sent targets by the day they were sent, synchronous failures by the day they were
    claimed (when the attempt was made)."""
    at = sa.case((t.c.state == "sent", t.c.sent_at), else_=t.c.claimed_at)
    day = _utc_day(dialect, at)
    return (sa.select(day.label("day"), t.c.state, sa.func.count())
            .select_from(d.join(t, of_delivery_column(d.c.id)))
            .where(_active_since(since), t.c.state.in_(("sent", "failed")), at >= since)
            .group_by(day, t.c.state))


def feedback_per_day(dialect: str, since: datetime) -> sa.Select:
    day = _utc_day(dialect, fr.c.at)
    return (sa.select(day.label("day"), fr.c.kind, sa.func.count())
            .where(fr.c.at >= since, fr.c.kind.in_(("bounce", "complaint")),
                   fr.c["class"].in_(("hard", "soft", "complaint")))
            .group_by(day, fr.c.kind))
