"""Channels and the vocabulary shared by every package."""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)

# The opt-out "channel" that means every channel at once ("no longer contact by any channel").
ALL_CHANNELS = "all"


def parse_channel(value: str) -> Channel:
    try:
        return Channel(value.strip().lower())
    except ValueError:
        from consentry.domain.errors import ConsentryError

        raise ConsentryError(
            f"unknown channel {value!r}: expected one of {', '.join(CHANNELS)}"
        ) from None
