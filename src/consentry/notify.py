"""Single transactional messages the public pages send: a double opt-in confirmation, an
opt-out link asked for on /optout. They go through the channel's transport (SMTP relay, SMS
connector) one at a time, carry no advertising and no tracking, and are never sent to an
address that is quarantined or denylisted (the caller checks: it must answer the same way
either way)."""

from __future__ import annotations

import asyncio

from consentry.delivery.transport import Outcome, Outgoing
from consentry.delivery.transports import transport_for
from consentry.domain.channels import Channel
from consentry.settings import Settings


def send(settings: Settings, channel: Channel, address: str, subject: str, text: str) -> Outcome:
    """Send one message now and return the transport's answer (the relay's reply)."""
    transport = transport_for(channel, settings)

    async def deliver() -> Outcome:
        try:
            [outcome] = await transport.send([Outgoing(0, address, subject, text)])
            return outcome
        finally:
            await transport.aclose()

    return asyncio.run(deliver())
