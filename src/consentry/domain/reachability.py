"""Who may be contacted on a channel: the exclusion reasons in their order (domain.md section 3).

The delivery analysis evaluates the same rules as set-based SQL; this is the one statement of
their order and meaning, used by `explain`-style checks of a single profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from consentry.domain.consent import OptOuts, SubscriptionState
from consentry.domain.quarantine import Status


class Exclusion(StrEnum):
    ADDRESS_MISSING = "address_missing"
    ADDRESS_INVALID = "address_invalid"
    OPTED_OUT = "opted_out"
    CHANNEL_OPTED_OUT = "channel_opted_out"
    NOT_SUBSCRIBED = "not_subscribed"
    DENYLISTED = "denylisted"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"
    FATIGUE = "fatigue"
    TARGET_LIMIT = "target_limit"


EXCLUSION_ORDER: tuple[Exclusion, ...] = tuple(Exclusion)

# Transactional messages (receipts, double opt-in confirmations) ignore consent, not quarantine.
SKIPPED_FOR_TRANSACTIONAL = frozenset({Exclusion.OPTED_OUT, Exclusion.CHANNEL_OPTED_OUT,
                                       Exclusion.NOT_SUBSCRIBED, Exclusion.FATIGUE})
SKIPPED_FOR_ALLOWLISTED = frozenset({Exclusion.DENYLISTED, Exclusion.QUARANTINED})


@dataclass(frozen=True, slots=True)
class Recipient:
    """What the single-profile check needs to know about one profile on one channel."""

    channel: str
    address: str | None
    address_valid: bool
    optouts: OptOuts
    address_status: Status
    subscription: SubscriptionState | None = None  # None: the delivery targets no service
    targets_service: bool = False


def checks(r: Recipient, *, transactional: bool = False) -> list[tuple[Exclusion, bool]]:
    """Each address-and-consent rule in order with whether it passed (duplicate, fatigue and
    target limit depend on the whole target and are left to the analysis)."""
    allowlisted = r.address_status is Status.ALLOWLISTED
    results: list[tuple[Exclusion, bool]] = [
        (Exclusion.ADDRESS_MISSING, bool(r.address)),
        (Exclusion.ADDRESS_INVALID, bool(r.address) and r.address_valid),
        (Exclusion.OPTED_OUT, not r.optouts.global_),
        (Exclusion.CHANNEL_OPTED_OUT, r.channel not in r.optouts.scopes),
        (Exclusion.NOT_SUBSCRIBED,
         not r.targets_service or r.subscription is SubscriptionState.SUBSCRIBED),
        (Exclusion.DENYLISTED, r.address_status is not Status.DENYLISTED),
        (Exclusion.QUARANTINED, r.address_status is not Status.QUARANTINED),
    ]
    skipped = set()
    if transactional:
        skipped |= SKIPPED_FOR_TRANSACTIONAL
    if allowlisted:
        skipped |= SKIPPED_FOR_ALLOWLISTED
    return [(rule, True if rule in skipped else ok) for rule, ok in results]


def first_exclusion(r: Recipient, *, transactional: bool = False) -> Exclusion | None:
    for rule, ok in checks(r, transactional=transactional):
        if not ok:
            return rule
    return None
