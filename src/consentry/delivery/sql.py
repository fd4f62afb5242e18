"""Every SQL statement of deliveries, in one place.

The exclusion rules of domain.reachability are evaluated here as one CASE expression over LEFT
JOINs, so that analysing a million profiles is a single INSERT ... SELECT, and the re-check
before each batch is the same expression over that batch only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from consentry.domain.reachability import Exclusion
from consentry.store.schema import (
    deliveries,
    delivery_targets,
    opt_outs,
    profiles,
    push_tokens,
    quarantine,
    services,
    subscriptions,
    workers,
)

t = delivery_targets
d = deliveries

# A delivery's target rows are one range of ids: delivery_id * 2^32 + a number unique within
# the delivery (_target_number). The analysis numbers its rows itself, so writing a million
# rows touches no sequence, and every per-delivery statement below is a range scan of the
# primary key: there is no secondary index on delivery_id to maintain row by row.
TARGET_ID_SPAN = 2**32


def id_range(delivery_id: int) -> tuple[int, int]:
    first = delivery_id * TARGET_ID_SPAN
    return first, first + TARGET_ID_SPAN - 1


def of_delivery(delivery_id: int) -> sa.ColumnElement[bool]:
    """The delivery's target rows, as a primary-key range."""
    first, last = id_range(delivery_id)
    return t.c.id.between(first, last)


def of_delivery_column(delivery_id: Any) -> sa.ColumnElement[bool]:
    """The same for a delivery id given as a column (correlated subqueries, joins)."""
    return t.c.id.between(delivery_id * TARGET_ID_SPAN,
                          delivery_id * TARGET_ID_SPAN + (TARGET_ID_SPAN - 1))


def _address_columns(channel: str) -> tuple[Any, Any, Any, Any]:
    """(FROM clause, address, matching key, validity check) for a channel's audience."""
    p = profiles
    if channel == "email":
        # Addresses are validated on the way in; this guards rows written around the service
        # layer (a raw SQL load) with the cheapest check that catches a missing @ or domain.
        return p, p.c.email, p.c.email_key, p.c.email_key.like("%_@_%._%")
    if channel == "sms":
        valid = sa.and_(p.c.phone.like("+%"), sa.func.length(p.c.phone).between(8, 16))
        return p, p.c.phone, p.c.phone, valid
    # Push: one target row per device token; a profile without tokens gets one row that
    # records address_missing.
    joined = p.outerjoin(push_tokens, push_tokens.c.profile_id == p.c.id)
    return joined, push_tokens.c.token, push_tokens.c.token, sa.func.length(
        push_tokens.c.token) >= 8


def exclusion_case(*, channel: str, transactional: bool, service_id: int | None, now: datetime,
                   address: Any, key: Any, valid: Any, profile_id: Any,
                   ) -> tuple[sa.Case, list[tuple[Any, Any]]]:
    """The first failing rule of domain.reachability.EXCLUSION_ORDER (rules 1 to 7), and the
    LEFT JOINs it needs. Transactional deliveries skip opt-outs and subscriptions;
    allowlisted addresses skip denylist and quarantine (they have neither status)."""
    all_out = opt_outs.alias("all_out")
    channel_out = opt_outs.alias("channel_out")
    sub = subscriptions.alias("sub")
    q = quarantine.alias("q")
    joins: list[tuple[Any, Any]] = []
    whens: list[tuple[Any, str]] = [
        (address.is_(None), Exclusion.ADDRESS_MISSING.value),
        (sa.not_(valid), Exclusion.ADDRESS_INVALID.value),
    ]
    if not transactional:
        joins += [
            (all_out, sa.and_(all_out.c.profile_id == profile_id, all_out.c.scope == "all")),
            (channel_out, sa.and_(channel_out.c.profile_id == profile_id,
                                  channel_out.c.scope == channel)),
        ]
        whens += [(all_out.c.profile_id.is_not(None), Exclusion.OPTED_OUT.value),
                  (channel_out.c.profile_id.is_not(None), Exclusion.CHANNEL_OPTED_OUT.value)]
        if service_id is not None:
            # Active = subscribed and not past its validity (even before the expiry task ran).
            joins.append((sub, sa.and_(
                sub.c.profile_id == profile_id, sub.c.service_id == service_id,
                sub.c.state == "subscribed",
                sa.or_(sub.c.expires_at.is_(None), sub.c.expires_at > now))))
            whens.append((sub.c.id.is_(None), Exclusion.NOT_SUBSCRIBED.value))
    joins.append((q, sa.and_(q.c.channel == channel, q.c.address_key == key)))
    whens += [(q.c.status == "denylisted", Exclusion.DENYLISTED.value),
              (q.c.status == "quarantined", Exclusion.QUARANTINED.value)]
    return sa.case(*whens, else_=None), joins


