"""Inbound SMS: keep every message, apply STOP / START / HELP, say what to answer.

The webhook (Twilio-compatible or generic JSON) and `consentry sms inbound` all go through
`handle_inbound`, inside the caller's transaction:

- every message is stored in inbound_sms, keyword or not; `provider_id` (unique) makes a
  replayed webhook a no-op that answers `duplicate` and sends no second reply;
- STOP denylists the number for the whole platform (reason `sms_stop`), recorded in the ledger
  with the message as evidence. A number already denylisted for another reason (a complaint,
  an operator) keeps that reason: START must not be able to undo it;
- START releases the number only when it is denylisted for `sms_stop`: a denylist an operator
  or a complaint set stays (an SMS cannot prove more than the STOP it undoes);
- HELP answers with the help text and changes nothing.

One confirmation, no marketing: the stop reply goes out at most once per opt-out (not again
while the number stays denylisted since a confirmation was sent); the start reply only when the
number was in fact released (a "YES" to an appointment reminder gets no "welcome back"); the
help reply at most once per HELP_INTERVAL to a number, so two autoresponders cannot loop.

The reply is returned, not sent: the Twilio hook answers it as TwiML (Twilio sends it), the
generic hook answers it as JSON for its caller to relay, the command line prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from consentry.domain import quarantine as rules
from consentry.domain.addresses import Address, normalize_phone
from consentry.domain.errors import InvalidAddress
from consentry.domain.ledger import Origin, Source
from consentry.domain.sms_keywords import Action, KeywordSet, keyword_set, parse
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.sms import sql
from consentry.store.types import utcnow

STOP_REASON = "sms_stop"
HELP_INTERVAL = timedelta(minutes=5)
MAX_TEXT = 10_000  # characters kept of one message (a concatenated SMS is at most ~1,600)
_NUMBER_MAX = 64  # the width of from_number / to_number
_WORDING_MAX = 255  # the width of ledger_events.wording


@dataclass(frozen=True, slots=True)
class InboundResult:
    action: Action
    reply: str | None
    duplicate: bool  # this provider_id was seen before: nothing was done again
    changed: bool  # the number's quarantine state changed
    message_id: int | None = None
    from_number: str = ""  # E.164 when it parses
    problem: str | None = None  # why nothing could be applied (a number that does not parse)

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action.value, "reply": self.reply, "duplicate": self.duplicate,
                "changed": self.changed, "id": self.message_id, "from": self.from_number,
                "problem": self.problem}


def handle_inbound(conn: sa.Connection, settings: Settings, *, from_number: str,
                   to_number: str, text: str, via: str, provider_id: str | None = None,
                   origin_ip: str | None = None, now: datetime | None = None) -> InboundResult:
    """Store one mobile-originated message and apply its keyword (see the module docstring)."""
    now = now or utcnow()
    if provider_id is not None:
        seen = conn.execute(sql.BY_PROVIDER_ID, {"provider_id": provider_id}).mappings().first()
        if seen is not None:
            return _duplicate(seen)
    text = text[:MAX_TEXT]
    address: Address | None = None
    problem: str | None = None
    try:
        address = normalize_phone(from_number, settings.default_region)
    except InvalidAddress as exc:
        problem = f"{exc}: stored, nothing applied"
    keywords = keyword_set(settings.sms_keywords, to_number, settings.default_region)
    action = parse(text, keywords) if address is not None else Action.NONE
    stored_from = address.key if address is not None else from_number.strip()[:_NUMBER_MAX]
    try:
        with conn.begin_nested():
            message_id = conn.execute(sql.INSERT, {
                "received_at": now, "via": via, "provider_id": provider_id,
                "from_number": stored_from, "to_number": to_number.strip()[:_NUMBER_MAX],
                "text": text, "action": action.value, "reply": None,
            }).inserted_primary_key[0]
    except sa.exc.IntegrityError:
        # The same provider_id arrived at the same time through another request.
        seen = conn.execute(sql.BY_PROVIDER_ID, {"provider_id": provider_id}).mappings().first()
        if seen is None:
            raise
        return _duplicate(seen)
    if address is None or action is Action.NONE:
        return InboundResult(action, None, False, False, message_id, stored_from, problem)
    # The ledger's wording column holds 255 characters; the whole text is in inbound_sms.
    wording = text if len(text) <= _WORDING_MAX else text[:_WORDING_MAX - 1] + "…"
    origin = Origin(source=Source.SMS_KEYWORD, actor=f"sms:{via}", ip=origin_ip,
                    wording=wording,
                    evidence={"inbound_sms": message_id, "via": via,
                              "provider_id": provider_id, "from": from_number,
                              "to": to_number, "received_at": now.isoformat()})
    changed, reply = _apply(conn, settings, keywords, action, address, origin, message_id, now)
    if reply is not None:
        conn.execute(sql.SET_REPLY, {"message_id": message_id, "reply": reply})
    return InboundResult(action, reply, False, changed, message_id, stored_from)


def _duplicate(row: Any) -> InboundResult:
    return InboundResult(Action(row["action"]), None, True, False, row["id"],
                         row["from_number"])


def _apply(conn: sa.Connection, settings: Settings, keywords: KeywordSet, action: Action,
           address: Address, origin: Origin, message_id: int,
           now: datetime) -> tuple[bool, str | None]:
    """(changed, reply) for a keyword from a number that parses."""
    qs = settings.quarantine
    if action is Action.STOP:
        entry = quarantine.status_of(conn, address, qs, now)
        if entry.status is not rules.Status.DENYLISTED:
            change = quarantine.set_status(conn, address, rules.Status.DENYLISTED, STOP_REASON,
                                           origin, qs, now)
            if change.changed:
                return True, keywords.stop_reply
            entry = change.after
        # Already denylisted: confirm only if no stop confirmation went out since.
        if _replied(conn, address, Action.STOP, entry.status_at, message_id):
            return False, None
        return False, keywords.stop_reply
    if action is Action.START:
        entry = quarantine.status_of(conn, address, qs, now)
        if entry.status is rules.Status.DENYLISTED and entry.reason == STOP_REASON:
            change = quarantine.release(conn, address, origin, qs, now)
            if change.changed:
                return True, keywords.start_reply
        return False, None
    if action is Action.HELP:
        if _replied(conn, address, Action.HELP, now - HELP_INTERVAL, message_id):
            return False, None
        return False, keywords.help_reply
    return False, None


def _replied(conn: sa.Connection, address: Address, action: Action, since: datetime | None,
             message_id: int) -> bool:
    params = {"from_number": address.key, "action": action.value, "message_id": message_id}
    if since is None:
        return conn.execute(sql.REPLIED_EVER, params).first() is not None
    return conn.execute(sql.REPLIED_SINCE, {**params, "since": since}).first() is not None

