"""Creating, finding and describing profiles."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain import reachability
from consentry.domain.addresses import (
    Address,
    normalize_email,
    normalize_phone,
    normalize_push_token,
)
from consentry.domain.channels import CHANNELS, Channel
from consentry.domain.errors import Conflict, ConsentryError, NotFound
from consentry.domain.ledger import Origin
from consentry.privacy import suppression
from consentry.profiles import sql
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.types import utcnow

_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")


@dataclass(frozen=True)
class PushToken:
    token: str
    app_id: str = ""
    platform: str = ""


@dataclass(frozen=True)
class NewProfile:
    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = None
    external_id: str | None = None
    attributes: dict[str, Any] | None = None
    push_tokens: tuple[PushToken, ...] = field(default_factory=tuple)


def normalize_locale(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not _LOCALE.fullmatch(text):
        raise ConsentryError(f"invalid locale {value!r}: expected a language tag like de or en-GB")
    parts = text.replace("_", "-").split("-")
    return "-".join([parts[0].lower(), *(p.upper() if len(p) == 2 else p for p in parts[1:])])


def create(conn: sa.Connection, settings: Settings, new: NewProfile, origin: Origin,
           now: datetime | None = None) -> int:
    """Create a profile; an address that was erased while suppressed is suppressed again."""
    now = now or utcnow()
    email = normalize_email(new.email) if new.email and new.email.strip() else None
    phone = (normalize_phone(new.phone, settings.default_region)
             if new.phone and new.phone.strip() else None)
    tokens = [(normalize_push_token(t.token), t) for t in new.push_tokens]
    external_id = new.external_id.strip() if new.external_id and new.external_id.strip() else None
    if external_id and conn.execute(sql.BY_EXTERNAL_ID, {"external_id": external_id}).first():
        raise Conflict(f"a profile with external id {external_id!r} exists already")
    profile_id = conn.execute(sql.INSERT, {
        "external_id": external_id, "email": email.value if email else None,
        "email_key": email.key if email else None, "phone": phone.value if phone else None,
        "first_name": _clean(new.first_name), "last_name": _clean(new.last_name),
        "locale": normalize_locale(new.locale), "attributes": new.attributes or None,
        "created_at": now, "updated_at": now}).scalar_one()
    for address, token in tokens:
        conn.execute(sql.INSERT_TOKEN, {"profile_id": profile_id, "token": address.value,
                                        "app_id": token.app_id, "platform": token.platform,
                                        "created_at": now})
    addresses = [a for a in (email, phone, *(a for a, _ in tokens)) if a is not None]
    suppression.reapply(conn, settings, profile_id, addresses, origin, now)
    return profile_id


def _clean(value: str | None) -> str | None:
    return value.strip() or None if value else None


def resolve(conn: sa.Connection, ref: str, default_region: str = "DE") -> int:
    """A profile from REF: its numeric id, external id, email address or phone number."""
    text = ref.strip()
    if not text:
        raise NotFound("empty profile reference")
    if text.isdigit() and conn.execute(sql.BY_ID, {"id": int(text)}).first():
        return int(text)
    found = conn.execute(sql.BY_EXTERNAL_ID, {"external_id": text}).scalar()
    if found is not None:
        return found
    ids: list[int] = []
    if "@" in text:
        try:
            ids = list(conn.execute(sql.BY_EMAIL_KEY, {"key": normalize_email(text).key}).scalars())
        except ConsentryError:
            ids = []
    elif re.fullmatch(r"[+0-9 ()./-]{3,}", text):
        try:
            phone = normalize_phone(text, default_region).value
            ids = list(conn.execute(sql.BY_PHONE, {"phone": phone}).scalars())
        except ConsentryError:
            ids = []
    if len(ids) == 1:
        return ids[0]
    if len(ids) > 1:
        raise ConsentryError(f"{ref!r} is held by {len(ids)} profiles "
                             f"({', '.join(map(str, ids))}): name one by its id")
    raise NotFound(f"no profile {ref!r} (looked for an id, external id, email and phone)")


def get(conn: sa.Connection, profile_id: int) -> dict[str, Any]:
    row = conn.execute(sql.BY_ID, {"id": profile_id}).mappings().first()
    if row is None:
        raise NotFound(f"no profile {profile_id}")
    return dict(row)


def addresses_of(conn: sa.Connection, profile: dict[str, Any]) -> list[Address]:
    result = []
    if profile["email"]:
        result.append(Address(Channel.EMAIL, profile["email"], profile["email_key"]))
    if profile["phone"]:
        result.append(Address(Channel.SMS, profile["phone"], profile["phone"]))
    for tok in conn.execute(sql.TOKENS_OF, {"profile_id": profile["id"]}).mappings():
        result.append(Address(Channel.PUSH, tok["token"], tok["token"]))
    return result


def show(conn: sa.Connection, settings: Settings, profile_id: int,
         now: datetime | None = None) -> dict[str, Any]:
    """The profile as the contract's `profiles show --json` describes it."""
    now = now or utcnow()
    profile = get(conn, profile_id)
    optouts = consent.optouts(conn, profile_id)
    details = consent.optout_details(conn, profile_id)
    addresses = []
    for address in addresses_of(conn, profile):
        entry = quarantine.status_of(conn, address, settings.quarantine, now)
        others = [i for i in conn.execute(sql.holders(address.channel.value, address.key))
                  .scalars() if i != profile_id]
        excluded = reachability.first_exclusion(reachability.Recipient(
            channel=address.channel.value, address=address.value, address_valid=True,
            optouts=optouts, address_status=entry.status))
        addresses.append({"address": address.value, "channel": address.channel.value,
                          "status": entry.status.value, "reason": entry.reason,
                          "reachable": excluded is None,
                          "excluded_by": excluded.value if excluded else None,
                          "shared_with": others})
    tokens = [{"token": t["token"], "app_id": t["app_id"], "platform": t["platform"]}
              for t in conn.execute(sql.TOKENS_OF, {"profile_id": profile_id}).mappings()]
    return {
        "id": profile["id"], "external_id": profile["external_id"], "email": profile["email"],
        "phone": profile["phone"], "first_name": profile["first_name"],
        "last_name": profile["last_name"], "locale": profile["locale"],
        "attributes": profile["attributes"] or {},
        "push_tokens": tokens,
        "opted_out": optouts.global_,
        "opted_out_detail": details.get("all"),
        "channels": {c: {"opted_out": c in optouts.scopes, "detail": details.get(c)}
                     for c in CHANNELS},
        "subscriptions": consent.subscriptions_of(conn, profile_id),
        "addresses": addresses,
        "created_at": profile["created_at"].isoformat(),
        "updated_at": profile["updated_at"].isoformat(),
    }