def _with_joins(base: Any, joins: list[tuple[Any, Any]]) -> Any:
    for table, on in joins:
        base = base.outerjoin(table, on)
    return base


def _target_number(channel: str) -> Any:
    """A target row's number within its delivery's id range, unique without a counter: the
    profile id (one row per profile), or for push, where a profile has a row per device token,
    twice the token id and, for a profile without tokens, twice its id plus one. Profile and
    token ids stay below 2^31, so the numbers fit the range."""
    if channel == "push":
        return sa.func.coalesce(push_tokens.c.id * 2, profiles.c.id * 2 + 1)
    return profiles.c.id


def audience_select(delivery: dict[str, Any], now: datetime) -> sa.Select:
    """(profile_id, address, address_key, reason, number) for everyone in the delivery's
    audience."""
    channel = delivery["channel"]
    base, address, key, valid = _address_columns(channel)
    reason, joins = exclusion_case(
        channel=channel, transactional=delivery["kind"] == "transactional",
        service_id=delivery["service_id"], now=now, address=address, key=key, valid=valid,
        profile_id=profiles.c.id)
    stmt = sa.select(profiles.c.id, address, key, reason,
                     _target_number(channel).label("number")).select_from(
        _with_joins(base, joins))
    if delivery["audience"] == "service":
        members = sa.select(subscriptions.c.profile_id).where(
            subscriptions.c.service_id == delivery["service_id"])
        stmt = stmt.where(profiles.c.id.in_(members))
    for field, value in delivery["audience_filter"] or []:
        stmt = stmt.where(_filter_column(field) == value)
    return stmt


PROFILE_FIELDS = ("locale", "first_name", "last_name", "external_id")


def _filter_column(field: str) -> Any:
    if field.startswith("attr."):
        return profiles.c.attributes[field[5:]].as_string()
    return profiles.c[field]


def insert_targets(delivery: dict[str, Any], now: datetime) -> sa.Insert:
    """The analysis: the whole audience becomes target rows in one INSERT ... SELECT, each
    with the first failing rule's reason or pending."""
    audience = audience_select(delivery, now).subquery("audience")
    cols = list(audience.c)
    reason = cols[3]
    first, _ = id_range(delivery["id"])
    select = sa.select(
        (sa.literal(first, sa.BigInteger) + cols[4]).label("id"),
        sa.literal(delivery["id"]).label("delivery_id"), cols[0], cols[1], cols[2],
        sa.case((reason.is_(None), "pending"), else_="excluded"), reason)
    return t.insert().from_select(
        ["id", "delivery_id", "profile_id", "address", "address_key", "state", "reason"],
        select)


# PostgreSQL settings for the analysis transaction. The audience's hash joins fit in memory
# instead of spilling in batches to disk (4 MB is the server default).
ANALYSIS_SETTINGS_PG = ("SET LOCAL work_mem = '64MB'",)

# After the insert, before the rules that read the new rows back: PostgreSQL's planner knows
# nothing of rows it has not analysed (on a new table it guesses a few hundred) and picks
# nested loops that compare every new row with every candidate (200 s instead of 1 s for the
# duplicate rule on a million targets). Sampling the table costs about 0.2 s at any size.
REFRESH_STATISTICS_PG = ("ANALYZE delivery_targets",)

def delete_targets(delivery_id: int) -> sa.Delete:
    return t.delete().where(of_delivery(delivery_id))


def shared_keys(channel: str) -> sa.Select:
    """Matching keys held more than once, read off the address index alone (cheap next to
    ranking every target row)."""
    if channel == "email":
        column = profiles.c.email_key
    elif channel == "sms":
        column = profiles.c.phone
    else:
        column = push_tokens.c.token
    return (sa.select(column).where(column.is_not(None)).group_by(column)
            .having(sa.func.count() > 1))


