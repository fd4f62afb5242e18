"""Export (Art. 15/20) and erasure (Art. 17) of a profile."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain import quarantine as qrules
from consentry.domain.channels import Channel
from consentry.domain.ledger import Kind, Origin
from consentry.feedback import service as feedback
from consentry.ledger import service as ledger
from consentry.privacy import suppression
from consentry.profiles import service as profiles
from consentry.profiles import sql as profile_sql
from consentry.settings import Settings
from consentry.sms import sql as sms_sql
from consentry.store.schema import quarantine
from consentry.store.types import utcnow


def export(conn: sa.Connection, settings: Settings, profile_id: int) -> dict[str, Any]:
    data = profiles.show(conn, settings, profile_id)
    profile = profiles.get(conn, profile_id)
    addresses = [a.key for a in profiles.addresses_of(conn, profile)]
    return {"profile": data, "ledger": ledger.history(conn, profile_id, addresses),
            "exported_at": utcnow().isoformat()}


def erase(conn: sa.Connection, settings: Settings, profile_id: int, origin: Origin,
          now: datetime | None = None) -> dict[str, Any]:
    """Delete the profile's personal data, keep a suppression record of each address.

    Every address is suppressed: an erasure request is the strongest objection there is, and an
    address that comes back must not become contactable again without a new consent. An address
    other profiles still hold keeps its quarantine entry; one nobody holds any more loses it,
    and its status moves into the suppression record."""
    now = now or utcnow()
    profile = profiles.get(conn, profile_id)
    addresses = profiles.addresses_of(conn, profile)
    optouts = consent.optouts(conn, profile_id)
    entries = []
    unshared: list[str] = []  # addresses no other profile holds: their events are personal
    dropped_quarantine = []
    for address in addresses:
        row = conn.execute(sa.select(quarantine).where(
            quarantine.c.channel == address.channel.value,
            quarantine.c.address_key == address.key)).mappings().first()
        blocking = row is not None and qrules.is_blocking(row["status"])
        entries.append((address, True, row["status"] if blocking else None,
                        row["reason"] if blocking else None))
        holders = [i for i in conn.execute(profile_sql.holders(address.channel.value,
                                                               address.key)).scalars()
                   if i != profile_id]
        if not holders:
            unshared.append(address.key)
            if row is not None:
                dropped_quarantine.append(row["id"])
    suppression.record(conn, entries, now)
    # The erasure event goes in before the redaction so `ledger verify` finds it.
    ledger.append(conn, [origin.event(now, Kind.ERASURE, profile_id=profile_id,
                                      old_state="present", new_state="erased",
                                      ip=None, user_agent=None, evidence=None, note=None)])
    redacted = ledger.redact(conn, profile_id, unshared)
    feedback.forget(conn, profile_id, unshared)
    conn.execute(sms_sql.FORGET, {"numbers": [a.key for a in addresses
                                              if a.channel is Channel.SMS
                                              and a.key in unshared]})
    if dropped_quarantine:
        conn.execute(quarantine.delete().where(quarantine.c.id.in_(dropped_quarantine)))
    conn.execute(profile_sql.DELETE, {"profile_id": profile_id})
    return {"erased": profile_id, "suppressed_addresses": len(entries),
            "redacted_events": redacted, "was_opted_out": optouts.global_}
