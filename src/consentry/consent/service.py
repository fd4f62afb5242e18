"""Opt-out, opt-in, services and subscriptions; each change goes to the ledger."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from consentry.consent import sql
from consentry.domain import consent as rules
from consentry.domain.channels import Channel
from consentry.domain.errors import Conflict, ConsentryError, NotFound
from consentry.domain.ledger import Kind, Origin, Source
from consentry.ledger import service as ledger
from consentry.store.types import utcnow


def lock_profile(conn: sa.Connection, profile_id: int) -> None:
    if conn.execute(sql.LOCK_PROFILE, {"profile_id": profile_id}).first() is None:
        raise NotFound(f"no profile {profile_id}")


def optouts(conn: sa.Connection, profile_id: int) -> rules.OptOuts:
    rows = conn.execute(sql.OPTOUTS_OF, {"profile_id": profile_id}).mappings().all()
    return rules.OptOuts(frozenset(r["scope"] for r in rows))


def optout_details(conn: sa.Connection, profile_id: int) -> dict[str, dict[str, Any]]:
    rows = conn.execute(sql.OPTOUTS_OF, {"profile_id": profile_id}).mappings().all()
    return {r["scope"]: {"at": r["at"].isoformat(), "source": r["source"], "actor": r["actor"],
                         "note": r["note"]} for r in rows}


def opt_out(conn: sa.Connection, profile_id: int, channel: Channel | None, origin: Origin,
            now: datetime | None = None) -> bool:
    """Opt the profile out of everything (channel None) or one channel; False if it already was.
    Nothing is deleted: subscriptions and addresses stay as they are."""
    now = now or utcnow()
    lock_profile(conn, profile_id)
    scope = rules.optout_scope(channel.value if channel else None)
    if scope in optouts(conn, profile_id).scopes:
        return False
    conn.execute(sql.INSERT_OPTOUT, {"profile_id": profile_id, "scope": scope, "at": now,
                                     "source": origin.source, "actor": origin.actor,
                                     "note": origin.note})
    ledger.append(conn, [origin.event(now, Kind.OPT_OUT, profile_id=profile_id, channel=scope,
                                      old_state="opted_in", new_state="opted_out")])
    return True


def opt_in(conn: sa.Connection, profile_id: int, channel: Channel | None, origin: Origin,
           now: datetime | None = None) -> bool:
    """Undo an opt-out of everything (channel None) or of one channel; False if there was none."""
    now = now or utcnow()
    lock_profile(conn, profile_id)
    scope = rules.optout_scope(channel.value if channel else None)
    deleted = conn.execute(sql.DELETE_OPTOUT, {"profile_id": profile_id, "scope": scope})
    if not deleted.rowcount:
        return False
    ledger.append(conn, [origin.event(now, Kind.OPT_IN, profile_id=profile_id, channel=scope,
                                      old_state="opted_out", new_state="opted_in")])
    return True


# --- services ----------------------------------------------------------------------------

_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Service:
    id: int
    slug: str
    label: str
    channel: Channel
    double_opt_in: bool
    validity_days: int | None
    public: bool

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "slug": self.slug, "label": self.label,
                "channel": self.channel.value, "double_opt_in": self.double_opt_in,
                "validity_days": self.validity_days, "public": self.public}


def _service(row: Any) -> Service:
    return Service(row["id"], row["slug"], row["label"], Channel(row["channel"]),
                   row["double_opt_in"], row["validity_days"], row["public"])


def create_service(conn: sa.Connection, slug: str, channel: Channel, label: str, *,
                   double_opt_in: bool = False, validity_days: int | None = None,
                   public: bool = True, now: datetime | None = None) -> Service:
    if not _SLUG.fullmatch(slug):
        raise ConsentryError(f"invalid service slug {slug!r}: lowercase letters, digits, '-' "
                             "and '_', at most 64, starting with a letter or digit")
    if validity_days is not None and validity_days <= 0:
        raise ConsentryError("--validity-days must be a positive number of days")
    if not label.strip():
        raise ConsentryError("a service needs a label")
    if conn.execute(sql.SERVICE_BY_SLUG, {"slug": slug}).first():
        raise Conflict(f"service {slug!r} exists already")
    service_id = conn.execute(sql.INSERT_SERVICE.returning(sql.services.c.id), {
        "slug": slug, "label": label.strip(), "channel": channel.value,
        "double_opt_in": double_opt_in, "validity_days": validity_days, "public": public,
        "created_at": now or utcnow()}).scalar_one()
    return Service(service_id, slug, label.strip(), channel, double_opt_in, validity_days,
                   public)


def get_service(conn: sa.Connection, slug: str) -> Service:
    row = conn.execute(sql.SERVICE_BY_SLUG, {"slug": slug}).mappings().first()
    if row is None:
        raise NotFound(f"no service {slug!r}")
    return _service(row)


def list_services(conn: sa.Connection) -> list[dict[str, Any]]:
    counts: dict[int, dict[str, int]] = {}
    for service_id, state, n in conn.execute(sql.SUBSCRIPTION_COUNTS):
        counts.setdefault(service_id, {})[state] = n
    result = []
    for row in conn.execute(sql.ALL_SERVICES).mappings():
        states = counts.get(row["id"], {})
        result.append({**_service(row).as_json(),
                       "subscriptions": {s.value: states.get(s.value, 0)
                                         for s in rules.SubscriptionState}})
    return result


# --- subscriptions -----------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionResult:
    service: Service
    state: rules.SubscriptionState
    changed: bool
    needs_confirmation: bool = False


def subscribe(conn: sa.Connection, profile_id: int, service: Service, origin: Origin, *,
              confirmed: bool = False, now: datetime | None = None) -> SubscriptionResult:
    now = now or utcnow()
    lock_profile(conn, profile_id)
    row = conn.execute(sql.SUBSCRIPTION, {"profile_id": profile_id,
                                          "service_id": service.id}).mappings().first()
    current = rules.SubscriptionState(row["state"]) if row else None
    change = rules.subscribe(current, double_opt_in=service.double_opt_in, confirmed=confirmed,
                             validity_days=service.validity_days, now=now)
    if change is None:
        assert current is not None
        return SubscriptionResult(service, current, False)
    _store(conn, row, profile_id, service, change, now)
    _record(conn, profile_id, service, current, change.new_state, origin, now)
    return SubscriptionResult(service, change.new_state, True, change.needs_confirmation)


def unsubscribe(conn: sa.Connection, profile_id: int, service: Service, origin: Origin,
                now: datetime | None = None) -> SubscriptionResult:
    now = now or utcnow()
    lock_profile(conn, profile_id)
    row = conn.execute(sql.SUBSCRIPTION, {"profile_id": profile_id,
                                          "service_id": service.id}).mappings().first()
    current = rules.SubscriptionState(row["state"]) if row else None
    change = rules.unsubscribe(current)
    if change is None:
        return SubscriptionResult(service, current or rules.SubscriptionState.UNSUBSCRIBED,
                                  False)
    _store(conn, row, profile_id, service, change, now)
    _record(conn, profile_id, service, current, change.new_state, origin, now)
    return SubscriptionResult(service, change.new_state, True)


def _store(conn: sa.Connection, row: Any, profile_id: int, service: Service,
           change: rules.SubscriptionChange, now: datetime) -> None:
    subscribed_at = now if change.new_state is rules.SubscriptionState.SUBSCRIBED else (
        row["subscribed_at"] if row else None)
    values = {"state": change.new_state.value, "state_at": now, "subscribed_at": subscribed_at,
              "expires_at": change.expires_at}
    if row is None:
        conn.execute(sql.INSERT_SUBSCRIPTION, {**values, "profile_id": profile_id,
                                               "service_id": service.id, "created_at": now})
    else:
        conn.execute(sql.UPDATE_SUBSCRIPTION, {**values, "sub_id": row["id"]})


def _record(conn: sa.Connection, profile_id: int, service: Service,
            old: rules.SubscriptionState | None, new: rules.SubscriptionState, origin: Origin,
            now: datetime) -> None:
    ledger.append(conn, [origin.event(now, Kind.SUBSCRIPTION, profile_id=profile_id,
                                      channel=service.channel.value, service=service.slug,
                                      old_state=old.value if old else None,
                                      new_state=new.value)])


def subscriptions_of(conn: sa.Connection, profile_id: int,
                     now: datetime | None = None) -> list[dict[str, Any]]:
    """A profile's subscriptions as they stand now: one whose validity ended reads as expired
    even before the periodic task has recorded it."""
    now = now or utcnow()
    result = []
    for r in conn.execute(sql.SUBSCRIPTIONS_OF, {"profile_id": profile_id}).mappings():
        state = rules.SubscriptionState(r["state"])
        if rules.expired(state, r["expires_at"], now):
            state = rules.SubscriptionState.EXPIRED
        result.append({
            "service": r["slug"], "channel": r["channel"], "state": state.value,
            "state_at": r["state_at"].isoformat(),
            "subscribed_at": r["subscribed_at"].isoformat() if r["subscribed_at"] else None,
            "expires_at": r["expires_at"].isoformat() if r["expires_at"] else None})
    return result


def expire_subscriptions(conn: sa.Connection, now: datetime | None = None) -> int:
    """End every subscription whose validity period is over: one UPDATE, one ledger batch."""
    now = now or utcnow()
    expiring = conn.execute(sql.expired_subscriptions(sa.bindparam("now")),
                            {"now": now}).mappings().all()
    if not expiring:
        return 0
    conn.execute(sql.EXPIRE, {"now": now})
    origin = Origin(source=Source.EXPIRY, actor="system")
    ledger.append(conn, [origin.event(now, Kind.SUBSCRIPTION, profile_id=r["profile_id"],
                                      channel=r["channel"], service=r["slug"],
                                      old_state="subscribed", new_state="expired")
                         for r in expiring])
    return len(expiring)

