"""What the sending loop hands to a channel's transport, and what it gets back.

A transport (SMTP for email, an HTTP connector for SMS or push) takes a batch of fully rendered
messages and answers one Outcome per message. It never touches the database: the sending loop
records outcomes, feeds failures to the quarantine state machine and moves target rows on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from consentry.domain.quarantine import FailureClass


@dataclass(frozen=True, slots=True)
class Outgoing:
    target_id: int
    address: str  # normalized: email address, E.164 number or push token
    subject: str  # email subject or push title ("" for SMS)
    text: str  # email text part, SMS text, push body
    html: str | None = None
    # Email only: extra headers (List-Unsubscribe, List-Unsubscribe-Post, List-Id), the
    # envelope sender (a VERP address) and the Message-ID to use.
    headers: dict[str, str] = field(default_factory=dict)
    envelope_from: str | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    target_id: int
    accepted: bool
    detail: str = ""  # the SMTP reply or the provider's answer, for the report
    # For a failure: its class and reason in domain.md section 4's taxonomy.
    failure_class: FailureClass | None = None
    failure_reason: str | None = None
    provider_id: str | None = None  # the provider's message id, or the Message-ID
    # False when the failure says nothing about the address (our relay was unreachable, our
    # sender or credentials were refused): it is reported but never fed to quarantine.
    about_address: bool = True


class Transport(Protocol):
    channel: str

    async def send(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """Send a batch; one Outcome per message, in any order. Throttling and retries within
        the batch are the transport's business; an exception means the whole batch's fate is
        unknown."""
        ...

    async def aclose(self) -> None: ...
