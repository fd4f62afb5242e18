"""Opt-out and subscription rules (domain.md sections 1 and 2), as pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from consentry.domain.channels import ALL_CHANNELS, CHANNELS


class SubscriptionState(StrEnum):
    PENDING = "pending"  # double opt-in: waiting for confirmation
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    EXPIRED = "expired"



@dataclass(frozen=True, slots=True)
class OptOuts:
    """A profile's opt-outs: `all` (global) and any of the channels."""

    scopes: frozenset[str] = frozenset()

    @property
    def global_(self) -> bool:
        return ALL_CHANNELS in self.scopes

    def blocks(self, channel: str) -> bool:
        """Rule 1 of the seed: a global opt-out blocks every channel, a channel opt-out its own."""
        return ALL_CHANNELS in self.scopes or channel in self.scopes

    def as_dict(self) -> dict[str, dict[str, bool]]:
        return {c: {"opted_out": c in self.scopes} for c in CHANNELS}


def optout_scope(channel: str | None) -> str:
    return channel or ALL_CHANNELS


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    new_state: SubscriptionState
    expires_at: datetime | None
    # True when a confirmation message must go out (double opt-in, not yet confirmed).
    needs_confirmation: bool = False


def subscribe(current: SubscriptionState | None, *, double_opt_in: bool, confirmed: bool,
              validity_days: int | None, now: datetime) -> SubscriptionChange | None:
    """Subscribe; None when nothing changes (already subscribed, or already pending).

    Re-subscribing after an unsubscribe or an expiry is a new consent and starts over.
    Confirming a pending subscription is `subscribe(..., confirmed=True)`.
    """
    if current is SubscriptionState.SUBSCRIBED:
        return None
    if double_opt_in and not confirmed:
        if current is SubscriptionState.PENDING:
            return None
        return SubscriptionChange(SubscriptionState.PENDING, None, needs_confirmation=True)
    expires = now + timedelta(days=validity_days) if validity_days else None
    return SubscriptionChange(SubscriptionState.SUBSCRIBED, expires)


def unsubscribe(current: SubscriptionState | None) -> SubscriptionChange | None:
    if current in (SubscriptionState.SUBSCRIBED, SubscriptionState.PENDING):
        return SubscriptionChange(SubscriptionState.UNSUBSCRIBED, None)
    return None


def expired(state: SubscriptionState, expires_at: datetime | None, now: datetime) -> bool:
    return state is SubscriptionState.SUBSCRIBED and expires_at is not None and expires_at <= now
