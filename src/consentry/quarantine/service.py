"""Quarantine operations: every status change goes through domain.quarantine.transition and
is recorded in the ledger with its evidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from consentry.domain import quarantine as rules
from consentry.domain.addresses import Address, email_domain
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Kind, Origin
from consentry.ledger import service as ledger
from consentry.quarantine import sql
from consentry.store.types import utcnow


def entry_from_row(row: Any) -> rules.Entry:
    return rules.Entry(
        status=rules.Status(row["status"]), reason=row["reason"],
        error_count=row["error_count"], first_error_at=row["first_error_at"],
        last_error_at=row["last_error_at"], last_counted_at=row["last_counted_at"],
        status_at=row["status_at"])


def _columns(entry: rules.Entry) -> dict[str, Any]:
    return {"status": entry.status.value, "reason": entry.reason,
            "error_count": entry.error_count, "first_error_at": entry.first_error_at,
            "last_error_at": entry.last_error_at, "last_counted_at": entry.last_counted_at,
            "status_at": entry.status_at}


@dataclass(frozen=True)
class Change:
    address: Address
    before: rules.Entry
    after: rules.Entry

    @property
    def changed(self) -> bool:
        return rules.state_changed(self.before, self.after)


def apply(conn: sa.Connection, address: Address, event: rules.Event, origin: Origin,
          settings: rules.QuarantineSettings, now: datetime | None = None) -> Change:
    """Run one event through the state machine for one address, store and record it."""
    now = now or utcnow()
    row = conn.execute(sql.ENTRY_FOR_UPDATE,
                       {"channel": address.channel.value, "key": address.key}).mappings().first()
    before = entry_from_row(row) if row else rules.VALID
    after = rules.transition(before, event, now, settings)
    change = Change(address, before, after)
    if row is None and after == rules.VALID:
        return change  # unknown and still valid: nothing to keep
    values = {**_columns(after), "updated_at": now, "source": origin.source}
    if origin.note is not None:
        values["note"] = origin.note
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(sql.INSERT, {
                    **values, "channel": address.channel.value, "address_key": address.key,
                    "address": address.value, "created_at": now, "note": origin.note,
                    "domain": email_domain(address.key)
                    if address.channel is Channel.EMAIL else None})
        except sa.exc.IntegrityError:
            # Another transaction created the entry since we looked: go again, this time
            # through the row lock, so the event applies to the state it left.
            return apply(conn, address, event, origin, settings, now)
    elif after != before or origin.note is not None:
        conn.execute(sql.UPDATE, {**values, "entry_id": row["id"]})
    if change.changed:
        record(conn, [change], origin, now)
    return change


def apply_many(conn: sa.Connection, events: Sequence[tuple[Address, rules.Event, Origin]],
               settings: rules.QuarantineSettings,
               now: datetime | None = None) -> list[Change]:
    """`apply` for many events at once, in order (feedback arrives in batches): the entries
    are read and locked with one statement per channel, the state machine runs in memory,
    and the ledger gets one append. Returns one Change per event."""
    now = now or utcnow()
    entries: dict[tuple[str, str], tuple[Any, rules.Entry]] = {}
    by_channel: dict[str, set[str]] = {}
    for address, _, _ in events:
        by_channel.setdefault(address.channel.value, set()).add(address.key)
    for channel, keys in by_channel.items():
        for row in conn.execute(sql.ENTRIES_FOR_UPDATE,
                                {"channel": channel, "keys": sorted(keys)}).mappings():
            entries[(channel, row["address_key"])] = (row, entry_from_row(row))
    changes: list[Change] = []
    dirty: dict[tuple[str, str], tuple[Address, Origin]] = {}
    for address, event, origin in events:
        slot = (address.channel.value, address.key)
        row, before = entries.get(slot, (None, rules.VALID))
        after = rules.transition(before, event, now, settings)
        entries[slot] = (row, after)
        changes.append(Change(address, before, after))
        if after != before:
            dirty[slot] = (address, origin)
    inserts, updates = [], []
    for slot, (address, origin) in dirty.items():
        row, after = entries[slot]
        values = {**_columns(after), "updated_at": now, "source": origin.source}
        if row is None:
            inserts.append({**values, "channel": address.channel.value,
                            "address_key": address.key, "address": address.value,
                            "created_at": now, "note": origin.note,
                            "domain": email_domain(address.key)
                            if address.channel is Channel.EMAIL else None})
        else:
            updates.append({**values, "note": row["note"], "entry_id": row["id"]})
    if inserts:
        try:
            with conn.begin_nested():
                conn.execute(sql.INSERT, inserts)
        except sa.exc.IntegrityError:
            # Another transaction created one of these entries since we looked. Nothing of
            # this batch is written yet: apply its events one by one, through the row locks,
            # so each applies to the state the other transaction left.
            return [apply(conn, a, e, o, settings, now) for a, e, o in events]
    if updates:
        conn.execute(sql.UPDATE, updates)
    ledger.append(conn, [
        origin.event(now, Kind.QUARANTINE, channel=c.address.channel.value,
                     address=c.address.key, old_state=rules.describe(c.before),
                     new_state=rules.describe(c.after))
        for c, (_, _, origin) in zip(changes, events, strict=True) if c.changed])
    return changes


def record(conn: sa.Connection, changes: Sequence[Change], origin: Origin,
           now: datetime) -> None:
    ledger.append(conn, [
        origin.event(now, Kind.QUARANTINE, channel=c.address.channel.value,
                     address=c.address.key, old_state=rules.describe(c.before),
                     new_state=rules.describe(c.after))
        for c in changes if c.changed])


def status_of(conn: sa.Connection, address: Address,
              settings: rules.QuarantineSettings, now: datetime | None = None) -> rules.Entry:
    """The entry as it stands now, time-based releases due by now applied (read-only)."""
    row = conn.execute(sql.ENTRY, {"channel": address.channel.value,
                                   "key": address.key}).mappings().first()
    if row is None:
        return rules.VALID
    return rules.transition(entry_from_row(row), rules.Tick(), now or utcnow(), settings)


def show(conn: sa.Connection, address: Address, settings: rules.QuarantineSettings,
         now: datetime | None = None) -> dict[str, Any]:
    row = conn.execute(sql.ENTRY, {"channel": address.channel.value,
                                   "key": address.key}).mappings().first()
    entry = status_of(conn, address, settings, now)
    return {
        "address": address.value, "channel": address.channel.value,
        "status": entry.status.value, "reason": entry.reason,
        "error_count": entry.error_count, "first_error_at": _iso(entry.first_error_at),
        "last_error_at": _iso(entry.last_error_at), "status_at": _iso(entry.status_at),
        "source": row["source"] if row else None, "note": row["note"] if row else None,
        "updated_at": _iso(row["updated_at"]) if row else None,
    }


def row_json(row: Any) -> dict[str, Any]:
    return {
        "address": row["address"], "channel": row["channel"], "status": row["status"],
        "reason": row["reason"], "error_count": row["error_count"],
        "first_error_at": _iso(row["first_error_at"]), "last_error_at": _iso(row["last_error_at"]),
        "status_at": _iso(row["status_at"]), "source": row["source"], "note": row["note"],
        "updated_at": _iso(row["updated_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def set_status(conn: sa.Connection, address: Address, status: rules.Status, reason: str | None,
               origin: Origin, settings: rules.QuarantineSettings,
               now: datetime | None = None) -> Change:
    reason = reason or ("manual" if status is not rules.Status.VALID else None)
    if reason is not None and reason not in rules.REASONS:
        raise ConsentryError(f"unknown reason {reason!r}: expected one of "
                             f"{', '.join(sorted(rules.REASONS))}")
    return apply(conn, address, rules.SetStatus(status, reason or ""), origin, settings, now)


def release(conn: sa.Connection, address: Address, origin: Origin,
            settings: rules.QuarantineSettings, now: datetime | None = None) -> Change:
    return apply(conn, address, rules.Release(), origin, settings, now)


def _release_rows(conn: sa.Connection, rows: Sequence[Any], event: rules.Event, origin: Origin,
                  settings: rules.QuarantineSettings, now: datetime) -> list[Change]:
    changes: list[Change] = []
    updates: list[dict[str, Any]] = []
    for row in rows:
        before = entry_from_row(row)
        after = rules.transition(before, event, now, settings)
        if after == before:
            continue
        address = Address(Channel(row["channel"]), row["address"], row["address_key"])
        changes.append(Change(address, before, after))
        updates.append({**_columns(after), "updated_at": now, "source": origin.source,
                        "note": origin.note if origin.note is not None else row["note"],
                        "entry_id": row["id"]})
    if updates:
        conn.execute(sql.UPDATE, updates)
        record(conn, changes, origin, now)
    return changes


def bulk_release(conn: sa.Connection, origin: Origin, settings: rules.QuarantineSettings, *,
                 reason: str | None = None, domain: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 channel: str | None = None, dry_run: bool = False,
                 now: datetime | None = None) -> int:
    if not any((reason, domain, since, until, channel)):
        raise ConsentryError("a bulk release needs at least one of --reason, --domain, "
                             "--since, --until, --channel")
    now = now or utcnow()
    rows = conn.execute(sql.bulk_release_candidates(
        reason=reason, domain=domain, since=since, until=until, channel=channel)).mappings().all()
    if dry_run:
        return len(rows)
    return len(_release_rows(conn, rows, rules.Release(), origin, settings, now))


def release_due(conn: sa.Connection, settings: rules.QuarantineSettings,
                now: datetime | None = None) -> int:
    """The periodic task: erroneous addresses quiet long enough, mailbox-full quarantines old
    enough, go back to valid (domain.quarantine.release_due)."""
    now = now or utcnow()
    rows = conn.execute(sql.due_for_time_release(*rules.release_cutoffs(now, settings)))
    origin = Origin(source="expiry", actor="system")
    return len(_release_rows(conn, rows.mappings().all(), rules.Tick(), origin, settings, now))