def exclude_duplicates(delivery_id: int, channel: str) -> sa.Update:
    """Rule 8: of the pending rows sharing an address, keep the oldest profile's. Only rows
    whose key is held more than once are ranked. For email and SMS a target's id is its
    delivery's base plus its profile's id, so the holders of shared keys (read off the address
    index) lead straight to their rows by primary key."""
    if channel == "push":
        ranked = (
            sa.select(t.c.id, sa.func.row_number().over(
                partition_by=t.c.address_key, order_by=(profiles.c.created_at, profiles.c.id),
            ).label("rank"))
            .join(profiles, profiles.c.id == t.c.profile_id)
            .where(of_delivery(delivery_id), t.c.state == "pending",
                   t.c.address_key.in_(shared_keys(channel)))
            .subquery("ranked")
        )
    else:
        key = profiles.c.email_key if channel == "email" else profiles.c.phone
        first, _ = id_range(delivery_id)
        # The state of each holder's row, fetched by primary key as a correlated subquery:
        # a per-row index lookup on both databases, where a join would let PostgreSQL's
        # planner, which knows nothing yet of the rows just written, scan them all.
        state = (sa.select(t.c.state).where(t.c.id == sa.literal(first, sa.BigInteger)
                                            + profiles.c.id).scalar_subquery())
        holders = (sa.select(profiles.c.id, key.label("key"), profiles.c.created_at,
                             state.label("state"))
                   .where(key.in_(shared_keys(channel))).subquery("holders"))
        ranked = (
            sa.select((sa.literal(first, sa.BigInteger) + holders.c.id).label("id"),
                      sa.func.row_number().over(
                          partition_by=holders.c.key,
                          order_by=(holders.c.created_at, holders.c.id)).label("rank"))
            .where(holders.c.state == "pending")
            .subquery("ranked")
        )
    later = sa.select(ranked.c.id).where(ranked.c.rank > 1)
    return (t.update().where(of_delivery(delivery_id), t.c.id.in_(later))
            .values(state="excluded", reason=Exclusion.DUPLICATE.value))


def exclude_fatigue(delivery_id: int, since: datetime, maximum: int) -> sa.Update:
    """Rule 9: profiles that already got `maximum` marketing messages since `since`."""
    other = delivery_targets.alias("other")
    tired = (
        sa.select(other.c.profile_id)
        .join(d, d.c.id == other.c.delivery_id)
        .where(d.c.kind == "marketing", other.c.state == "sent", other.c.sent_at >= since)
        .group_by(other.c.profile_id)
        .having(sa.func.count() >= maximum)
    )
    return (t.update().where(of_delivery(delivery_id), t.c.state == "pending",
                             t.c.profile_id.in_(tired))
            .values(state="excluded", reason=Exclusion.FATIGUE.value))


def exclude_over_limit(delivery_id: int, limit: int) -> sa.Update:
    """Rule 10: keep a random `limit` of the pending rows."""
    keep = (sa.select(t.c.id).where(of_delivery(delivery_id), t.c.state == "pending")
            .order_by(sa.func.random()).limit(limit))
    return (t.update().where(of_delivery(delivery_id), t.c.state == "pending",
                             t.c.id.not_in(keep.scalar_subquery()))
            .values(state="excluded", reason=Exclusion.TARGET_LIMIT.value))


def counts_by_state_and_reason(delivery_id: int) -> sa.Select:
    return (sa.select(t.c.state, t.c.reason, sa.func.count())
            .where(of_delivery(delivery_id)).group_by(t.c.state, t.c.reason))


def exclusion_log(delivery_id: int, *, reason: str | None = None,
                  after_id: int = 0, limit: int = 1000) -> sa.Select:
    """One row per excluded recipient, by id for keyset pagination."""
    stmt = (sa.select(t.c.id, t.c.profile_id, t.c.address, t.c.state, t.c.reason)
            .where(of_delivery(delivery_id),
                   t.c.state.in_(("excluded", "excluded_at_send")), t.c.id > after_id)
            .order_by(t.c.id).limit(limit))
    return stmt.where(t.c.reason == reason) if reason else stmt


# --- sending ---------------------------------------------------------------------------------

def claim_batch(delivery_id: int, worker: str, size: int, now: datetime,
                skip_locked: bool, after_id: int, state: str = "claimed") -> sa.Update:
    """Move up to `size` pending rows after `after_id` to `claimed` for this worker. On
    PostgreSQL concurrent workers skip each other's locked rows (FOR UPDATE SKIP LOCKED), so
    every row is claimed by exactly one of them; SQLite has one writer at a time. The sender
    passes the last id it claimed, so the scan does not walk the rows already sent again."""
    _, last = id_range(delivery_id)
    pick = (sa.select(t.c.id).where(t.c.id > after_id, t.c.id <= last,
                                    t.c.state == "pending")
            .order_by(t.c.id).limit(size))
    if skip_locked:
        pick = pick.with_for_update(skip_locked=True)
    return (t.update().where(t.c.id.in_(pick.scalar_subquery()))
            .values(state=state, worker=worker, claimed_at=now)
            .returning(t.c.id, t.c.profile_id, t.c.address, t.c.address_key))


