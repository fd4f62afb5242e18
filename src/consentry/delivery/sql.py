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
    analysis_duplicates,
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
dup = analysis_duplicates

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


# Channels whose address is a column of the profile row (push tokens have rows of their own).
ADDRESSES_ON_PROFILE = {"email": profiles.c.email, "sms": profiles.c.phone}


def _key_column(channel: str) -> Any:
    """The column holding a channel's matching key (what quarantine and duplicates compare)."""
    if channel == "email":
        return profiles.c.email_key
    return profiles.c.phone if channel == "sms" else push_tokens.c.token


def _address_columns(channel: str) -> tuple[Any, Any, Any, Any]:
    """(FROM clause, address, matching key, validity check) for a channel's audience."""
    key = _key_column(channel)
    if channel == "email":
        # Addresses are validated on the way in; this guards rows written around the service
        # layer (a raw SQL load) with the cheapest check that catches a missing @ or domain.
        return profiles, ADDRESSES_ON_PROFILE[channel], key, key.like("%_@_%._%")
    if channel == "sms":
        valid = sa.and_(key.like("+%"), sa.func.length(key).between(8, 16))
        return profiles, ADDRESSES_ON_PROFILE[channel], key, valid
    # Push: one target row per device token; a profile without tokens gets one row that
    # records address_missing.
    joined = profiles.outerjoin(push_tokens, push_tokens.c.profile_id == profiles.c.id)
    return joined, key, key, sa.func.length(key) >= 8


def exclusion_case(*, channel: str, transactional: bool, service_id: int | None, now: datetime,
                   address: Any, key: Any, valid: Any, profile_id: Any,
                   profile_ids: tuple[int, int] | None = None, quarantine_as_set: bool = False,
                   duplicates: Any = None) -> tuple[sa.Case, list[tuple[Any, Any]]]:
    """The first failing rule of rules 1 to 7 (or 8) of domain.reachability.EXCLUSION_ORDER,
    and the LEFT JOINs it needs. Transactional deliveries skip opt-outs and subscriptions;
    allowlisted addresses skip denylist and quarantine (they have neither status).

    Rules 1 to 5 read the profile's own rows, rules 6 and 7 the quarantine table by address:
    joined row by row (a few rows: the re-check of a batch), or with `quarantine_as_set` as
    membership in the channel's denylisted and quarantined addresses, which PostgreSQL hashes
    once for the whole statement (the analysis, whose other joins are then all keyed by
    profile). With `duplicates`, rule 8 is read from the duplicates worked out beforehand
    (analysis_duplicates); rules 9 and 10 depend on the whole target: the analysis applies
    them to the target rows once they are written.

    `profile_ids` (a range) is repeated on every joined table: PostgreSQL carries equalities
    across a join but not ranges, and a merge join of one chunk of profiles would otherwise
    read the opt-outs and subscriptions of every chunk before it."""
    all_out = opt_outs.alias("all_out")
    channel_out = opt_outs.alias("channel_out")
    sub = subscriptions.alias("sub")
    q = quarantine.alias("q")
    joins: list[tuple[Any, Any]] = []

    def of_profile(column: Any) -> sa.ColumnElement[bool]:
        same = column == profile_id
        return same if profile_ids is None else sa.and_(same, column.between(*profile_ids))

    whens: list[tuple[Any, Any]] = [
        (address.is_(None), Exclusion.ADDRESS_MISSING.value),
        (sa.not_(valid), Exclusion.ADDRESS_INVALID.value),
    ]
    if not transactional:
        joins += [
            (all_out, sa.and_(of_profile(all_out.c.profile_id), all_out.c.scope == "all")),
            (channel_out, sa.and_(of_profile(channel_out.c.profile_id),
                                  channel_out.c.scope == channel)),
        ]
        whens += [(all_out.c.profile_id.is_not(None), Exclusion.OPTED_OUT.value),
                  (channel_out.c.profile_id.is_not(None), Exclusion.CHANNEL_OPTED_OUT.value)]
        if service_id is not None:
            # Active = subscribed and not past its validity (even before the expiry task ran).
            joins.append((sub, sa.and_(
                of_profile(sub.c.profile_id), sub.c.service_id == service_id,
                sub.c.state == "subscribed",
                sa.or_(sub.c.expires_at.is_(None), sub.c.expires_at > now))))
            whens.append((sub.c.id.is_(None), Exclusion.NOT_SUBSCRIBED.value))
    if quarantine_as_set:
        for status in (Exclusion.DENYLISTED, Exclusion.QUARANTINED):
            held = sa.select(quarantine.c.address_key).where(quarantine.c.channel == channel,
                                                             quarantine.c.status == status.value)
            whens.append((key.in_(held), status.value))
    else:
        joins.append((q, sa.and_(q.c.channel == channel, q.c.address_key == key)))
        whens += [(q.c.status == "denylisted", Exclusion.DENYLISTED.value),
                  (q.c.status == "quarantined", Exclusion.QUARANTINED.value)]
    if duplicates is not None:
        whens.append((duplicates.is_not(None), Exclusion.DUPLICATE.value))
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


