"""Sending the queued webhook deliveries: signed POSTs, retries with exponential back-off.

Each delivery is one POST of the payload as JSON (webhooks/service.py describes it) with::

    Content-Type: application/json
    X-Consentry-Event: consent.opt_out
    X-Consentry-Delivery: 1234                       (the delivery log's row id)
    X-Consentry-Timestamp: 1738324800                (Unix seconds, when it was sent)
    X-Consentry-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

Receivers check it with `verify_signature` (or its twenty lines in their own language)::

    from consentry.webhooks.dispatch import verify_signature

    ok = verify_signature(secret, request.headers["X-Consentry-Timestamp"], raw_body,
                          request.headers["X-Consentry-Signature"])

on the raw body bytes as received (not re-encoded JSON), rejecting timestamps more than five
minutes away from their clock (a replayed request), and deduplicating on the payload's `id`:
delivery is at least once, so the same event may arrive twice (an answer lost on the way).

Any 2xx answer delivers; anything else (another status, a timeout, a refused connection) is
tried again after BASE_DELAY * 2^(attempts - 1), capped at MAX_DELAY, with +-20 % jitter; after
MAX_ATTEMPTS attempts the delivery is `failed`. Every attempt records its status and error on
the row: the rows are the delivery log. Redirects are not followed (a 3xx is a failure).

Several dispatchers may run against one PostgreSQL (serve's background thread, workers): rows
are claimed with FOR UPDATE SKIP LOCKED and leased for LEASE, so each is sent by one of them,
and a dispatcher that dies mid-way leaves its claims to be retried when the lease runs out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from consentry.store.types import utcnow
from consentry.webhooks import service, sql
from consentry.webhooks.service import State

BASE_DELAY = timedelta(seconds=30)
MAX_DELAY = timedelta(hours=6)
MAX_ATTEMPTS = 12  # about 15 hours from the first attempt to the last
TIMEOUT = 10.0  # seconds, per request
LEASE = timedelta(minutes=5)  # longer than a batch of requests can take
BATCH = 100
TOLERANCE = 300  # seconds a receiver accepts between the timestamp and its clock
EVERY = 5.0  # seconds between dispatch runs in serve's background thread and the worker
PRUNE_EVERY = 3600.0
JITTER = 0.2

_last_prune = 0.0


@dataclass
class DispatchStats:
    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    postponed: int = 0  # not tried: their endpoint failed earlier in the same run

    def as_json(self) -> dict[str, int]:
        return {"claimed": self.claimed, "delivered": self.delivered,
                "retrying": self.retrying, "failed": self.failed, "postponed": self.postponed}


# --- signatures ------------------------------------------------------------------------------

def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Consentry-Signature header's value."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str | None, body: bytes, header: str | None, *,
                     tolerance: float | None = TOLERANCE, now: float | None = None) -> bool:
    """Whether a received webhook is genuine: the signature header matches the raw body and
    timestamp under `secret`, and the timestamp is within `tolerance` seconds of `now` (None
    skips that check). Constant-time comparison."""
    if not timestamp or not header:
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if tolerance is not None and abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header.strip())


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """How long to wait after the `attempts`-th failed attempt."""
    base = min(BASE_DELAY * 2 ** max(attempts - 1, 0), MAX_DELAY)
    factor = 1 + JITTER * (2 * (rng or random).random() - 1)
    return min(base * factor, MAX_DELAY)


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


# --- dispatch --------------------------------------------------------------------------------

def deliver_due(engine: sa.Engine, *, now: datetime | None = None, limit: int = BATCH,
                timeout: float = TIMEOUT, client: httpx.Client | None = None) -> DispatchStats:
    """Claim up to `limit` due deliveries and send them; `now` (tests) is the scheduling
    clock, the signed timestamp is always the real time of sending."""
    stats = DispatchStats()
    claim_at = now or utcnow()
    with engine.begin() as conn:
        rows = conn.execute(sql.DUE, {"now": claim_at, "limit": limit}).mappings().all()
        if rows:
            conn.execute(sql.LEASE, [{"delivery_id": r["id"], "until": claim_at + LEASE}
                                     for r in rows])
    stats.claimed = len(rows)
    if not rows:
        return stats
    own = client is None
    http = client or httpx.Client(timeout=timeout, follow_redirects=False,
                                  headers={"User-Agent": "Consentry-Webhooks/1"})
    down: dict[int, str] = {}  # endpoints that failed in this run
    try:
        for row in rows:
            if row["endpoint_id"] in down:
                _postpone(engine, row["id"], now or utcnow())
                stats.postponed += 1
                continue
            status, error = _post(http, row)
            at = now or utcnow()
            if status is not None and 200 <= status < 300:
                _record(engine, row["id"], state=State.DELIVERED, attempts=row["attempts"] + 1,
                        last_status=status, last_error=None, delivered_at=at,
                        next_attempt_at=at)
                stats.delivered += 1
                continue
            down[row["endpoint_id"]] = error or ""
            attempts = row["attempts"] + 1
            if attempts >= MAX_ATTEMPTS:
                _record(engine, row["id"], state=State.FAILED, attempts=attempts,
                        last_status=status, last_error=error, next_attempt_at=at)
                stats.failed += 1
            else:
                _record(engine, row["id"], state=State.PENDING, attempts=attempts,
                        last_status=status, last_error=error,
                        next_attempt_at=at + backoff(attempts))
                stats.retrying += 1
    finally:
        if own:
            http.close()
    return stats


def deliver_all(engine: sa.Engine, *, now: datetime | None = None,
                timeout: float = TIMEOUT) -> DispatchStats:
    """Run deliver_due until nothing due is left (`consentry webhooks deliver`)."""
    total = DispatchStats()
    with httpx.Client(timeout=timeout, follow_redirects=False,
                      headers={"User-Agent": "Consentry-Webhooks/1"}) as client:
        while True:
            stats = deliver_due(engine, now=now, client=client)
            for name in ("claimed", "delivered", "retrying", "failed", "postponed"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            # Postponed rows are due again only later; a full batch may have more behind it.
            if stats.claimed < BATCH or stats.delivered == 0:
                return total


def step(engine: sa.Engine) -> DispatchStats:
    """One periodic run (serve's background thread, `consentry worker`): send what is due,
    and about once an hour prune the old delivery log."""
    global _last_prune
    stats = deliver_due(engine)
    if time.monotonic() - _last_prune >= PRUNE_EVERY:
        _last_prune = time.monotonic()
        with engine.begin() as conn:
            service.prune(conn)
    return stats


def _post(http: httpx.Client, row: Any) -> tuple[int | None, str | None]:
    body = body_of(row["payload"])
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json",
               "X-Consentry-Event": str(row["payload"].get("type", "")),
               "X-Consentry-Delivery": str(row["id"]),
               "X-Consentry-Timestamp": timestamp,
               "X-Consentry-Signature": sign(row["secret"], timestamp, body)}
    try:
        response = http.post(row["url"], content=body, headers=headers)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}".rstrip(": ")[:1000]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    text = response.text[:300].strip()
    return response.status_code, f"HTTP {response.status_code}" + (f": {text}" if text else "")


def _record(engine: sa.Engine, delivery_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sql.RESULT.values(**values), {"delivery_id": delivery_id})


def _postpone(engine: sa.Engine, delivery_id: int, at: datetime) -> None:
    """Back in the queue without counting an attempt: its endpoint just failed another one."""
    with engine.begin() as conn:
        conn.execute(sql.RESULT.values(next_attempt_at=at + BASE_DELAY),
                     {"delivery_id": delivery_id})