def recheck(delivery: dict[str, Any], target_ids: list[int], now: datetime) -> sa.Select:
    """The same rules as the analysis, for the rows of one claimed batch: who opted out or got
    quarantined since the analysis."""
    channel = delivery["channel"]
    valid = sa.true()
    reason, joins = exclusion_case(
        channel=channel, transactional=delivery["kind"] == "transactional",
        service_id=delivery["service_id"], now=now, address=t.c.address, key=t.c.address_key,
        valid=valid, profile_id=t.c.profile_id)
    return (sa.select(t.c.id, reason.label("reason")).select_from(_with_joins(t, joins))
            .where(t.c.id.in_(target_ids)))


def _mark(from_state: str) -> sa.Update:
    # Guarded by the state it leaves: a row settled by someone else is never overwritten.
    return (t.update().where(t.c.id == sa.bindparam("target_id"), t.c.state == from_state)
            .values(state=sa.bindparam("new_state"), reason=sa.bindparam("new_reason"),
                    detail=sa.bindparam("new_detail"), sent_at=sa.bindparam("new_sent_at"),
                    message_id=sa.bindparam("new_message_id")))


MARK = _mark("in_flight")  # the transport's answer
MARK_FROM_CLAIMED = _mark("claimed")  # excluded by the re-check, never handed over

# Claimed rows handed to the transport: from here on a crash leaves their fate unknown.
HAND_OVER = (t.update().where(t.c.id.in_(sa.bindparam("ids", expanding=True)),
                              t.c.state == "claimed")
             .values(state="in_flight"))


HEARTBEAT = workers.update().where(workers.c.id == sa.bindparam("worker_id")).values(
    heartbeat_at=sa.bindparam("now"))
INSERT_WORKER = workers.insert()
DELETE_WORKER = workers.delete().where(workers.c.id == sa.bindparam("worker_id"))

SERVICE_SLUG = sa.select(services.c.slug).where(services.c.id == sa.bindparam("service_id"))
DELIVERY = sa.select(d).where(d.c.id == sa.bindparam("delivery_id"))
DELIVERY_FOR_UPDATE = DELIVERY.with_for_update()
INSERT_DELIVERY = d.insert().returning(d.c.id)
UPDATE_DELIVERY = d.update().where(d.c.id == sa.bindparam("delivery_id"))

def left_to_send(delivery_id: int) -> sa.Select:
    return sa.select(sa.func.count()).where(
        of_delivery(delivery_id), t.c.state.in_(("pending", "claimed", "in_flight")))


def throughput(delivery_id: int) -> sa.Select:
    """Sends per minute for the report: first and last send time, and how many."""
    return sa.select(sa.func.min(t.c.sent_at), sa.func.max(t.c.sent_at),
                     sa.func.count(t.c.sent_at)).where(of_delivery(delivery_id),
                                                       t.c.state == "sent")


def recover_claims(delivery_id: int, gone: sa.ColumnElement[bool]) -> sa.Update:
    """Claimed rows of workers that are gone go back to pending: never handed over."""
    return (t.update().where(of_delivery(delivery_id), t.c.state == "claimed", gone)
            .values(state="pending", worker=None, claimed_at=None))


def recover_in_flight(delivery_id: int, gone: sa.ColumnElement[bool]) -> sa.Update:
    """In-flight rows of workers that are gone: their fate is unknown, never resent."""
    return (t.update().where(of_delivery(delivery_id), t.c.state == "in_flight", gone)
            .values(state="unknown"))


# Deliveries in state `sending` with rows left to claim (`consentry worker`).
SENDABLE = sa.select(d.c.id).where(d.c.state == "sending", sa.exists().where(
    of_delivery_column(d.c.id), t.c.state == "pending")).order_by(d.c.id)


def target_of_profile(delivery_id: int, profile_id: int) -> sa.Select:
    return sa.select(t.c.state, t.c.reason).where(of_delivery(delivery_id),
                                                  t.c.profile_id == profile_id)