def audience_select(delivery: dict[str, Any], now: datetime, *,
                    profile_ids: tuple[int, int] | None = None,
                    for_insert: bool = False, join_duplicates: bool = False) -> sa.Select:
    """(profile_id, address, address_key, reason, number) for everyone in the delivery's
    audience, or those of its profiles whose ids lie in the range `profile_ids`. The
    analysis's insert (`for_insert`) reads the quarantine as a set, and with
    `join_duplicates` the duplicates worked out beforehand; otherwise the quarantine is joined
    row by row, for the few holders of shared addresses."""
    channel = delivery["channel"]
    base, address, key, valid = _address_columns(channel)
    number = _target_number(channel)
    duplicates = None
    if for_insert and join_duplicates:
        on = sa.and_(dup.c.delivery_id == delivery["id"], dup.c.number == number)
        if profile_ids is not None and channel != "push":  # push numbers are not profile ids
            on = sa.and_(on, dup.c.number.between(*profile_ids))
        base = base.outerjoin(dup, on)
        duplicates = dup.c.number
    reason, joins = exclusion_case(
        channel=channel, transactional=delivery["kind"] == "transactional",
        service_id=delivery["service_id"], now=now, address=address, key=key, valid=valid,
        profile_id=profiles.c.id, profile_ids=profile_ids, quarantine_as_set=for_insert,
        duplicates=duplicates)
    stmt = sa.select(profiles.c.id.label("profile_id"), address.label("address"),
                     key.label("address_key"), reason.label("reason"),
                     number.label("number")).select_from(_with_joins(base, joins))
    if delivery["audience"] == "service":
        members = sa.select(subscriptions.c.profile_id).where(
            subscriptions.c.service_id == delivery["service_id"])
        stmt = stmt.where(profiles.c.id.in_(members))
    for field, value in delivery["audience_filter"] or []:
        stmt = stmt.where(_filter_column(field) == value)
    if profile_ids is not None:
        stmt = stmt.where(profiles.c.id.between(*profile_ids))
    return stmt


PROFILE_FIELDS = ("locale", "first_name", "last_name", "external_id")


def _filter_column(field: str) -> Any:
    if field.startswith("attr."):
        return profiles.c.attributes[field[5:]].as_string()
    return profiles.c[field]


# --- analysis ---------------------------------------------------------------------------------
#
# 1. Rule 8, for the few profiles it concerns: the holders of shared addresses who pass rules
#    1 to 7, ranked per address; all but the oldest profile's are duplicates. On PostgreSQL in
#    ranges of the addresses (a shared address lies in one range), on parallel connections.
# 2. The target rows: the audience in one INSERT ... SELECT, each row with the first failing
#    rule of 1 to 8. On PostgreSQL in chunks of the profile id range, on parallel connections.
# 3. Rules 9 and 10, fatigue and the size limit, on the rows written.

PROFILE_ID_RANGE = sa.select(sa.func.min(profiles.c.id), sa.func.max(profiles.c.id))


def exclude_duplicates(delivery_id: int) -> sa.Update:
    """Rule 8 applied to rows already written (SQLite): a look-up by row id for each of the
    few duplicates, cheaper there than joining every new row to them (measured 0.1 to 0.3 s
    less for a million profiles). PostgreSQL joins them in the insert: an update of rows just
    written costs it a full page image in its log for each page first touched after a
    checkpoint."""
    first, _ = id_range(delivery_id)
    rows = sa.select(sa.literal(first, sa.BigInteger) + dup.c.number).where(
        dup.c.delivery_id == delivery_id)
    return (t.update().where(of_delivery(delivery_id), t.c.state == "pending", t.c.id.in_(rows))
            .values(state="excluded", reason=Exclusion.DUPLICATE.value))


