"""Double opt-in (domain.md sections 6 and 8): the confirmation message, and the purge of
requests nobody confirmed.

The message is transactional: it carries the service's label, the /c/{token} link, how long
the link is valid and what to do if one did not ask for it - no advertising, no tracking, not
even the name typed into the form (anyone can type anything there). It goes out only to an
address that may receive transactional mail (not quarantined, not denylisted), in the
profile's language, one message at a time through the channel's transport (notify.send).

Unconfirmed requests are deleted after `web.pending_purge_days`; the ledger records each as
expired, so the history of the address stays complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from consentry import notify
from consentry.consent import service as consent
from consentry.consent import sql
from consentry.consent.service import Service
from consentry.domain import reachability
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError, NotFound
from consentry.domain.ledger import Kind, Origin, Source
from consentry.ledger import service as ledger
from consentry.profiles import service as profiles
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.types import utcnow
from consentry.tokens import Signer
from consentry.web import i18n

log = logging.getLogger(__name__)

# The message, English source strings; German in web/locales/de/LC_MESSAGES/subscribe.po.
EMAIL_SUBJECT = "Please confirm your subscription to %(service)s"
EMAIL_TEXT = (
    "Hello,\n"
    "\n"
    "someone, probably you, asked to receive %(service)s at this address. Please confirm "
    "this by opening the following link and pressing the button on the page:\n"
    "\n"
    "%(url)s\n"
    "\n"
    "The link is valid for %(hours)s hours. You will not receive %(service)s until you "
    "confirm.\n"
    "\n"
    "If you did not ask for this, ignore this message: you will not be subscribed and we "
    "will not write to you about it again.\n")
SMS_TEXT = ("Please confirm your subscription to %(service)s: %(url)s (valid for %(hours)s "
            "hours). If you did not ask for this, ignore this message.")


@dataclass(frozen=True)
class Sent:
    sent: bool
    detail: str  # the relay's or provider's answer, or why nothing was sent


def _text(lang: str, message: str, **variables: Any) -> str:
    return i18n.translations(lang).gettext(message) % variables


def hours_text(settings: Settings) -> str:
    return f"{settings.web.confirm_hours:g}"


def confirmation_url(settings: Settings, signer: Signer, profile_id: int, slug: str) -> str:
    return f"{settings.base_url.rstrip('/')}/c/{signer.confirmation_token(profile_id, slug)}"


def compose(settings: Settings, lang: str, service: Service, url: str) -> tuple[str, str]:
    """(subject, text) of the confirmation in `lang`; SMS has no subject."""
    values = {"service": service.label, "url": url, "hours": hours_text(settings)}
    if service.channel is Channel.SMS:
        return "", _text(lang, SMS_TEXT, **values)
    return _text(lang, EMAIL_SUBJECT, **values), _text(lang, EMAIL_TEXT, **values)


def send_confirmation(engine: sa.Engine, settings: Settings, signer: Signer, profile_id: int,
                      service: Service, *, lang: str | None = None,
                      now: datetime | None = None) -> Sent:
    """Send a fresh confirmation link for `service` to the profile's address of its channel,
    in the profile's language (`lang` when it has none: the page's).

    Call it after the transaction that left the subscription pending has committed (no row
    stays locked while a relay answers). It never raises for a failed send: the request is
    kept, and the answer says what happened (the caller answers the public the same way
    whatever it is)."""
    if service.channel is Channel.PUSH:
        return Sent(False, "confirmations go by email or SMS, not push")
    with engine.connect() as conn:
        try:
            profile = profiles.get(conn, profile_id)
        except NotFound:
            return Sent(False, f"no profile {profile_id}")
        address = next((a for a in profiles.addresses_of(conn, profile)
                        if a.channel is service.channel), None)
        if address is None:
            return Sent(False, f"the profile has no {service.channel.value} address")
        entry = quarantine.status_of(conn, address, settings.quarantine, now)
        excluded = reachability.first_exclusion(reachability.Recipient(
            channel=address.channel.value, address=address.value, address_valid=True,
            optouts=consent.optouts(conn, profile_id), address_status=entry.status),
            transactional=True)
    if excluded is not None:
        return Sent(False, f"not sent: the address is {entry.status.value}")
    lang = i18n.choose(None, profile["locale"], lang)
    subject, text = compose(settings, lang, service,
                            confirmation_url(settings, signer, profile_id, service.slug))
    try:
        outcome = notify.send(settings, service.channel, address.value, subject, text)
    except (ConsentryError, OSError) as exc:
        log.warning("confirmation for profile %s, service %s not sent: %s", profile_id,
                    service.slug, exc)
        return Sent(False, str(exc))
    if not outcome.accepted:
        log.warning("confirmation for profile %s, service %s refused: %s", profile_id,
                    service.slug, outcome.detail)
    return Sent(outcome.accepted, outcome.detail)


def purge_pending(conn: sa.Connection, settings: Settings, now: datetime | None = None) -> int:
    """Delete the pending subscriptions older than `web.pending_purge_days` (one DELETE) and
    record each as expired in the ledger; the number deleted."""
    now = now or utcnow()
    days = settings.web.pending_purge_days
    removed = conn.execute(sql.PURGE_PENDING,
                           {"cutoff": now - timedelta(days=days)}).all()
    if not removed:
        return 0
    names = {r.id: r for r in conn.execute(sql.SERVICE_NAMES)}
    origin = Origin(source=Source.EXPIRY, actor="system",
                    note=f"not confirmed within {days:g} days")
    ledger.append(conn, [
        origin.event(now, Kind.SUBSCRIPTION, profile_id=profile_id,
                     channel=names[service_id].channel, service=names[service_id].slug,
                     old_state="pending", new_state="expired")
        for profile_id, service_id in sorted(removed)])
    return len(removed)
