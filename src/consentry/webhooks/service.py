"""Outbound webhook endpoints, the outbox they are fed from, and the delivery log.

Every consent change passes through `ledger.service.append`, which calls `enqueue` in the same
transaction: the deliveries commit with the change or not at all (the outbox pattern), and
`dispatch.deliver_due` sends them afterwards, with retries.

Payload (one JSON object per event and endpoint)::

    {"id": "<the ledger event's hash: the same on every retry, a receiver's dedupe key>",
     "type": "consent.opt_out" | "consent.opt_in" | "subscription.changed"
             | "quarantine.changed" | "suppression.applied" | "profile.erased",
     "at": "2025-01-31T12:00:00.123456+00:00", "profile_id": 42 | null,
     "channel": "email" | "sms" | "push" | "all" | null, "service": "news" | null,
     "old_state": "...", "new_state": "...", "source": "api", "actor": "apikey:crm",
     "address": "...", "status": "quarantined"}       # quarantine.changed only

No personal data beyond the profile id, with one exception: a quarantine change belongs to an
address, not to a profile (one address may be held by several profiles, or by none), so
`quarantine.changed` carries the normalized address it is about; without it the event would
name nothing a receiver could act on. Names, notes, IP addresses, user agents and evidence
never leave. Delivered and failed rows are deleted after RETENTION (`prune`), so the log does
not keep those addresses for ever.

Endpoints subscribe to event kinds (`opt_out`, `opt_in`, `subscription`, `quarantine`,
`suppression`, `erasure`) or to all of them with `*`; every function takes a Connection and
the caller owns the transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from consentry.auth.service import audit
from consentry.domain.errors import ConsentryError, NotFound
from consentry.domain.ledger import Event, Kind
from consentry.store.schema import webhook_deliveries
from consentry.store.types import utcnow
from consentry.webhooks import sql

TYPES: dict[str, str] = {
    Kind.OPT_OUT: "consent.opt_out",
    Kind.OPT_IN: "consent.opt_in",
    Kind.SUBSCRIPTION: "subscription.changed",
    Kind.QUARANTINE: "quarantine.changed",
    Kind.SUPPRESSION: "suppression.applied",
    Kind.ERASURE: "profile.erased",
}
KINDS: tuple[str, ...] = tuple(TYPES)
ALL = "*"
RETENTION = timedelta(days=30)
SECRET_PREFIX = "whsec_"


class State:
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# --- endpoints -------------------------------------------------------------------------------

def parse_events(values: Iterable[str]) -> list[str]:
    """Event kinds from what a user wrote: kinds, event types, `*` (or `all`), comma-separated
    or one per value. Unknown names are an error; the result is sorted and unique."""
    by_type = {t: k for k, t in TYPES.items()}
    kinds: set[str] = set()
    for value in values:
        for name in (n.strip().lower() for n in str(value).split(",")):
            if not name:
                continue
            if name in (ALL, "all"):
                return [ALL]
            kind = name if name in TYPES else by_type.get(name)
            if kind is None:
                raise ConsentryError(f"unknown webhook event {name!r}: expected "
                                     f"{', '.join(KINDS)} or * (all)")
            kinds.add(kind)
    if not kinds:
        raise ConsentryError("a webhook endpoint needs at least one event (or * for all)")
    return sorted(kinds)


def check_url(url: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
        ok = (parts.scheme in ("http", "https") and bool(parts.hostname) and len(url) <= 2048
              and not any(c.isspace() for c in url))
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        ok = False
    if not ok:
        raise ConsentryError(f"not an http(s) URL: {url[:200]!r}")
    return url


def create_endpoint(conn: sa.Connection, url: str, events: Iterable[str], actor: str, *,
                    active: bool = True, now: datetime | None = None) -> tuple[int, str]:
    """A new endpoint: (id, its signing secret). The secret is shown this once."""
    now = now or utcnow()
    url = check_url(url)
    kinds = parse_events(events)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    endpoint_id = int(conn.execute(sql.INSERT_ENDPOINT, {
        "url": url, "secret": secret, "events": kinds, "active": active,
        "created_at": now}).scalar_one())
    audit(conn, actor, "webhook.create", f"webhook:{endpoint_id}",
          {"url": url, "events": kinds, "active": active}, now=now)
    return endpoint_id, secret


def get_endpoint(conn: sa.Connection, endpoint_id: int) -> dict[str, Any]:
    """The endpoint with its delivery counts, without the secret."""
    row = conn.execute(sql.ENDPOINT, {"endpoint_id": endpoint_id}).mappings().first()
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return _public(row, _counts(conn).get(endpoint_id, {}))


def list_endpoints(conn: sa.Connection) -> list[dict[str, Any]]:
    counts = _counts(conn)
    return [_public(r, counts.get(r["id"], {}))
            for r in conn.execute(sql.LIST_ENDPOINTS).mappings()]


def update_endpoint(conn: sa.Connection, endpoint_id: int, actor: str, *,
                    active: bool | None = None, events: Iterable[str] | None = None,
                    url: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    get_endpoint(conn, endpoint_id)
    values: dict[str, Any] = {}
    if active is not None:
        values["active"] = active
    if events is not None:
        values["events"] = parse_events(events)
    if url is not None:
        values["url"] = check_url(url)
    if values:
        conn.execute(sql.UPDATE_ENDPOINT.values(**values), {"endpoint_id": endpoint_id})
        audit(conn, actor, "webhook.update", f"webhook:{endpoint_id}", values, now=now)
    return get_endpoint(conn, endpoint_id)


def delete_endpoint(conn: sa.Connection, endpoint_id: int, actor: str,
                    now: datetime | None = None) -> None:
    """Delete an endpoint and its delivery log (deactivate it to keep the log)."""
    endpoint = get_endpoint(conn, endpoint_id)
    conn.execute(sql.DELETE_ENDPOINT, {"endpoint_id": endpoint_id})
    audit(conn, actor, "webhook.delete", f"webhook:{endpoint_id}", {"url": endpoint["url"]},
          now=now)


def _public(row: Any, counts: dict[str, int]) -> dict[str, Any]:
    return {"id": row["id"], "url": row["url"], "events": list(row["events"]),
            "active": bool(row["active"]), "created_at": row["created_at"],
            "deliveries": {s: counts.get(s, 0)
                           for s in (State.PENDING, State.DELIVERED, State.FAILED)}}


def _counts(conn: sa.Connection) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {}
    for endpoint_id, state, n in conn.execute(sql.COUNTS):
        counts.setdefault(endpoint_id, {})[state] = n
    return counts


# --- the outbox ------------------------------------------------------------------------------

def enqueue(conn: sa.Connection, events: Sequence[Event],
            ids: Sequence[str] | None = None, now: datetime | None = None) -> int:
    """Queue one delivery per (event, active endpoint subscribed to its kind), in this
    transaction; `ids` are the events' unique ids (the ledger passes each event's hash).
    One query when no endpoint is active, one INSERT (executemany) more when some are."""
    if not events:
        return 0
    endpoints = conn.execute(sql.ACTIVE_ENDPOINTS).all()
    if not endpoints:
        return 0
    now = now or utcnow()
    rows: list[dict[str, Any]] = []
    for i, event in enumerate(events):
        payload: dict[str, Any] | None = None
        for endpoint_id, kinds in endpoints:
            if ALL not in kinds and event.kind not in kinds:
                continue
            if payload is None:
                payload = payload_of(event, ids[i] if ids is not None
                                     else secrets.token_hex(16))
            rows.append({"endpoint_id": endpoint_id, "payload": payload,
                         "state": State.PENDING, "attempts": 0, "next_attempt_at": now,
                         "created_at": now})
    if rows:
        conn.execute(sql.INSERT_DELIVERY, rows)
    return len(rows)


def payload_of(event: Event, event_id: str) -> dict[str, Any]:
    """What a receiver gets for an event (the module docstring lists what and why)."""
    payload: dict[str, Any] = {
        "id": event_id, "type": TYPES.get(event.kind, event.kind),
        "at": event.at.astimezone(UTC).isoformat(), "profile_id": event.profile_id,
        "channel": event.channel, "service": event.service, "old_state": event.old_state,
        "new_state": event.new_state, "source": event.source, "actor": event.actor}
    if event.kind == Kind.QUARANTINE:
        payload["address"] = event.address
        # The ledger's states read "quarantined(hard_bounce)", "erroneous(2)": the plain
        # status too, for receivers that only need that.
        payload["status"] = (event.new_state or "valid").split("(", 1)[0]
    return payload


# --- the delivery log ------------------------------------------------------------------------

def deliveries(conn: sa.Connection, endpoint_id: int | None, *, before: int | None = None,
               limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
    """An endpoint's deliveries (None: every endpoint's), newest first (`before`: a delivery
    id to continue after)."""
    if endpoint_id is not None:
        get_endpoint(conn, endpoint_id)
    if state is not None and state not in (State.PENDING, State.DELIVERED, State.FAILED):
        raise ConsentryError(f"unknown delivery state {state!r}: expected pending, delivered "
                             "or failed")
    return [_delivery(r) for r in conn.execute(
        sql.deliveries_page(endpoint_id, before, limit, state)).mappings()]


def _delivery(row: Any) -> dict[str, Any]:
    payload = row["payload"] or {}
    return {"id": row["id"], "endpoint_id": row["endpoint_id"],
            "event_id": payload.get("id"), "type": payload.get("type"), "payload": payload,
            "state": row["state"], "attempts": row["attempts"],
            "next_attempt_at": row["next_attempt_at"], "last_status": row["last_status"],
            "last_error": row["last_error"], "created_at": row["created_at"],
            "delivered_at": row["delivered_at"]}


def retry(conn: sa.Connection, endpoint_id: int, delivery_id: int, actor: str,
          now: datetime | None = None) -> dict[str, Any]:
    """Send a delivery again at the next dispatch: a failed one gets a new round of attempts,
    a pending one is moved forward; a delivered one is sent once more (receivers dedupe)."""
    now = now or utcnow()
    t = webhook_deliveries
    row = conn.execute(sa.select(t).where(t.c.id == delivery_id, t.c.endpoint_id == endpoint_id)
                       ).mappings().first()
    if row is None:
        raise NotFound(f"no delivery {delivery_id} of webhook endpoint {endpoint_id}")
    conn.execute(t.update().where(t.c.id == delivery_id).values(
        state=State.PENDING, attempts=0, next_attempt_at=now, delivered_at=None))
    audit(conn, actor, "webhook.retry", f"webhook:{endpoint_id}",
          {"delivery": delivery_id, "was": row["state"]}, now=now)
    return _delivery(conn.execute(sa.select(t).where(t.c.id == delivery_id)).mappings().one())


def prune(conn: sa.Connection, now: datetime | None = None,
          keep: timedelta = RETENTION) -> int:
    """Delete delivered and failed rows whose last attempt is older than `keep`."""
    t = webhook_deliveries
    cutoff = (now or utcnow()) - keep
    return conn.execute(t.delete().where(t.c.state.in_((State.DELIVERED, State.FAILED)),
                                         t.c.next_attempt_at < cutoff)).rowcount