def duplicates(conn: sa.Connection) -> list[dict[str, Any]]:
    """Addresses held by more than one profile (the seed's two-profiles case), with holders."""
    result = []
    for row in conn.execute(sql.DUPLICATE_ADDRESSES).mappings():
        ids = list(conn.execute(sql.holders(row["channel"], row["address"])).scalars())
        result.append({"channel": row["channel"], "address": row["address"],
                       "profiles": ids})
    return result


def update(conn: sa.Connection, settings: Settings, profile_id: int, changes: dict[str, Any],
           origin: Origin, now: datetime | None = None) -> None:
    """Change a profile's fields; a new email or phone has the suppression of an erased address
    re-applied (as `profiles.create` does), so an update is no way around an erasure."""
    now = now or utcnow()
    consent.lock_profile(conn, profile_id)
    current = get(conn, profile_id)
    values: dict[str, Any] = {}
    new_addresses: list[Address] = []
    if "email" in changes:
        raw = changes["email"]
        email = normalize_email(raw) if raw and raw.strip() else None
        values["email"] = email.value if email else None
        values["email_key"] = email.key if email else None
        if email and email.key != current["email_key"]:
            new_addresses.append(email)
    if "phone" in changes:
        raw = changes["phone"]
        phone = normalize_phone(raw, settings.default_region) if raw and raw.strip() else None
        values["phone"] = phone.value if phone else None
        if phone and phone.value != current["phone"]:
            new_addresses.append(phone)
    if "external_id" in changes:
        raw = changes["external_id"]
        external_id = raw.strip() if raw and raw.strip() else None
        holder = (conn.execute(sql.BY_EXTERNAL_ID, {"external_id": external_id}).scalar()
                  if external_id else None)
        if holder is not None and holder != profile_id:
            raise Conflict(f"a profile with external id {external_id!r} exists already")
        values["external_id"] = external_id
    for name in ("first_name", "last_name"):
        if name in changes:
            raw = changes[name]
            values[name] = raw.strip() or None if raw else None
    if "locale" in changes:
        values["locale"] = normalize_locale(changes["locale"])
    if "attributes" in changes:
        values["attributes"] = changes["attributes"] or None
    if not values:
        return
    values["updated_at"] = now
    conn.execute(sql.UPDATE.values(**values), {"profile_id": profile_id})
    suppression.reapply(conn, settings, profile_id, new_addresses, origin, now)
