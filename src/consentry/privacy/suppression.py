"""Suppression records: what erasure keeps of an address (a keyed one-way hash), and their
re-application when the address comes back through a new profile or an import."""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa

from consentry.domain import quarantine as qrules
from consentry.domain.addresses import Address
from consentry.domain.ledger import Kind, Origin
from consentry.ledger import service as ledger
from consentry.settings import Settings
from consentry.store import meta
from consentry.store.schema import opt_outs, quarantine, suppressions


def key_hashes(conn: sa.Connection, addresses: Sequence[Address]) -> dict[str, Address]:
    """HMAC-SHA256 of each matching key under this database's suppression key.

    Keyed, so the table alone cannot be reversed by hashing a list of known addresses."""
    key = _suppression_key(conn)
    return {_keyed_hash(key, a): a for a in addresses}


def _suppression_key(conn: sa.Connection) -> bytes:
    return bytes.fromhex(meta.get_or_create(conn, meta.SUPPRESSION_KEY))


def _keyed_hash(key: bytes, address: Address) -> str:
    message = f"{address.channel.value}:{address.key}".encode()
    return hmac.digest(key, message, hashlib.sha256).hex()


def record(conn: sa.Connection, entries: Sequence[tuple[Address, bool, str | None, str | None]],
           now: datetime) -> None:
    """Keep (address, opted out?, quarantine status, reason) as suppression records."""
    hashes = key_hashes(conn, [a for a, *_ in entries])
    by_address = {a: h for h, a in hashes.items()}
    for address, optout, status, reason in entries:
        h = by_address[address]
        values = {"optout": optout, "quarantine_status": status, "quarantine_reason": reason}
        existing = conn.execute(sa.select(suppressions).where(
            suppressions.c.channel == address.channel.value,
            suppressions.c.key_hash == h)).mappings().first()
        if existing is None:
            conn.execute(suppressions.insert(), {"channel": address.channel.value,
                                                 "key_hash": h, "created_at": now, **values})
        else:
            # Never weaken a suppression that was already recorded.
            conn.execute(suppressions.update().where(
                suppressions.c.channel == address.channel.value, suppressions.c.key_hash == h
            ).values(optout=existing["optout"] or optout,
                     quarantine_status=existing["quarantine_status"] or status,
                     quarantine_reason=existing["quarantine_reason"] or reason))


def reapply(conn: sa.Connection, settings: Settings, profile_id: int,
            addresses: Sequence[Address], origin: Origin, now: datetime) -> int:
    """Re-apply the suppression of any of the profile's addresses; returns how many matched.

    A channel opt-out comes back as an opt-out of that channel on the new profile; a denylist or
    quarantine comes back on the address. Each is recorded as a `suppression` event."""
    if not addresses:
        return 0
    hashes = key_hashes(conn, addresses)
    rows = conn.execute(sa.select(suppressions).where(
        suppressions.c.key_hash.in_(list(hashes)))).mappings().all()
    from consentry.quarantine import service as quarantine_service  # avoids an import cycle

    applied = 0
    for row in rows:
        address = hashes[row["key_hash"]]
        if row["channel"] != address.channel.value:
            continue
        applied += 1
        events = []
        if row["optout"]:
            has = conn.execute(sa.select(opt_outs.c.scope).where(
                opt_outs.c.profile_id == profile_id,
                opt_outs.c.scope == address.channel.value)).first()
            if not has:
                conn.execute(opt_outs.insert(), {
                    "profile_id": profile_id, "scope": address.channel.value, "at": now,
                    "source": "suppression", "actor": origin.actor,
                    "note": "re-applied: the address was opted out before an erasure"})
                events.append(origin.event(
                    now, Kind.SUPPRESSION, profile_id=profile_id,
                    channel=address.channel.value, address=address.key,
                    old_state="opted_in", new_state="opted_out",
                    note="address matched an erased, opted-out address"))
        if row["quarantine_status"]:
            status = qrules.Status(row["quarantine_status"])
            current = conn.execute(sa.select(quarantine.c.status).where(
                quarantine.c.channel == address.channel.value,
                quarantine.c.address_key == address.key)).scalar()
            if current is None:
                quarantine_service.apply(
                    conn, address, qrules.SetStatus(status, row["quarantine_reason"] or "manual"),
                    Origin(source=origin.source, actor=origin.actor,
                           note="re-applied: the address was suppressed before an erasure"),
                    settings.quarantine, now)
        ledger.append(conn, events)
    return applied


def reapply_many(conn: sa.Connection, settings: Settings,
                 given: Mapping[int, Sequence[Address]], origin: Origin, now: datetime) -> int:
    """`reapply` for many profiles at once (a CSV import): the addresses each profile was just
    given, hashed in one pass and looked up in batches, so only the profiles whose addresses are
    suppressed go through `reapply`. Returns how many addresses matched."""
    if not given:
        return 0
    key = _suppression_key(conn)
    holders: dict[str, list[int]] = defaultdict(list)
    for profile_id, addresses in given.items():
        for address in addresses:
            holders[_keyed_hash(key, address)].append(profile_id)
    hashes = list(holders)
    matched: set[int] = set()
    for start in range(0, len(hashes), 5000):
        found = conn.execute(sa.select(suppressions.c.key_hash).where(
            suppressions.c.key_hash.in_(hashes[start:start + 5000]))).scalars()
        for key_hash in found:
            matched.update(holders[key_hash])
    return sum(reapply(conn, settings, profile_id, given[profile_id], origin, now)
               for profile_id in sorted(matched))
