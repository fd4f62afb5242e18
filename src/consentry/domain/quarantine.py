"""The quarantine state machine (domain.md section 4), as pure functions.

An entry belongs to one normalized address on one channel, for the whole platform.
`transition(entry, event, now, settings)` is the only place where statuses change; the store
persists what it returns and the ledger records every change it makes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from consentry.domain.errors import ConsentryError


class Status(StrEnum):
    VALID = "valid"
    ERRONEOUS = "erroneous"  # soft errors are being counted
    QUARANTINED = "quarantined"
    DENYLISTED = "denylisted"
    ALLOWLISTED = "allowlisted"  # always send; errors are logged, never applied


class FailureClass(StrEnum):
    HARD = "hard"
    SOFT = "soft"
    IGNORED = "ignored"
    COMPLAINT = "complaint"


# Adobe's failure taxonomy with our names and its default class (domain.md section 4).
REASON_CLASS: dict[str, FailureClass] = {
    "user_unknown": FailureClass.HARD,
    "invalid_domain": FailureClass.HARD,
    "mailbox_full": FailureClass.SOFT,
    "account_disabled": FailureClass.SOFT,
    "refused": FailureClass.SOFT,
    "unreachable": FailureClass.SOFT,
    "message_invalid": FailureClass.IGNORED,
    "autoreply": FailureClass.IGNORED,
    "not_defined": FailureClass.SOFT,
    "complaint": FailureClass.COMPLAINT,
}

# Reasons an operator, an import, an SMS keyword or an unsubscribe gives for a manual status.
MANUAL_REASONS = frozenset({"manual", "sms_stop", "unsubscribe", "import", "complaint"})
REASONS: frozenset[str] = frozenset(REASON_CLASS) | MANUAL_REASONS

# "refused" (5.7.x policy, spam, reputation) is the sender's problem: it is logged on the entry
# but never counts towards quarantining the address (peers that count it lose good addresses).
_NEVER_COUNTS = frozenset({"refused"})

# Statuses that stop sending to the address; allowlisted and erroneous still send.
BLOCKING = frozenset({Status.QUARANTINED, Status.DENYLISTED})


@dataclass(frozen=True, slots=True)
class QuarantineSettings:
    soft_error_max: int = 5
    soft_error_interval: timedelta = timedelta(days=1)
    erroneous_reset_after: timedelta = timedelta(days=10)
    mailbox_full_release_after: timedelta = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Entry:
    status: Status = Status.VALID
    reason: str | None = None
    error_count: int = 0
    first_error_at: datetime | None = None
    last_error_at: datetime | None = None
    last_counted_at: datetime | None = None  # the last *significant* (counted) error
    status_at: datetime | None = None


VALID = Entry()


@dataclass(frozen=True, slots=True)
class Failure:
    """A delivery failure for the address (SMTP reply, DSN, provider answer)."""

    reason: str
    klass: FailureClass | None = None  # None: the reason's default class

    @property
    def effective_class(self) -> FailureClass:
        return self.klass or REASON_CLASS.get(self.reason, FailureClass.SOFT)


@dataclass(frozen=True, slots=True)
class Success:
    """A message to the address was accepted."""


@dataclass(frozen=True, slots=True)
class SetStatus:
    """An operator, an import, a complaint or an SMS keyword sets the status."""

    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class Release:
    """Back to valid: an operator, a bulk release, or an opt-in keyword (START)."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes: apply the time-based releases that are due."""


Event = Failure | Success | SetStatus | Release | Tick


def parse_status(value: str, *, allow_valid: bool = False) -> Status:
    try:
        status = Status(value.strip().lower())
    except ValueError:
        status = None
    if status is None or (status is Status.VALID and not allow_valid):
        allowed = [s.value for s in Status if allow_valid or s is not Status.VALID]
        raise ConsentryError(f"unknown quarantine status {value!r}: expected {', '.join(allowed)}")
    return status


def release_due(entry: Entry, now: datetime, settings: QuarantineSettings) -> bool:
    """Whether time alone sends the entry back to valid.

    Erroneous: the last soft error is `erroneous_reset_after` old. Quarantined for a full
    mailbox: `mailbox_full_release_after` after the last error. Quarantine for anything else,
    denylisted and allowlisted never end by time.
    """
    if entry.status is Status.ERRONEOUS and entry.last_error_at is not None:
        return now - entry.last_error_at >= settings.erroneous_reset_after
    if entry.status is Status.QUARANTINED and entry.reason == "mailbox_full":
        # From the later of the last error and the quarantine itself: one set by an operator
        # or an import runs its full period too.
        since = max(t for t in (entry.last_error_at, entry.status_at) if t is not None) if (
            entry.last_error_at or entry.status_at) else None
        return since is not None and now - since >= settings.mailbox_full_release_after
    return False


