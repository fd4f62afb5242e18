"""The consent ledger's event and its tamper-evident hash chain, as pure functions.

Every consent change is an event. Events are chained per *partition* (a profile's events, or an
address's when no profile is involved, always fall in the same one): each carries the hash of the
previous event of its partition and a sequence number, so concurrent writers only contend when
they touch the same partition, and a changed, removed or re-ordered event breaks its chain.

Personal data (address, IP, user agent, note, evidence) is hashed separately into
`personal_digest`, and the chain covers that digest, not the data. Privacy erasure blanks the
personal fields and marks the event redacted; the chain still verifies because the digest stays.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GENESIS = "0" * 64
PARTITIONS = 64


class Kind:
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    SUBSCRIPTION = "subscription"
    QUARANTINE = "quarantine"
    SUPPRESSION = "suppression"  # an erased address came back and its suppression re-applied
    ERASURE = "erasure"


class Source:
    CLI = "cli"
    API = "api"
    CONSOLE = "console"
    LANDING_PAGE = "landing_page"
    ONE_CLICK = "one_click"
    SMS_KEYWORD = "sms_keyword"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    MAIL_UNSUBSCRIBE = "mail_unsubscribe"  # mail to the List-Unsubscribe mailto address
    IMPORT = "import"
    EXPIRY = "expiry"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime
    kind: str
    source: str
    actor: str | None = None
    profile_id: int | None = None
    channel: str | None = None
    service: str | None = None
    old_state: str | None = None
    new_state: str | None = None
    wording: str | None = None
    # Personal data: not covered by the chain directly, only through personal_digest.
    address: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    note: str | None = None
    evidence: dict[str, Any] | None = field(default=None)

    def partition_key(self) -> str:
        if self.profile_id is not None:
            return f"p:{self.profile_id}"
        return f"a:{self.channel}:{self.address}"


def partition_of(key: str, partitions: int = PARTITIONS) -> int:
    return zlib.crc32(key.encode()) % partitions


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def timestamp_text(at: datetime) -> str:
    """The form of `at` the hash covers: UTC, microseconds, independent of the database."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def personal_digest(address: str | None, ip: str | None, user_agent: str | None,
                    note: str | None, evidence: dict[str, Any] | None) -> str:
    payload = [address, ip, user_agent, note, evidence]
    return hashlib.sha256(_canonical(payload)).hexdigest()


def event_hash(*, prev_hash: str, partition: int, seq: int, at: datetime, kind: str,
               source: str, actor: str | None, profile_id: int | None, channel: str | None,
               service: str | None, old_state: str | None, new_state: str | None,
               wording: str | None, digest: str) -> str:
    # A list in a fixed order: canonical without sorting keys, and cheap to encode.
    payload = [prev_hash, partition, seq, timestamp_text(at), kind, source, actor, profile_id,
               channel, service, old_state, new_state, wording, digest]
    return hashlib.sha256(_canonical(payload)).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainedRow:
    """An event as stored: the event's fields plus its place in the chain."""

    partition: int
    seq: int
    prev_hash: str
    hash: str
    personal_digest: str


def chain(event: Event, partition: int, seq: int, prev_hash: str) -> ChainedRow:
    digest = personal_digest(event.address, event.ip, event.user_agent, event.note,
                             event.evidence)
    return ChainedRow(partition, seq, prev_hash, event_hash(
        prev_hash=prev_hash, partition=partition, seq=seq, at=event.at, kind=event.kind,
        source=event.source, actor=event.actor, profile_id=event.profile_id,
        channel=event.channel, service=event.service, old_state=event.old_state,
        new_state=event.new_state, wording=event.wording, digest=digest), digest)


@dataclass(frozen=True, slots=True)
class Origin:
    """Who made a change, how and from where: copied onto every ledger event it causes."""

    source: str
    actor: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    wording: str | None = None
    note: str | None = None
    evidence: dict[str, Any] | None = None

    def event(self, at: datetime, kind: str, **fields: Any) -> Event:
        values: dict[str, Any] = {"actor": self.actor, "ip": self.ip,
                                  "user_agent": self.user_agent, "wording": self.wording,
                                  "note": self.note, "evidence": self.evidence}
        values.update(fields)
        return Event(at=at, kind=kind, source=self.source, **values)