def delete_duplicates(delivery_id: int) -> sa.Delete:
    return dup.delete().where(dup.c.delivery_id == delivery_id)


def shared_keys(channel: str, keys: tuple[str | None, str | None] = (None, None)) -> sa.Select:
    """Matching keys held more than once, read off the address index alone (an index-only
    scan in key order), those from keys[0] (inclusive) to keys[1] (exclusive) if given."""
    column = _key_column(channel)
    stmt = (sa.select(column).where(column.is_not(None)).group_by(column)
            .having(sa.func.count() > 1))
    if keys[0] is not None:
        stmt = stmt.where(column >= keys[0])
    if keys[1] is not None:
        stmt = stmt.where(column < keys[1])
    return stmt


def insert_duplicates(delivery: dict[str, Any], now: datetime,
                      keys: tuple[str | None, str | None] = (None, None)) -> sa.Insert:
    """Rule 8: of the audience's holders of an address held more than once who pass rules 1
    to 7, the oldest profile keeps the address and the others are duplicates."""
    channel = delivery["channel"]
    holders = (audience_select(delivery, now)
               .add_columns(profiles.c.created_at)
               .where(_key_column(channel).in_(shared_keys(channel, keys)))
               .subquery("holders"))
    ranked = (sa.select(holders.c.number, sa.func.row_number().over(
        partition_by=holders.c.address_key,
        order_by=(holders.c.created_at, holders.c.profile_id)).label("rank"))
        .where(holders.c.reason.is_(None))
        .subquery("ranked"))
    later = sa.select(sa.literal(delivery["id"], sa.BigInteger), ranked.c.number).where(
        ranked.c.rank > 1)
    return dup.insert().from_select(["delivery_id", "number"], later)


# The planner's histogram of the matching keys: PostgreSQL splits the duplicate rule's work
# at its quantiles (a shared key always falls in one range).
def key_histogram_pg(channel: str) -> sa.TextClause:
    table, column = ("push_tokens", "token") if channel == "push" else (
        "profiles", "email_key" if channel == "email" else "phone")
    return sa.text("SELECT histogram_bounds::text::text[] FROM pg_stats "
                   f"WHERE schemaname = current_schema() AND tablename = '{table}' "
                   f"AND attname = '{column}'")


