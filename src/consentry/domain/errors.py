"""Errors a user can cause and correct (the command line maps them to exit code 1)."""

from __future__ import annotations


class ConsentryError(Exception):
    """A problem the user can act on; its message says what and where."""


class InvalidAddress(ConsentryError):
    """An email address, phone number or push token that cannot be used."""

    def __init__(self, channel: str, value: str, why: str) -> None:
        self.channel = channel
        self.value = value
        self.why = why
        super().__init__(f"invalid {channel} address {value!r}: {why}")


class NotFound(ConsentryError):
    """A profile, service or address that does not exist."""


class Conflict(ConsentryError):
    """A request that contradicts what is stored (a duplicate slug, an external id in use)."""
