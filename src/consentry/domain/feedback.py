"""What a feedback message says (domain.md section 5), as plain data.

Every feedback path (a DSN or ARF report read from a file, an IMAP mailbox or the inbound SMTP
receiver; a provider webhook) turns what it received into a `Report`. The service layer applies a
report the same way whatever it came from: failures to the quarantine state machine, complaints
to `denylisted`, unsubscribe mail to the service the message belonged to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from consentry.domain.quarantine import FailureClass


class Kind(StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    AUTOREPLY = "autoreply"
    UNSUBSCRIBE = "unsubscribe"
    DELIVERED = "delivered"  # a DSN with Action: delivered/relayed/expanded, or a delay notice
    UNKNOWN = "unknown"  # nothing could be read out of it: kept for review


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient of a report: a failed (or delivered, or complaining) address."""

    address: str  # as the report gives it (lowercased domain is fine); "" when not known
    status: str | None  # enhanced status code "5.1.1", when there is one
    klass: FailureClass  # hard, soft, ignored or complaint
    reason: str  # a key of domain.quarantine.REASON_CLASS
    diagnostic: str  # the MTA's own words, one line, at most a few hundred characters
    action: str | None = None  # DSN Action (failed, delayed, delivered, ...), when given

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "status": self.status, "class": self.klass.value,
                "reason": self.reason, "diagnostic": self.diagnostic}


@dataclass(frozen=True, slots=True)
class Report:
    """What one message (or one webhook event) says."""

    kind: Kind
    recipients: tuple[RecipientResult, ...] = ()
    # Identification, used to find the delivery and the target and to count a message once.
    message_id: str | None = None  # the report's own Message-ID (without <>)
    original_message_id: str | None = None  # the Message-ID of the message we sent
    # Addresses the report was sent *to*: the VERP return path or the List-Unsubscribe mailto
    # ("b-<delivery>-<target>-<mac>@..." / "u-...@..."), from the envelope or the headers.
    envelope_to: tuple[str, ...] = ()
    feedback_type: str | None = None  # ARF Feedback-Type (abuse, fraud, ...)
    reporter: str | None = None  # the MTA, ARF User-Agent, or provider that reported it
    subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, source: str) -> dict[str, Any]:
        """The contract's line for `feedback classify` (../shared/docs/contract.md)."""
        return {"source": source, "kind": self.kind.value,
                "recipients": [r.to_json() for r in self.recipients]}