def key_ranges(bounds: list[str] | None, parts: int) -> list[tuple[str | None, str | None]]:
    """`parts` ranges of keys split at quantiles of the histogram `bounds`, open at both
    ends; one range without a histogram."""
    if not bounds or parts < 2:
        return [(None, None)]
    cuts = sorted({bounds[len(bounds) * i // parts] for i in range(1, parts)})
    edges: list[str | None] = [None, *cuts, None]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def insert_targets(delivery: dict[str, Any], now: datetime,
                   profile_ids: tuple[int, int] | None = None, *,
                   join_duplicates: bool = True) -> sa.Insert:
    """The audience (or the part of it whose profile ids lie in `profile_ids`) becomes target
    rows in one INSERT ... SELECT, each with the first failing rule's reason or pending;
    rule 8 too with `join_duplicates` (else exclude_duplicates follows)."""
    # OFFSET 0 keeps the audience a subquery of its own: flattened into the insert, its
    # reason would be worked out twice a row, once for the reason and once for the state.
    audience = audience_select(delivery, now, profile_ids=profile_ids, for_insert=True,
                               join_duplicates=join_duplicates).offset(0).subquery("audience")
    first, _ = id_range(delivery["id"])
    pending = audience.c.reason.is_(None)
    address, key = audience.c.address, audience.c.address_key
    if delivery["channel"] in ADDRESSES_ON_PROFILE:
        # An excluded row is never sent: its address stays on the profile (exclusion_log
        # reads it there), and the row is smaller to write.
        address, key = sa.case((pending, address)), sa.case((pending, key))
    select = sa.select(
        (sa.literal(first, sa.BigInteger) + audience.c.number).label("id"),
        sa.literal(delivery["id"]).label("delivery_id"), audience.c.profile_id, address, key,
        sa.case((pending, "pending"), else_="excluded"), audience.c.reason)
    return t.insert().from_select(
        ["id", "delivery_id", "profile_id", "address", "address_key", "state", "reason"],
        select)


def insert_targets_counted(delivery: dict[str, Any], now: datetime,
                           profile_ids: tuple[int, int]) -> sa.Select:
    """The same insert on PostgreSQL, answering (state, reason, count) for the rows it wrote,
    so that the summary needs no second pass over them."""
    written = insert_targets(delivery, now, profile_ids).returning(t.c.state, t.c.reason).cte(
        "written")
    return (sa.select(written.c.state, written.c.reason, sa.func.count())
            .group_by(written.c.state, written.c.reason))


# PostgreSQL settings for the analysis, SET LOCAL in its transactions.
# - No JIT: compiling the expressions of a statement this size costs more than it saves.
# - work_mem: sorts and hashes stay in memory (4 MB is the server default). A chunk's hash of
#   quarantined addresses must fit, or PostgreSQL would rescan the list for every profile:
#   chunk_work_mem sizes it from the table's size, and the chunk's rows.
# - Without hash joins, the insert merges each chunk of profiles with its opt-outs and
#   subscriptions through their primary keys, a sequential walk in profile id order, where
#   probing a hash of every subscription misses the CPU cache for each profile and, past
#   work_mem, spills to disk (measured: 0.45 s instead of 0.8 s to read a million profiles,
#   and a third less for the whole insert).
# - A chunk needs no flush of its own at commit: the last step's commit flushes the log up to
#   itself, every chunk included, before the delivery counts as analysed.
# - The duplicates concern few profiles (the holders of shared addresses), found and ranked
#   through indexes: nested loops over those few, where the planner, which cannot tell how
#   many keys are shared, would hash every profile (0.3 s a statement for a million).
#   Without hash aggregation, the shared addresses are grouped in the order of the address
#   index, read index-only (0.28 s instead of 0.8 s for a million).
ANALYSIS_SETTINGS_PG = ("SET LOCAL jit = off", "SET LOCAL work_mem = '64MB'")
INSERT_SETTINGS_PG = ("SET LOCAL enable_hashjoin = off", "SET LOCAL synchronous_commit = off")
DUPLICATE_SETTINGS_PG = ("SET LOCAL enable_hashagg = off", "SET LOCAL enable_hashjoin = off",
                         "SET LOCAL enable_mergejoin = off",
                         "SET LOCAL synchronous_commit = off")

# The planner's row count for the quarantine table, to size a chunk's work_mem for its hash.
QUARANTINE_ROWS_PG = sa.text(
    "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'quarantine'::regclass")


def chunk_work_mem(quarantined: int, profiles: int) -> str:
    """SET LOCAL work_mem for a chunk: its hash of `quarantined` addresses (about 100 bytes an
    entry; 256 allowed) and the (state, reason) of the rows it writes for `profiles` profiles,
    counted after the insert (about 40 bytes a row; 64 allowed), stay in memory. Only what is
    used is allocated."""
    megabytes = max(64, -(-max(quarantined * 256, profiles * 64) // 2**20))
    return f"SET LOCAL work_mem = '{megabytes}MB'"


# The planner knows nothing of rows it has not sampled: before fatigue and the size limit
# read the new target rows back.
TARGET_STATISTICS_PG = ("ANALYZE delivery_targets",)

# One analysis of a delivery at a time across processes; a session lock, so a crashed
# analysis does not hold it. (SQLite has one writer: its analysis is a single transaction.)
# 7305 is the lock's class, keeping the delivery ids apart from any other advisory lock.
TRY_ANALYSIS_LOCK_PG = sa.text("SELECT pg_try_advisory_lock(7305, :delivery_id)")
ANALYSIS_UNLOCK_PG = sa.text("SELECT pg_advisory_unlock(7305, :delivery_id)")


def delete_targets(delivery_id: int) -> sa.Delete:
    return t.delete().where(of_delivery(delivery_id))


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


def exclusion_log(delivery_id: int, channel: str, *, reason: str | None = None,
                  after_id: int = 0, limit: int = 1000) -> sa.Select:
    """One row per excluded recipient, by id for keyset pagination. Rows excluded by the
    analysis keep no address of their own (see insert_targets): the profile's is shown."""
    address: Any = t.c.address
    if channel in ADDRESSES_ON_PROFILE:
        address = sa.func.coalesce(t.c.address, sa.select(ADDRESSES_ON_PROFILE[channel]).where(
            profiles.c.id == t.c.profile_id).scalar_subquery())
    stmt = (sa.select(t.c.id, t.c.profile_id, address.label("address"), t.c.state, t.c.reason)
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