def release_cutoffs(now: datetime, settings: QuarantineSettings) -> tuple[datetime, datetime]:
    """The bounds under which `release_due` holds, for a set-based SQL filter: erroneous
    entries whose last error is at or before the first; mailbox-full quarantines whose last
    error and status change are both at or before the second (NULLs count as before)."""
    return now - settings.erroneous_reset_after, now - settings.mailbox_full_release_after


def _valid(entry: Entry, now: datetime) -> Entry:
    # History of past errors is kept (first/last error) but the counter starts again.
    return replace(entry, status=Status.VALID, reason=None, error_count=0,
                   last_counted_at=None, status_at=now)


def transition(entry: Entry | None, event: Event, now: datetime,
               settings: QuarantineSettings) -> Entry:
    """The entry after `event` at `now`. Time-based releases due by `now` apply first."""
    current = entry or VALID
    if release_due(current, now, settings):
        current = _valid(current, now)

    match event:
        case Tick():
            return current
        case Release():
            return _valid(current, now) if current.status is not Status.VALID else current
        case SetStatus(status=status, reason=reason):
            if status is Status.VALID:
                return _valid(current, now) if current.status is not Status.VALID else current
            if current.status is status and current.reason == reason:
                return current
            return replace(current, status=status, reason=reason, status_at=now)
        case Success():
            if current.status is Status.ERRONEOUS:
                return _valid(current, now)
            return current
        case Failure():
            return _apply_failure(current, event, now, settings)
    raise TypeError(f"not a quarantine event: {event!r}")


def _apply_failure(entry: Entry, failure: Failure, now: datetime,
                   settings: QuarantineSettings) -> Entry:
    klass = failure.effective_class
    if klass is FailureClass.IGNORED:
        return entry
    seen = replace(entry, first_error_at=entry.first_error_at or now, last_error_at=now)
    if entry.status is Status.ALLOWLISTED:
        return seen  # logged, never applied
    if klass is FailureClass.COMPLAINT:
        if entry.status is Status.DENYLISTED:
            return seen
        return replace(seen, status=Status.DENYLISTED, reason=failure.reason, status_at=now)
    if entry.status in BLOCKING:
        if (klass is FailureClass.HARD and entry.status is Status.QUARANTINED
                and entry.reason == "mailbox_full"):
            # A full mailbox that now bounces hard is gone: the quarantine stops expiring.
            return replace(seen, reason=failure.reason, error_count=entry.error_count + 1,
                           last_counted_at=now, status_at=now)
        # Already not sent to; a full mailbox seen again restarts its release clock.
        return seen
    if klass is FailureClass.HARD:
        return replace(seen, status=Status.QUARANTINED, reason=failure.reason,
                       error_count=entry.error_count + 1, last_counted_at=now, status_at=now)
    # Soft error.
    if failure.reason in _NEVER_COUNTS:
        return seen
    if (entry.last_counted_at is not None
            and now - entry.last_counted_at < settings.soft_error_interval):
        return seen  # inside the interval: not significant, not counted
    count = entry.error_count + 1
    if count >= settings.soft_error_max:
        return replace(seen, status=Status.QUARANTINED, reason=failure.reason,
                       error_count=count, last_counted_at=now, status_at=now)
    status_at = entry.status_at if entry.status is Status.ERRONEOUS else now
    return replace(seen, status=Status.ERRONEOUS, reason=failure.reason, error_count=count,
                   last_counted_at=now, status_at=status_at)


def is_blocking(status: Status | str | None) -> bool:
    return status is not None and Status(status) in BLOCKING


def state_changed(before: Entry | None, after: Entry) -> bool:
    """Whether the change is one the ledger records (status, reason or error count)."""
    b = before or VALID
    return (b.status, b.reason, b.error_count) != (after.status, after.reason, after.error_count)


def describe(entry: Entry | None) -> str:
    e = entry or VALID
    if e.status is Status.VALID:
        return "valid"
    if e.status is Status.ERRONEOUS:
        return f"erroneous({e.error_count})"
    return f"{e.status.value}({e.reason})" if e.reason else e.status.value
