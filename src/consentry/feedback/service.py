"""Applying feedback: what a report says becomes quarantine transitions, opt-outs and ledger
events, each with the message as evidence.

Every path (files, mailboxes, the SMTP receiver, provider webhooks) hands over `Incoming`
items; `apply_batch` applies many in one transaction, set-based where it counts: one probe for
already-seen messages, one read of the named targets, the quarantine entries locked and moved
together (quarantine.service.apply_many), one insert of the results. A message is counted once
(its dedupe key is unique); one nothing can be read from is kept with status `review`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain import quarantine as rules
from consentry.domain.addresses import Address, normalize_email
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError
from consentry.domain.feedback import Kind, RecipientResult, Report
from consentry.domain.ledger import Origin, Source
from consentry.feedback import sql
from consentry.feedback.classify import classify
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.types import utcnow
from consentry.tokens import InvalidToken, Signer

# Our own Message-IDs name delivery and target: "<delivery>.<target>.<random>@<domain>"
# (delivery/sending.py). Not signed, so only trusted where the address agrees.
_OUR_MESSAGE_ID = re.compile(r"(\d{1,19})\.(\d{1,19})\.[0-9a-f]{12}@")

# DSN actions that say the message reached the mailbox (RFC 3464 section 2.3.3).
_DELIVERED_ACTIONS = frozenset({"delivered", "relayed", "expanded"})


@dataclass(frozen=True)
class Incoming:
    """One message or webhook event to apply."""

    report: Report
    dedupe_key: str  # unique per message: counted once however often it arrives
    via: str  # file, smtp, imap, ses, sendgrid, postmark, mailgun
    source: str | None = None  # the file, the SMTP peer, the mailbox
    raw: bytes | None = None  # the evidence, kept with the message


@dataclass
class Applied:
    """What applying one item did."""

    dedupe_key: str
    kind: str
    status: str  # applied | ignored | review | duplicate
    delivery_id: int | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.dedupe_key, "kind": self.kind, "status": self.status,
                "delivery": self.delivery_id, "changes": self.changes, "notes": self.notes}


def message_key(raw: bytes, report: Report) -> str:
    """A message's identity: its Message-ID, else a hash of its body (the headers that relays
    add on the way, Received and Delivered-To, differ between two copies of one message)."""
    if report.message_id:
        return "mid:" + report.message_id.strip().lower()[:240]
    body = raw.split(b"\n\n", 1)[-1] if b"\n\n" in raw else raw.split(b"\r\n\r\n", 1)[-1]
    return "sha256:" + hashlib.sha256(body).hexdigest()


def incoming_message(raw: bytes, *, via: str, source: str | None = None,
                     envelope_to: Sequence[str] = ()) -> Incoming:
    """Classify a raw RFC 5322 message into an item to apply."""
    report = classify(raw, envelope_to)
    return Incoming(report, message_key(raw, report), via, source, raw)


@dataclass
class _Target:
    id: int
    delivery_id: int
    profile_id: int | None
    address: Address | None
    service: str | None
    signed_kind: str | None  # "b" / "u" when a signed tag named it; None: our Message-ID


def apply_batch(conn: sa.Connection, settings: Settings, signer: Signer,
                items: Sequence[Incoming], now: datetime | None = None) -> list[Applied]:
    """Apply items in the caller's transaction. A message already stored, or twice in the
    batch, is a `duplicate` and changes nothing."""
    now = now or utcnow()
    known = set(conn.execute(sql.KNOWN_KEYS, {"keys": sorted({i.dedupe_key for i in items})})
                .scalars()) if items else set()
    fresh: list[Incoming] = []
    results: list[Applied | None] = []
    for item in items:
        if item.dedupe_key in known:
            results.append(Applied(item.dedupe_key, item.report.kind.value, "duplicate"))
            continue
        known.add(item.dedupe_key)
        fresh.append(item)
        results.append(None)
    if not fresh:
        return [r for r in results if r is not None]

    targets = _targets(conn, signer, fresh)
    plans = [_plan(item, targets.get(id(item)), now) for item in fresh]

    try:
        with conn.begin_nested():
            ids = _store_messages(conn, plans, now)
    except sa.exc.IntegrityError:
        # Another process stored one of these messages since we looked: apply one by one.
        if len(items) == 1:
            return [Applied(items[0].dedupe_key, items[0].report.kind.value, "duplicate")]
        return [a for item in items for a in apply_batch(conn, settings, signer, [item], now)]

    events = [(address, event, origin) for plan in plans for address, event, origin in plan.events]
    changes = iter(quarantine.apply_many(conn, events, settings.quarantine, now) if events
                   else [])
    result_rows: list[dict[str, Any]] = []
    for plan, message_id in zip(plans, ids, strict=True):
        for _ in plan.events:
            change = next(changes)
            if change.changed:
                plan.applied.changes.append({
                    "address": change.address.value, "channel": change.address.channel.value,
                    "before": rules.describe(change.before), "after": rules.describe(change.after)})
        if plan.unsubscribe is not None:
            _unsubscribe(conn, plan, now)
        result_rows.extend({**row, "message_id": message_id} for row in plan.results)
    if result_rows:
        conn.execute(sql.INSERT_RESULTS, result_rows)

    done = iter(plan.applied for plan in plans)
    return [r if r is not None else next(done) for r in results]


@dataclass
class _Plan:
    item: Incoming
    applied: Applied
    target: _Target | None
    events: list[tuple[Address, rules.Event, Origin]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    unsubscribe: Origin | None = None


def _targets(conn: sa.Connection, signer: Signer,
             items: Sequence[Incoming]) -> dict[int, _Target]:
    """The delivery target each item names: a signed VERP/mailto tag in the addresses it was
    sent to, else our Message-ID in the original message it quotes."""
    wanted: dict[int, tuple[int, int, str | None]] = {}
    for item in items:
        named = _signed_tag(signer, item.report.envelope_to)
        if named is None and item.report.original_message_id:
            match = _OUR_MESSAGE_ID.match(item.report.original_message_id.strip("<>"))
            if match:
                named = (int(match.group(1)), int(match.group(2)), None)
        if named is not None:
            wanted[id(item)] = named
    if not wanted:
        return {}
    rows = {row["id"]: row for row in conn.execute(
        sql.TARGETS, {"ids": sorted({tid for _, tid, _ in wanted.values()})}).mappings()}
    found: dict[int, _Target] = {}
    for key, (delivery_id, target_id, kind) in wanted.items():
        row = rows.get(target_id)
        if row is None or row["delivery_id"] != delivery_id:
            continue
        address = None
        if row["address_key"]:
            address = Address(Channel(row["channel"]), row["address"], row["address_key"])
        found[key] = _Target(target_id, delivery_id, row["profile_id"], address, row["service"],
                             kind)
    return found


def _signed_tag(signer: Signer, addresses: Iterable[str]) -> tuple[int, int, str] | None:
    for address in addresses:
        local = address.rsplit("@", 1)[0].strip().strip("<>")
        if local[:2].lower() not in ("b-", "u-"):
            continue
        try:
            kind, delivery_id, target_id = signer.read_address_tag(local)
        except InvalidToken:
            continue
        return delivery_id, target_id, kind
    return None


def _plan(item: Incoming, target: _Target | None, now: datetime) -> _Plan:
    """What applying the item will do (pure but for the target looked up before)."""
    report = item.report
    applied = Applied(item.dedupe_key, report.kind.value, "ignored",
                      target.delivery_id if target else None)
    plan = _Plan(item, applied, target)
    evidence = {"feedback": item.dedupe_key, "via": item.via, "kind": report.kind.value,
                "message_id": report.message_id, "reporter": report.reporter,
                "delivery": target.delivery_id if target else None,
                "target": target.id if target else None}
    if report.kind is Kind.UNKNOWN:
        applied.status = "review"
        applied.notes.append("nothing could be read out of this message: kept for review")
        return plan
    if report.kind is Kind.UNSUBSCRIBE:
        if target is None or target.signed_kind != "u" or target.profile_id is None:
            applied.status = "review"
            applied.notes.append("an unsubscribe request not sent to one of our signed "
                                 "List-Unsubscribe addresses: kept for review")
            return plan
        plan.unsubscribe = Origin(source=Source.MAIL_UNSUBSCRIBE, actor=f"feedback:{item.via}",
                                  evidence=evidence)
        plan.results.append(_result_row(report.kind, "ignored", "unsubscribe", None, target,
                                        target.address, now))
        applied.status = "applied"
        return plan

    recipients = list(report.recipients)
    if not recipients and target is not None and target.signed_kind == "b" and (
            report.kind is Kind.BOUNCE):
        # A bounce to one of our VERP addresses whose recipient could not be read: the return
        # path says who it was; what happened is not known.
        recipients = [RecipientResult("", None, rules.FailureClass.SOFT, "not_defined", "")]
    source = Source.COMPLAINT if report.kind is Kind.COMPLAINT else Source.BOUNCE
    for recipient in recipients:
        address = _address_of(recipient, target, len(recipients))
        if address is None:
            applied.notes.append(f"recipient {recipient.address!r} is not an address")
            continue
        event = _event(report.kind, recipient)
        on_target = target is not None and target.address is not None and (
            address.key == target.address.key)
        plan.results.append(_result_row(report.kind, _class_of(report.kind, recipient),
                                        _reason_of(report.kind, recipient), recipient.status,
                                        target if on_target else None, address, now))
        if event is None:
            continue
        origin = Origin(source=source, actor=f"feedback:{item.via}", evidence={
            **evidence, "status": recipient.status, "diagnostic": recipient.diagnostic,
            "reason": _reason_of(report.kind, recipient)})
        plan.events.append((address, event, origin))
    if plan.events:
        applied.status = "applied"
    elif report.kind in (Kind.BOUNCE, Kind.COMPLAINT) and not plan.results:
        applied.status = "review"
        applied.notes.append("no recipient could be read out of this report: kept for review")
    return plan


def _address_of(recipient: RecipientResult, target: _Target | None,
                count: int) -> Address | None:
    """The address a recipient result is about. The target a signed tag named is authoritative
    (the DSN may name a forwarding destination instead of the address we sent to)."""
    if target is not None and target.address is not None:
        key = _email_key(recipient.address)
        if key == target.address.key or (count == 1 and (
                target.signed_kind is not None or not recipient.address)):
            return target.address
    if not recipient.address:
        return None
    try:
        return normalize_email(recipient.address)
    except ConsentryError:
        return None


def _email_key(text: str) -> str | None:
    try:
        return normalize_email(text).key if text else None
    except ConsentryError:
        return None


def _event(kind: Kind, recipient: RecipientResult) -> rules.Event | None:
    if kind is Kind.COMPLAINT or recipient.klass is rules.FailureClass.COMPLAINT:
        return rules.Failure("complaint", rules.FailureClass.COMPLAINT)
    if kind is Kind.DELIVERED:
        return rules.Success() if (recipient.action or "").lower() in _DELIVERED_ACTIONS else None
    if kind is Kind.BOUNCE and recipient.klass in (rules.FailureClass.HARD,
                                                   rules.FailureClass.SOFT):
        reason = recipient.reason if recipient.reason in rules.REASON_CLASS else "not_defined"
        return rules.Failure(reason, recipient.klass)
    return None  # auto-replies, ignored failures, delay notices change nothing


def _class_of(kind: Kind, recipient: RecipientResult) -> str:
    return "complaint" if kind is Kind.COMPLAINT else recipient.klass.value


def _reason_of(kind: Kind, recipient: RecipientResult) -> str:
    return "complaint" if kind is Kind.COMPLAINT else recipient.reason


def _result_row(kind: Kind, klass: str, reason: str, status: str | None,
                target: _Target | None, address: Address | None,
                now: datetime) -> dict[str, Any]:
    return {"at": now, "kind": kind.value, "class": klass, "reason": reason,
            "status": status, "channel": address.channel.value if address else "email",
            "address_key": address.key if address else None,
            "delivery_id": target.delivery_id if target else None,
            "target_id": target.id if target else None,
            "profile_id": target.profile_id if target else None}


def _store_messages(conn: sa.Connection, plans: Sequence[_Plan], now: datetime) -> list[int]:
    rows = [{
        "dedupe_key": p.item.dedupe_key, "received_at": now, "via": p.item.via,
        "source": (p.item.source or "")[:1024] or None, "kind": p.item.report.kind.value,
        "status": p.applied.status, "delivery_id": p.applied.delivery_id,
        "summary": {**p.item.report.to_json(p.item.source or p.item.via),
                    "notes": p.applied.notes} | ({"target": p.target.id} if p.target else {}),
        "raw": p.item.raw,
    } for p in plans]
    by_key = {key: mid for mid, key in conn.execute(sql.INSERT_MESSAGES, rows).all()}
    return [by_key[p.item.dedupe_key] for p in plans]


def _unsubscribe(conn: sa.Connection, plan: _Plan, now: datetime) -> None:
    """Mail to a List-Unsubscribe mailto: leave the service the message belonged to, or, for a
    marketing message sent without a service, opt out of its channel."""
    target, origin = plan.target, plan.unsubscribe
    assert target is not None and target.profile_id is not None and origin is not None
    if target.service:
        service = consent.get_service(conn, target.service)
        result = consent.unsubscribe(conn, target.profile_id, service, origin, now)
        if result.changed:
            plan.applied.changes.append({"profile": target.profile_id,
                                         "service": target.service, "after": "unsubscribed"})
        return
    channel = target.address.channel if target.address else Channel.EMAIL
    if consent.opt_out(conn, target.profile_id, channel, origin, now):
        plan.applied.changes.append({"profile": target.profile_id, "channel": channel.value,
                                     "after": "opted_out"})


def forget(conn: sa.Connection, profile_id: int, address_keys: Sequence[str]) -> None:
    """Erasure: drop the messages about the profile or its addresses, and the address from
    their results (the counts stay)."""
    params = {"erased_profile": profile_id, "keys": list(address_keys)}
    conn.execute(sql.FORGET_MESSAGES, params)
    conn.execute(sql.FORGET_RESULTS, params)


def review(conn: sa.Connection, limit: int = 50) -> list[dict[str, Any]]:
    return [{"id": row["id"], "received_at": row["received_at"].isoformat(), "via": row["via"],
             "source": row["source"], "kind": row["kind"], "summary": row["summary"]}
            for row in conn.execute(sql.REVIEW, {"limit": limit}).mappings()]


def raw_message(conn: sa.Connection, message_id: int) -> bytes:
    row = conn.execute(sql.MESSAGE, {"message_id": message_id}).mappings().first()
    if row is None:
        raise ConsentryError(f"no feedback message {message_id}")
    return bytes(row["raw"] or b"")
